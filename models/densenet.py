"""DenseNet (Huang et al. 2016): every layer of a dense block reads the concatenation of all
earlier ones and adds `growth` channels; transitions halve the channels (compression 0.5)
with a 1x1 conv and the map size with a 2x2 average pool. Layers are pre-activation
(norm -> act -> conv); "BC" layers put a 1x1 bottleneck of 4 x growth before the 3x3 conv.

`densenet121`: torchvision parity, growth 32, blocks 6-12-24-16, 64-channel 7x7 stride-2
stem with max pool; 7,978,856 parameters at 1000 classes.
`densenet_bc_100_k12`: the paper's CIFAR DenseNet-BC, depth 100, growth 12, three blocks of
16 layers, a 3x3 stem of 2 x growth channels; 769,162 parameters at 10 classes ("0.8M").

Knobs: `depth` (ImageNet 121, 169, 201, 264; CIFAR: 6n + 4 with bottlenecks, 3n + 4
without), `layers` (layers per block, e.g. '6,12,24,16'), `width_multiplier` (scales the
growth rate and the stem), `one_by_one` ('none' drops the bottleneck 1x1 convs), `pool`
(transition pooling: avg, max, or conv = a strided transition conv), `kernel_size`, `norm`,
`activation`, `init`, `dropout` (after each 3x3 conv, as in the paper's CIFAR runs without
augmentation; 0 by default), `global_pool`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from errors import UserError
from models import layers
from models.registry import register

IMAGENET_DEPTHS = {121: (6, 12, 24, 16), 169: (6, 12, 32, 32), 201: (6, 12, 48, 32),
                   264: (6, 12, 64, 48)}


class NormActConv(nn.Module):
  """Pre-activation conv: (norm) -> act -> conv."""
  k: layers.Knobs
  features: int
  kernel: int
  stride: int = 1

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    if self.k.norm == 'batch':
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                       dtype=self.k.dtype)(x)
    x = layers.activation(self.k.act)(x)
    return self.k.conv(self.features, self.kernel, stride=self.stride, act='', norm='none')(x, train)


class DenseNet(nn.Module):
  """Stem -> dense blocks with transitions -> norm, act, global pool -> dense."""
  k: layers.Knobs
  num_classes: int
  blocks: tuple[int, ...]
  growth: int
  bottleneck: bool = True
  stem: str = 'imagenet'  # 'imagenet' | 'cifar'

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    k = self.k
    x = x.astype(k.dtype)
    if self.stem == 'imagenet':
      x = k.conv(2 * self.growth, 7, stride=2, padding=3)(x, train)
      x = layers.pool(x, 'max', 3, 2, padding=1)
    else:
      x = k.conv(2 * self.growth, 3, act='', norm='none')(x, train)
    for i, n in enumerate(self.blocks):
      for _ in range(n):
        y = NormActConv(k, 4 * self.growth, 1)(x, train) if self.bottleneck else x
        y = NormActConv(k, self.growth, k.kernel(3))(y, train)
        y = nn.Dropout(k.dropout, deterministic=not train)(y)
        x = jnp.concatenate([x, y], axis=-1)
      if i < len(self.blocks) - 1:
        if k.pool == 'conv':
          x = NormActConv(k, x.shape[-1] // 2, 1, stride=2)(x, train)
        else:
          x = layers.pool(NormActConv(k, x.shape[-1] // 2, 1)(x, train), k.pool)
    if k.norm == 'batch':
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=k.dtype)(x)
    x = layers.global_pool(layers.activation(k.act)(x), k.global_pool)
    return k.dense(self.num_classes)(x).astype(jnp.float32)


def build(knobs: dict, num_classes: int, dtype: Any, *, depth: int, growth: int,
          stem: str) -> DenseNet:
  """Registry builder; `depth`, `growth` and `stem` ('imagenet' | 'cifar') name the variant."""
  k = layers.resolve_knobs(knobs, dtype, norm='batch', act='relu', init='he', pool='avg',
                           global_pool='avg', conv_bias=False,
                           uses=('depth', 'layers', 'one_by_one'))
  bottleneck = k.one_by_one != 'none'
  depth = k.depth or depth
  if k.layers:
    blocks = layers.ints('layers', k.layers)
  elif stem == 'imagenet':
    if depth not in IMAGENET_DEPTHS:
      raise UserError(f'ImageNet DenseNet depth must be one of {sorted(IMAGENET_DEPTHS)}, got '
                      f"{depth}; set model.layers (layers per block, e.g. '6,12,24,16')")
    blocks = IMAGENET_DEPTHS[depth]
  else:
    per_layer = 6 if bottleneck else 3  # convs per layer times three blocks
    if (depth - 4) % per_layer or depth < 4 + per_layer:
      raise UserError(f'CIFAR DenseNet depth must be {per_layer}n + 4 '
                      f'({"with" if bottleneck else "without"} bottlenecks), got {depth}')
    blocks = ((depth - 4) // per_layer,) * 3
  return DenseNet(k=k, num_classes=num_classes, blocks=blocks, growth=k.width(growth),
                  bottleneck=bottleneck, stem=stem)


register('densenet121', build, depth=121, growth=32, stem='imagenet')
register('densenet_bc_100_k12', build, depth=100, growth=12, stem='cifar')
