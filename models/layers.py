"""Building blocks shared by every family: the uniform knobs (activation, initializer,
normalization, pooling) resolved from names, and N-d convolution helpers.

Every helper here works for 1-D, 2-D and 3-D inputs: the number of spatial dimensions is
read from the input (`x.ndim - 2`), so a family written once handles sequences, images and
volumes.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from errors import UserError

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    'relu': nn.relu,
    'leaky_relu': functools.partial(nn.leaky_relu, negative_slope=0.1),
    'elu': nn.elu,
    'gelu': nn.gelu,
    'sigmoid': nn.sigmoid,
    'tanh': nn.tanh,
}

# Kernel initializers. 'xavier_relu' is PyTorch's xavier_uniform_ with gain=calculate_gain('relu'),
# which the official SimpleNet code uses: uniform fan_avg with variance scale gain**2 = 2.
INITIALIZERS: dict[str, Callable[..., Any]] = {
    'he': nn.initializers.variance_scaling(2.0, 'fan_in', 'truncated_normal'),
    'xavier': nn.initializers.xavier_uniform(),
    'glorot': nn.initializers.xavier_uniform(),
    'xavier_relu': nn.initializers.variance_scaling(2.0, 'fan_avg', 'uniform'),
    'lecun': nn.initializers.lecun_normal(),
    'orthogonal': nn.initializers.orthogonal(),
}

NORMS = ('batch', 'none')
POOLS = ('max', 'avg', 'conv')
GLOBAL_POOLS = ('max', 'avg')


def _check(kind: str, value: str, choices) -> str:
  if value not in choices:
    raise UserError(f'unknown {kind} {value!r}; choose one of {", ".join(sorted(choices))}')
  return value


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
  return ACTIVATIONS[_check('activation', name, ACTIVATIONS)]


def initializer(name: str):
  return INITIALIZERS[_check('initializer', name, INITIALIZERS)]


def check_knobs(*, norm: str = 'batch', pool: str = 'max', global_pool: str = 'max',
                act: str = 'relu', init: str = 'he') -> None:
  """Validates knob names in Python, before anything is traced or compiled."""
  _check('norm', norm, NORMS)
  _check('pool', pool, POOLS)
  _check('global_pool', global_pool, GLOBAL_POOLS)
  activation(act)
  initializer(init)


def tuple_nd(value: int, nd: int) -> tuple[int, ...]:
  return (value,) * nd


def spatial_ndim(x: jax.Array) -> int:
  return x.ndim - 2


class ConvNormAct(nn.Module):
  """Conv -> (BatchNorm) -> activation, the block nearly every family is made of."""
  features: int
  kernel: int = 3
  stride: int = 1
  padding: Any = 'SAME'
  use_bias: bool = True
  norm: str = 'batch'
  act: str = 'relu'
  kernel_init: str = 'he'
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    nd = spatial_ndim(x)
    x = nn.Conv(self.features, tuple_nd(self.kernel, nd), strides=tuple_nd(self.stride, nd),
                padding=self.padding, use_bias=self.use_bias,
                kernel_init=initializer(self.kernel_init), dtype=self.dtype)(x)
    if self.norm == 'batch':
      x = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                       epsilon=self.bn_epsilon, dtype=self.dtype)(x)
    return activation(self.act)(x)


def pool(x: jax.Array, kind: str, window: int = 2, stride: int = 2,
         padding: str = 'VALID') -> jax.Array:
  """Max/average pooling over all spatial dims ('conv' pooling is a module: see Downsample)."""
  nd = spatial_ndim(x)
  fn = nn.max_pool if kind == 'max' else nn.avg_pool
  return fn(x, tuple_nd(window, nd), strides=tuple_nd(stride, nd), padding=padding)


class Downsample(nn.Module):
  """Halves the spatial size: max pool, average pool or a learned strided conv (All-CNN)."""
  kind: str = 'max'
  window: int = 2
  stride: int = 2
  norm: str = 'batch'
  act: str = 'relu'
  kernel_init: str = 'he'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    if self.kind == 'conv':
      return ConvNormAct(x.shape[-1], kernel=3, stride=self.stride, norm=self.norm,
                         act=self.act, kernel_init=self.kernel_init, dtype=self.dtype)(x, train)
    return pool(x, self.kind, self.window, self.stride)


def global_pool(x: jax.Array, kind: str) -> jax.Array:
  axes = tuple(range(1, x.ndim - 1))
  return jnp.max(x, axis=axes) if kind == 'max' else jnp.mean(x, axis=axes)
