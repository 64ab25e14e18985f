"""LeNet-5 (LeCun et al. 1998, "Gradient-based learning applied to document recognition").

C1 6@5x5 -> S2 pool -> C3 16@5x5 -> S4 pool -> C5 120@5x5 -> F6 84 -> output, tanh and average
pooling as in the paper. With C3 connected to every S2 map and plain (untrained) pooling this
has 61,706 parameters for 10 classes. The paper placed 28x28 MNIST digits in a 32x32 field;
likewise inputs smaller than the field C5 needs (32 for 5x5 kernels) are zero-padded
(centred) to it, so MNIST and CIFAR shapes give the same network. Larger inputs leave C5
with more than one position, which the global pool (`global_pool`, average) reduces.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from models import layers
from models.registry import register


def min_size(kernel: int) -> int:
  """Smallest input side whose C5 output is at least 1 (VALID convs, 2x2 pools): C5 needs
  `kernel`, S4 twice that, C3 `kernel - 1` more, S2 twice that, C1 `kernel - 1` more."""
  return 2 * (3 * kernel - 1) + kernel - 1


class LeNet5(nn.Module):
  """LeNet-5; see the module docstring."""
  k: layers.Knobs
  num_classes: int

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    k = self.k
    x = x.astype(k.dtype)
    field = min_size(k.kernel(5))
    pads = [((field - n) // 2, field - n - (field - n) // 2) if n < field else (0, 0)
            for n in x.shape[1:-1]]
    x = jnp.pad(x, [(0, 0), *pads, (0, 0)])
    for width in (6, 16):
      x = k.conv(k.width(width), kernel=k.kernel(5), padding='VALID')(x, train)
      x = k.downsample(x, train)
    x = k.conv(k.width(120), kernel=k.kernel(5), padding='VALID')(x, train)
    x = layers.global_pool(x, k.global_pool)
    x = layers.activation(k.act)(k.dense(k.width(84))(x))
    x = nn.Dropout(k.dropout, deterministic=not train)(x)
    return k.dense(self.num_classes)(x).astype(jnp.float32)


def build(knobs: dict, num_classes: int, dtype: Any) -> LeNet5:
  """Registry builder (reference: tanh, average pooling, no normalization, LeCun init)."""
  k = layers.resolve_knobs(knobs, dtype, norm='none', act='tanh', init='lecun', pool='avg',
                           global_pool='avg', one_by_one=('default',))
  return LeNet5(k=k, num_classes=num_classes)


register('lenet5', build)


class LeNet5Caffe(nn.Module):
  """Caffe's LeNet (examples/mnist/lenet.prototxt), the "LeNet-5" of Han et al.'s Deep
  Compression tables (431K parameters, 1720 KB): conv 20@5x5 -> max pool -> conv 50@5x5 -> max
  pool -> fc 500 + ReLU -> fc, no nonlinearity after the convs. 431,080 parameters on 28x28x1
  inputs; like LeNet-5, smaller inputs are padded to 28 and larger ones globally pooled."""
  k: layers.Knobs
  num_classes: int

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    k = self.k
    x = x.astype(k.dtype)
    pads = [((28 - n) // 2, 28 - n - (28 - n) // 2) if n < 28 else (0, 0) for n in x.shape[1:-1]]
    x = jnp.pad(x, [(0, 0), *pads, (0, 0)])
    for width in (20, 50):
      x = k.conv(k.width(width), kernel=k.kernel(5), padding='VALID', act='')(x, train)
      x = k.downsample(x, train)
    if any(n > 4 for n in x.shape[1:-1]):  # inputs larger than 28: pool to the 4x4 of 28x28
      x = layers.global_pool(x, k.global_pool)
    x = x.reshape(x.shape[0], -1)
    x = layers.activation(k.act)(k.dense(k.width(500))(x))
    x = nn.Dropout(k.dropout, deterministic=not train)(x)
    return k.dense(self.num_classes)(x).astype(jnp.float32)


def build_caffe(knobs: dict, num_classes: int, dtype: Any) -> LeNet5Caffe:
  """Registry builder (Caffe's: ReLU in the fc layer only, max pooling, no normalization,
  Xavier init, conv bias)."""
  k = layers.resolve_knobs(knobs, dtype, norm='none', act='relu', init='xavier', pool='max',
                           global_pool='avg', one_by_one=('default',))
  return LeNet5Caffe(k=k, num_classes=num_classes)


register('lenet5_caffe', build_caffe)
