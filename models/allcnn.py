"""All-CNN-C (Springenberg et al. 2014, "Striving for simplicity: the all convolutional net"):
every pooling layer replaced by a 3x3 stride-2 conv. 96-96-96/2, 192-192-192/2, a 3x3 VALID
192 conv, a 1x1 192 conv and a 1x1 conv to the classes read out by global average pooling.
Dropout 0.2 on the input and 0.5 after each downsampling. 1,369,738 parameters for 10
classes (the paper: 1.3M).

Knobs: `pool=max|avg` gives the paper's ConvPool-CNN-C (the downsampling conv keeps stride 1
and a 3x3 stride-2 pool follows); `dropout` sets the rate after each downsampling (the input
dropout of 0.2 stays unless `dropout=0`); `one_by_one=none` makes the 1x1 192 conv 3x3;
`kernel_size` replaces the 3x3 kernels; `width_multiplier`, `norm`, `activation`, `init`,
`global_pool` as everywhere.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from models import layers
from models.registry import register

INPUT_DROPOUT = 0.2


class AllConvC(nn.Module):
  """All-CNN-C; see the module docstring."""
  k: layers.Knobs
  num_classes: int

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    k = self.k
    x = x.astype(k.dtype)
    x = nn.Dropout(INPUT_DROPOUT if k.dropout else 0.0, deterministic=not train)(x)
    kernel = k.kernel(3)
    for width in (96, 192):
      x = k.conv(k.width(width), kernel)(x, train)
      x = k.conv(k.width(width), kernel)(x, train)
      if k.pool == 'conv':
        x = k.conv(k.width(width), kernel, stride=2, padding=kernel // 2)(x, train)
      else:
        x = k.conv(k.width(width), kernel)(x, train)
        x = layers.pool(x, k.pool, 3, 2, padding=1)
      x = nn.Dropout(k.dropout, deterministic=not train)(x)
    x = k.conv(k.width(192), kernel, padding='VALID')(x, train)
    x = k.conv(k.width(192), 1 if k.one_by_one == 'default' else kernel)(x, train)
    x = k.conv(self.num_classes, kernel=1, act='', norm='none')(x, train)
    return layers.global_pool(x, k.global_pool).astype(jnp.float32)


def build(knobs: dict, num_classes: int, dtype: Any) -> AllConvC:
  """Registry builder (reference: ReLU, no normalization, strided-conv downsampling)."""
  k = layers.resolve_knobs(knobs, dtype, norm='none', act='relu', init='he', pool='conv',
                           global_pool='avg', dropout=0.5)
  return AllConvC(k=k, num_classes=num_classes)


register('allconv_c', build)
