"""SqueezeNet 1.0 and 1.1 (Iandola et al. 2016) with torchvision parity.

Fire modules: a 1x1 "squeeze" conv, then 1x1 and 3x3 "expand" convs side by side whose
outputs are concatenated; 3x3 stride-2 max pools that round up; dropout 0.5, a 1x1 conv to
the classes, ReLU and global average pooling (no dense layer). 1.1 starts with a 3x3 stride-2
conv of 64 instead of 7x7 of 96 and pools earlier. Parameters at 1000 classes: 1,248,424 and
1,235,496 (torchvision).

Knobs: `width_multiplier` scales every width; `one_by_one=none` makes the 1x1 expand branch
3x3 as well (the squeeze convs are the module's point and stay); `kernel_size` replaces the
3x3 expand kernel; `pool`, `dropout`, `norm`, `activation`, `init`, `global_pool`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from models import layers
from models.registry import register

# Stem (width, kernel), then 'M' (pool) or (squeeze, expand 1x1, expand 3x3) per fire module.
V1_0 = ((96, 7), 'M', (16, 64, 64), (16, 64, 64), (32, 128, 128), 'M', (32, 128, 128),
        (48, 192, 192), (48, 192, 192), (64, 256, 256), 'M', (64, 256, 256))
V1_1 = ((64, 3), 'M', (16, 64, 64), (16, 64, 64), 'M', (32, 128, 128), (32, 128, 128), 'M',
        (48, 192, 192), (48, 192, 192), (64, 256, 256), (64, 256, 256))


class Fire(nn.Module):
  """Squeeze 1x1 -> (expand 1x1 | expand 3x3), concatenated."""
  k: layers.Knobs
  widths: tuple[int, int, int]
  expand1_kernel: int = 1

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    k = self.k
    s, e1, e3 = (k.width(w) for w in self.widths)
    x = k.conv(s, 1)(x, train)
    return jnp.concatenate([k.conv(e1, self.expand1_kernel)(x, train),
                            k.conv(e3, k.kernel(3))(x, train)], axis=-1)


class SqueezeNet(nn.Module):
  """SqueezeNet; see the module docstring."""
  k: layers.Knobs
  num_classes: int
  spec: tuple
  expand1_kernel: int = 1

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    k = self.k
    x = x.astype(k.dtype)
    (width, kernel), *rest = self.spec
    x = k.conv(k.width(width), kernel, stride=2, padding='VALID')(x, train)
    for item in rest:
      if item == 'M':
        x = k.downsample(x, train, 3, 2, ceil=True)
      else:
        x = Fire(k, item, self.expand1_kernel)(x, train)
    x = nn.Dropout(k.dropout, deterministic=not train)(x)
    x = k.conv(self.num_classes, 1, norm='none')(x, train)
    return layers.global_pool(x, k.global_pool).astype(jnp.float32)


def build(knobs: dict, num_classes: int, dtype: Any, *, spec: tuple) -> SqueezeNet:
  """Registry builder (reference: ReLU, no normalization, max pools, dropout 0.5)."""
  k = layers.resolve_knobs(knobs, dtype, norm='none', act='relu', init='he', pool='max',
                           global_pool='avg', dropout=0.5)
  return SqueezeNet(k=k, num_classes=num_classes, spec=spec,
                    expand1_kernel=1 if k.one_by_one == 'default' else k.kernel(3))


register('squeezenet1_0', build, spec=V1_0)
register('squeezenet1_1', build, spec=V1_1)
