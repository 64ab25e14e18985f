"""ResNet (He et al. 2015): ImageNet variants with torchvision parity and the paper's CIFAR ones.

ImageNet (`resnet18` ... `resnet152`): 7x7 stride-2 stem, 3x3 stride-2 max pool, four stages
of 64-128-256-512 widths, basic blocks (two 3x3 convs) for 18/34 and bottleneck blocks
(1x1 -> 3x3 -> 1x1, four times wider out) for 50+, stride on the 3x3 conv (torchvision's
"v1.5"), 1x1-conv projection shortcuts where the shape changes. Parameters at 1000 classes:
11,689,512; 21,797,672; 25,557,032; 44,549,160; 60,192,808 (torchvision).
CIFAR (`resnet20` ... `resnet110`): 3x3 stem of 16, three stages of 16-32-64 with n basic
blocks each (depth 6n + 2), option-A shortcuts (stride-2 subsampling and zero channels, no
parameters): 0.27M ... 1.7M as in the paper.

Knobs:
  `depth`       total weight layers as in the names: ImageNet 18, 34, 50, 101, 152; CIFAR
                6n + 2 (basic) or 9n + 2 (bottleneck)
  `layers`      blocks per stage, e.g. '2,2,2,2' (overrides depth); the stage count follows it
  `widths`      stage widths, e.g. '16,32,64' (bottleneck outputs are four times wider)
  `one_by_one`  'default' = the variant's block; 'none' = basic blocks; 'all' = bottlenecks
  `pool`        '' = the reference (strided convs, max-pool stem); 'max' | 'avg' = stride-1
                blocks after a 2x2 pool (and that stem pool); 'conv' = strided convs and a
                strided-conv stem
  `kernel_size` the 3x3 kernels of the blocks; `width_multiplier`, `norm`, `activation`,
  `init`, `dropout` (before the classifier), `global_pool`, `conv_bias` as everywhere.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from errors import UserError
from models import layers
from models.registry import register

IMAGENET_DEPTHS = {18: ('basic', (2, 2, 2, 2)), 34: ('basic', (3, 4, 6, 3)),
                   50: ('bottleneck', (3, 4, 6, 3)), 101: ('bottleneck', (3, 4, 23, 3)),
                   152: ('bottleneck', (3, 8, 36, 3))}
EXPANSION = {'basic': 1, 'bottleneck': 4}


class Block(nn.Module):
  """A basic or bottleneck residual block; `shortcut` 'A' (parameter-free) or 'B' (projection)."""
  k: layers.Knobs
  width: int
  stride: int
  kind: str = 'basic'
  shortcut: str = 'B'

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    k, kernel = self.k, self.k.kernel(3)
    if self.kind == 'basic':
      y = k.conv(self.width, kernel, stride=self.stride)(x, train)
      y = k.conv(self.width, kernel, act='')(y, train)
    else:
      y = k.conv(self.width, 1)(x, train)
      y = k.conv(self.width, kernel, stride=self.stride)(y, train)
      y = k.conv(self.width * 4, 1, act='')(y, train)
    if x.shape != y.shape:
      if self.shortcut == 'A' and y.shape[-1] >= x.shape[-1]:
        nd = layers.spatial_ndim(x)
        x = x[(slice(None),) + (slice(None, None, self.stride),) * nd]
        extra = y.shape[-1] - x.shape[-1]
        x = jnp.pad(x, [(0, 0)] * (nd + 1) + [(extra // 2, extra - extra // 2)])
      else:
        x = k.conv(y.shape[-1], 1, stride=self.stride, act='')(x, train)
    return layers.activation(k.act)(x + y)


class ResNet(nn.Module):
  """Stem -> stages of residual blocks -> global pool -> dense; see the module docstring."""
  k: layers.Knobs
  num_classes: int
  stages: tuple[int, ...]
  widths: tuple[int, ...]
  kind: str = 'basic'  # 'basic' | 'bottleneck'
  stem: str = 'imagenet'  # 'imagenet' | 'cifar'

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    k = self.k
    x = x.astype(k.dtype)
    if self.stem == 'imagenet':
      x = k.conv(k.width(64), 7, stride=2, padding=3)(x, train)
      x = k.downsample(x, train, 3, 2, padding=1, kind=k.pool or 'max')
    else:
      x = k.conv(k.width(16), 3)(x, train)
    shortcut = 'A' if self.stem == 'cifar' else 'B'
    for s, (blocks, width) in enumerate(zip(self.stages, self.widths)):
      for b in range(blocks):
        stride = 2 if s > 0 and b == 0 else 1
        if stride == 2 and k.pool in ('max', 'avg'):
          x, stride = layers.pool(x, k.pool), 1
        x = Block(k, width, stride, self.kind, shortcut)(x, train)
    x = layers.global_pool(x, k.global_pool)
    x = nn.Dropout(k.dropout, deterministic=not train)(x)
    return k.dense(self.num_classes)(x).astype(jnp.float32)


def build(knobs: dict, num_classes: int, dtype: Any, *, depth: int, stem: str) -> ResNet:
  """Registry builder; `depth` and `stem` ('imagenet' | 'cifar') name the variant."""
  k = layers.resolve_knobs(knobs, dtype, norm='batch', act='relu', init='he', pool=None,
                           global_pool='avg', conv_bias=False,
                           one_by_one=('default', 'none', 'all'),
                           uses=('depth', 'layers', 'widths', 'one_by_one'))
  depth = k.depth or depth
  if stem == 'imagenet':
    if not k.layers and depth not in IMAGENET_DEPTHS:
      raise UserError(f'ImageNet ResNet depth must be one of {sorted(IMAGENET_DEPTHS)}, got '
                      f"{depth}; set model.layers (blocks per stage, e.g. '2,2,2,2') for others")
    kind, stages = IMAGENET_DEPTHS.get(depth, ('basic', ()))
    widths = (64, 128, 256, 512)
  else:
    kind = 'bottleneck' if k.one_by_one == 'all' else 'basic'
    per_block = 3 if kind == 'bottleneck' else 2
    if not k.layers and (depth - 2) % (3 * per_block):
      examples = ', '.join(str(3 * per_block * n + 2) for n in (3, 9, 18))
      raise UserError(f'CIFAR ResNet depth must be {3 * per_block}n + 2 with {kind} blocks '
                      f'(e.g. {examples}), got {depth}')
    stages = ((depth - 2) // (3 * per_block),) * 3
    widths = (16, 32, 64)
  if k.one_by_one != 'default':
    kind = 'basic' if k.one_by_one == 'none' else 'bottleneck'
  stages = layers.ints('layers', k.layers) if k.layers else stages
  widths = k.widths or widths
  if len(widths) < len(stages):
    raise UserError(f'widths lists {len(widths)} stage widths but there are {len(stages)} '
                    'stages; give one width per stage')
  widths = tuple(k.width(w) for w in widths[:len(stages)])
  return ResNet(k=k, num_classes=num_classes, stages=stages, widths=widths,
                kind=kind, stem=stem)


for _depth in IMAGENET_DEPTHS:
  register(f'resnet{_depth}', build, depth=_depth, stem='imagenet')
for _depth in (20, 32, 44, 56, 110):
  register(f'resnet{_depth}', build, depth=_depth, stem='cifar')
