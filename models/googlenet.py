"""GoogLeNet / Inception v1 (Szegedy et al. 2014) with torchvision parity.

Conv -> BatchNorm(eps 1e-3) -> ReLU everywhere (torchvision's BasicConv2d), 3x3 stride-2
max pools that round up, nine inception modules, global average pooling, dropout 0.2, one
dense layer: 6,624,904 parameters at 1000 classes. Like torchvision (which kept it for its
pretrained weights) the "5x5" branch uses a 3x3 kernel; the paper's 5x5 changes only that.

`one_by_one`: 'default' = modules with the 1x1 reductions before the 3x3 and 5x5 branches
and the 1x1 projection after the pool branch; 'none' = the paper's naive module (Figure 2a):
those convs removed, the pool branch passing its input through, so widths grow.

`aux_heads=True` adds the two auxiliary classifiers (on inception 4a and 4d: 4x4 adaptive
average pool, 1x1 conv of 128, dense 1024, dropout 0.7, dense to the classes; 13,004,888
parameters in all). They run in training only; `__call__` still returns the main logits and
sows the auxiliary ones as `intermediates/aux_logits` (a tuple of two). A train step that
wants the paper's loss applies with `mutable=['batch_stats', 'intermediates']` and adds 0.3
times each auxiliary cross-entropy; a step that does not (ours) leaves them unused and XLA
drops their computation.

Other knobs: `width_multiplier` scales every width; `pool` (max | avg) is the kind of the
stem and between-stage pools; `dropout`, `norm`, `activation`, `init`, `global_pool`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from models import layers
from models.registry import register

# name: (1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool projection); 'M' = max pool.
INCEPTION = (('3a', (64, 96, 128, 16, 32, 32)), ('3b', (128, 128, 192, 32, 96, 64)), 'M',
             ('4a', (192, 96, 208, 16, 48, 64)), ('4b', (160, 112, 224, 24, 64, 64)),
             ('4c', (128, 128, 256, 24, 64, 64)), ('4d', (112, 144, 288, 32, 64, 64)),
             ('4e', (256, 160, 320, 32, 128, 128)), 'M2',
             ('5a', (256, 160, 320, 32, 128, 128)), ('5b', (384, 192, 384, 48, 128, 128)))
AUX_AFTER = ('4a', '4d')
BN_EPS = 1e-3
BRANCH5_KERNEL = 3  # torchvision's; the paper's is 5


class Inception(nn.Module):
  """One inception module (with or without the 1x1 reductions)."""
  k: layers.Knobs
  widths: tuple[int, ...]
  reduce: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    k, (c1, r3, c3, r5, c5, pp) = self.k, tuple(self.k.width(w) for w in self.widths)
    conv = lambda w, kernel, name: k.conv(w, kernel, bn_epsilon=BN_EPS, name=name)
    b1 = conv(c1, 1, 'branch1')(x, train)
    b2 = conv(r3, 1, 'branch3_reduce')(x, train) if self.reduce else x
    b2 = conv(c3, 3, 'branch3')(b2, train)
    b3 = conv(r5, 1, 'branch5_reduce')(x, train) if self.reduce else x
    b3 = conv(c5, BRANCH5_KERNEL, 'branch5')(b3, train)
    b4 = layers.pool(x, 'max', 3, 1, padding=1, ceil=True)
    if self.reduce:
      b4 = conv(pp, 1, 'pool_proj')(b4, train)
    return jnp.concatenate([b1, b2, b3, b4], axis=-1)


class AuxHead(nn.Module):
  """torchvision's InceptionAux."""
  k: layers.Knobs
  num_classes: int

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    k = self.k
    x = k.conv(k.width(128), 1, bn_epsilon=BN_EPS)(layers.adaptive_avg_pool(x, 4), train)
    x = layers.activation(k.act)(k.dense(k.width(1024))(x.reshape(x.shape[0], -1)))
    x = nn.Dropout(0.7, deterministic=not train)(x)
    return k.dense(self.num_classes)(x).astype(jnp.float32)


class GoogLeNet(nn.Module):
  """GoogLeNet; see the module docstring."""
  k: layers.Knobs
  num_classes: int
  reduce: bool = True
  aux_heads: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    k = self.k
    x = x.astype(k.dtype)
    pool = lambda x, window=3: layers.pool(x, k.pool, window, 2, ceil=True)
    x = pool(k.conv(k.width(64), 7, stride=2, padding=3, bn_epsilon=BN_EPS)(x, train))
    x = k.conv(k.width(64), 1, bn_epsilon=BN_EPS)(x, train)
    x = pool(k.conv(k.width(192), 3, bn_epsilon=BN_EPS)(x, train))
    aux = []
    for item in INCEPTION:
      if item in ('M', 'M2'):
        x = pool(x, 3 if item == 'M' else 2)
        continue
      name, widths = item
      x = Inception(k, widths, self.reduce, name=f'inception{name}')(x, train)
      # Created at init too, so the parameters exist when training starts.
      if self.aux_heads and name in AUX_AFTER and (train or self.is_initializing()):
        aux.append(AuxHead(k, self.num_classes, name=f'aux{name}')(x, train))
    if aux:
      self.sow('intermediates', 'aux_logits', tuple(aux))
    x = layers.global_pool(x, k.global_pool)
    x = nn.Dropout(k.dropout, deterministic=not train)(x)
    return k.dense(self.num_classes)(x).astype(jnp.float32)


def build(knobs: dict, num_classes: int, dtype: Any) -> GoogLeNet:
  """Registry builder (reference: batch norm, ReLU, max pools, dropout 0.2, no aux heads)."""
  k = layers.resolve_knobs(knobs, dtype, norm='batch', act='relu', init='he', pool='max',
                           global_pool='avg', dropout=0.2, conv_bias=False,
                           pools=('max', 'avg'), uses=('one_by_one', 'aux_heads'))
  return GoogLeNet(k=k, num_classes=num_classes, reduce=k.one_by_one != 'none',
                   aux_heads=bool(knobs.get('aux_heads')))


register('googlenet', build)
