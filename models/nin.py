"""Network in Network (Lin et al. 2013) for CIFAR: three mlpconv blocks, each a spatial conv
followed by 1x1 convs (the "micro network"), 3x3 stride-2 pools with dropout 0.5 between the
blocks (max, then average), and a 1x1 conv to the classes read out by global average pooling:
no dense layer. 966,986 parameters for 10 classes ("about 1M" in the paper).

Knobs: `num_one_by_one` sets the 1x1 convs per block (reference 2; their widths follow the
reference, repeating a block's last); `one_by_one=none` removes them (the class conv stays);
`kernel_size` replaces the spatial kernels (5, 5, 3); `pool` sets both pools' kind;
`width_multiplier`, `norm`, `activation`, `init`, `dropout`, `global_pool` as everywhere.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from models import layers
from models.registry import register

# (spatial conv width, kernel, 1x1 widths) per mlpconv block; the pool kinds between blocks.
BLOCKS = ((192, 5, (160, 96)), (192, 5, (192, 192)), (192, 3, (192,)))
POOLS = ('max', 'avg')


class NiN(nn.Module):
  """Network in Network; see the module docstring."""
  k: layers.Knobs
  num_classes: int
  num_one_by_one: int | None = None  # None: the reference count per block

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    k = self.k
    x = x.astype(k.dtype)
    for i, (width, kernel, mlp) in enumerate(BLOCKS):
      x = k.conv(k.width(width), kernel=k.kernel(kernel))(x, train)
      n = len(mlp) if self.num_one_by_one is None else self.num_one_by_one
      for j in range(n):
        x = k.conv(k.width(mlp[min(j, len(mlp) - 1)]), kernel=1)(x, train)
      if i < len(POOLS):
        x = k.downsample(x, train, 3, 2, ceil=True, kind=k.pool or POOLS[i])
        x = nn.Dropout(k.dropout, deterministic=not train)(x)
    x = k.conv(self.num_classes, kernel=1, act='', norm='none')(x, train)
    return layers.global_pool(x, k.global_pool).astype(jnp.float32)


def build(knobs: dict, num_classes: int, dtype: Any) -> NiN:
  """Registry builder (reference: ReLU, no normalization, dropout 0.5, global average)."""
  k = layers.resolve_knobs(knobs, dtype, norm='none', act='relu', init='he', pool=None,
                           global_pool='avg', dropout=0.5,
                           uses=('one_by_one', 'num_one_by_one'))
  count = 0 if k.one_by_one == 'none' else k.num_one_by_one
  return NiN(k=k, num_classes=num_classes, num_one_by_one=count)


register('nin', build)
