"""Building blocks shared by every family: the uniform knobs (activation, initializer,
normalization, pooling) resolved from names, and N-d convolution helpers.

Every helper here works for 1-D, 2-D and 3-D inputs: the number of spatial dimensions is
read from the input (`x.ndim - 2`), so a family written once handles sequences, images and
volumes.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jax import lax

from errors import UserError
import util

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
    # Deliberately bad: N(0, 0.01^2) whatever the fan-in, the "small random numbers" init that
    # shrinks activations layer by layer in deep plain nets (Glorot & Bengio 2010).
    'small_normal': nn.initializers.normal(0.01),
}

NORMS = ('batch', 'none')
POOLS = ('max', 'avg', 'conv')
GLOBAL_POOLS = ('max', 'avg')


def _check(kind: str, value: str, choices) -> str:
  if value not in choices:
    raise UserError(f'unknown {kind} {value!r}; choose one of {", ".join(sorted(choices))}')
  return value


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
  """The activation function called `name` ('' means none: a linear layer)."""
  if not name:
    return lambda x: x
  return ACTIVATIONS[_check('activation', name, ACTIVATIONS)]


def initializer(name: str):
  """The kernel initializer called `name`."""
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
  # Which conv_general_dilated to call: an object with `train` and `infer` attributes
  # (kernels.convolutions.Convolutions); None = lax.conv_general_dilated in both.
  convolutions: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    nd = spatial_ndim(x)
    padding = self.padding
    if padding == 'SAME' and self.kernel % 2:
      # Symmetric, as PyTorch pads: the same sizes as XLA's SAME, but a strided conv then
      # samples the positions a stride-2 slice (ResNet's option-A shortcut) keeps.
      padding = self.kernel // 2
    conv = lax.conv_general_dilated
    if self.convolutions is not None:
      conv = self.convolutions.train if train else self.convolutions.infer
    x = nn.Conv(self.features, tuple_nd(self.kernel, nd), strides=tuple_nd(self.stride, nd),
                padding=padding, use_bias=self.use_bias,
                kernel_init=initializer(self.kernel_init), dtype=self.dtype,
                conv_general_dilated=conv)(x)
    if self.norm == 'batch':
      x = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                       epsilon=self.bn_epsilon, dtype=self.dtype)(x)
    return activation(self.act)(x)


def pool(x: jax.Array, kind: str, window: int = 2, stride: int = 2,
         padding: str | int = 'VALID', ceil: bool = False) -> jax.Array:
  """Max/average pooling over all spatial dims ('conv' pooling is a layer: Knobs.downsample).

  An int `padding` pads both sides of every spatial dim; `ceil=True` rounds the output size
  up like PyTorch's ceil_mode (torchvision's GoogLeNet and SqueezeNet depend on it).
  """
  nd = spatial_ndim(x)
  if isinstance(padding, int) or ceil:
    p = 0 if isinstance(padding, str) else padding
    pads = []
    for n in x.shape[1:-1]:
      size = n + 2 * p
      out = (size - window) // stride + 1
      if ceil:
        out = -(-(size - window) // stride) + 1
        if (out - 1) * stride >= n + p:  # PyTorch: the last window must start inside the input
          out -= 1
      pads.append((p, max(p, (out - 1) * stride + window - n - p)))
    padding = pads
  if kind == 'max':
    if window == stride and padding == 'VALID':
      return tiled_max_pool(x, window)
    return nn.max_pool(x, tuple_nd(window, nd), strides=tuple_nd(stride, nd), padding=padding)
  # The ceil-mode overhang is not averaged over (PyTorch excludes it from the divisor).
  return nn.avg_pool(x, tuple_nd(window, nd), strides=tuple_nd(stride, nd), padding=padding,
                     count_include_pad=not ceil)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def tiled_max_pool(x: jax.Array, window: int) -> jax.Array:
  """Max pooling with non-overlapping windows (stride == window, no padding): the same
  forward as `nn.max_pool` and the same gradient (each window's gradient goes to its first
  maximum in row-major order, as XLA's select-and-scatter does), but a backward pass made of
  strided slices and one fused select instead of select-and-scatter, which XLA's CPU backend
  runs 10-50x slower (measured: 47 ms vs 2.7 ms at 128x28x28x32).
  """
  # Inference (and `--mode=summary`, which reads pooling windows off this jaxpr) keeps the
  # reduce-window; training runs `_tiled_max_pool_fwd` below.
  nd = spatial_ndim(x)
  return nn.max_pool(x, tuple_nd(window, nd), strides=tuple_nd(window, nd))


def _strided_max(x: jax.Array, window: int) -> jax.Array:
  """The same pooling as the maximum of the window's strided slices: one fused elementwise
  loop, 4-5x faster on XLA's CPU backend than reduce-window (1.6 vs 6-8 ms at 128x32x32x32)."""
  y = None
  for index in _window_slices(x, window):
    y = x[index] if y is None else jnp.maximum(y, x[index])
  return y


def _window_slices(x: jax.Array, window: int):
  """For each offset in a window (row-major), the strided slice of x holding it in every
  window; windows that do not fit at the end are dropped, as VALID pooling does."""
  out = [n // window for n in x.shape[1:-1]]
  for offset in itertools.product(range(window), repeat=len(out)):
    yield (slice(None), *(slice(o, o + window * n, window) for o, n in zip(offset, out)),
           slice(None))


def _tiled_max_pool_fwd(x, window):
  y = _strided_max(x, window)
  return y, (x, y)


def _tiled_max_pool_bwd(window, residuals, g):
  x, y = residuals
  nd, out = spatial_ndim(x), y.shape[1:-1]
  taken = jnp.zeros(y.shape, bool)
  parts = []
  for index in _window_slices(x, window):  # row-major window order
    hit = (x[index] == y) & ~taken
    taken = taken | hit
    parts.append(jnp.where(hit, g, jnp.zeros((), g.dtype)))
  # (N, *out, C, *window) -> (N, out_1, window_1, ..., C) -> (N, *spatial_cropped, C)
  d = jnp.stack(parts, axis=-1).reshape(y.shape + (window,) * nd)
  perm = [0, *(a for i in range(nd) for a in (1 + i, nd + 2 + i)), nd + 1]
  d = d.transpose(perm).reshape((y.shape[0], *(o * window for o in out), y.shape[-1]))
  pads = [(0, 0), *((0, s - o * window) for s, o in zip(x.shape[1:-1], out)), (0, 0)]
  return (jnp.pad(d, pads),)


tiled_max_pool.defvjp(_tiled_max_pool_fwd, _tiled_max_pool_bwd)


def global_pool(x: jax.Array, kind: str) -> jax.Array:
  """(N, *spatial, C) -> (N, C) by max or average over every spatial position."""
  axes = tuple(range(1, x.ndim - 1))
  return jnp.max(x, axis=axes) if kind == 'max' else jnp.mean(x, axis=axes)


def _adaptive_matrix(n_in: int, n_out: int) -> np.ndarray:
  """(n_out, n_in) averaging weights of PyTorch's adaptive pooling bins along one axis."""
  m = np.zeros((n_out, n_in), np.float32)
  for i in range(n_out):
    lo, hi = (i * n_in) // n_out, -(-((i + 1) * n_in) // n_out)
    m[i, lo:hi] = 1.0 / (hi - lo)
  return m


def adaptive_avg_pool(x: jax.Array, size: int) -> jax.Array:
  """Average pooling to `size` positions along every spatial dim (PyTorch's
  AdaptiveAvgPool, which AlexNet and VGG put before their classifiers).

  An evenly dividing input is an ordinary average pool (and the identity at 224x224);
  otherwise each axis is multiplied by its bin-averaging matrix, which also upsamples
  inputs smaller than `size`, as PyTorch does.
  """
  spatial = x.shape[1:-1]
  if 0 in spatial:
    raise UserError(f'the feature map is empty ({x.shape[1:-1]}) before the classifier: the input '
                    'is too small for the layout\'s pools; drop a pool from model.layers')
  if all(n % size == 0 for n in spatial):
    window = tuple(n // size for n in spatial)
    return x if all(w == 1 for w in window) else nn.avg_pool(x, window, strides=window)
  for axis, n in enumerate(spatial, start=1):
    m = jnp.asarray(_adaptive_matrix(n, size), x.dtype)
    x = jnp.moveaxis(jnp.tensordot(x, m, axes=((axis,), (1,))), -1, axis)
  return x


@dataclasses.dataclass(frozen=True)
class Knobs:
  """The uniform knobs (configs/common.py:model_config) resolved against a family's reference
  values and validated. Every builder calls `resolve_knobs` and hands the result to its module,
  which builds layers through the helpers below so that a knob means the same in every family.
  """
  norm: str = 'batch'
  act: str = 'relu'
  init: str = 'he'
  pool: str = 'max'
  global_pool: str = 'avg'
  dropout: float = 0.0
  width_multiplier: float = 1.0
  kernel_size: int | None = None  # None: each layer's reference kernel
  conv_bias: bool = True
  depth: int | None = None
  widths: tuple[int, ...] = ()
  layers: str = ''  # family-specific: a layout (plain stacks) or blocks per stage
  one_by_one: str = 'default'
  num_one_by_one: int | None = None
  bn_momentum: float = 0.9
  dtype: Any = jnp.float32
  convolutions: Any = None  # see ConvNormAct

  def width(self, w: int) -> int:
    """A reference width scaled by the width multiplier (rounded, at least 1)."""
    return max(1, int(round(w * self.width_multiplier)))

  def kernel(self, reference: int) -> int:
    """The `kernel_size` knob if set, else the layer's reference kernel."""
    return self.kernel_size or reference

  def conv(self, features: int, kernel: int | None = None, stride: int = 1,
           padding: Any = 'SAME', act: str | None = None, norm: str | None = None,
           bias: bool | None = None, **kw) -> 'ConvNormAct':
    """Conv -> (norm) -> act with this family's knobs; `features` is used as given."""
    return ConvNormAct(features, kernel=self.kernel(3) if kernel is None else kernel,
                       stride=stride, padding=padding,
                       use_bias=self.conv_bias if bias is None else bias,
                       norm=self.norm if norm is None else norm,
                       act=self.act if act is None else act, kernel_init=self.init,
                       bn_momentum=self.bn_momentum, dtype=self.dtype,
                       convolutions=self.convolutions, **kw)

  def dense(self, features: int, **kw) -> nn.Dense:
    """A dense layer with this family's initializer and dtype."""
    return nn.Dense(features, kernel_init=initializer(self.init), dtype=self.dtype, **kw)

  def downsample(self, x: jax.Array, train: bool, window: int = 2, stride: int = 2,
                 padding: str | int = 'VALID', ceil: bool = False,
                 kind: str | None = None) -> jax.Array:
    """Pooling of the `pool` knob's kind ('conv': a learned stride-`stride` conv)."""
    kind = kind or self.pool
    if kind == 'conv':
      return self.conv(x.shape[-1], kernel=3, stride=stride)(x, train)
    return pool(x, kind, window, stride, padding, ceil)


def ints(name: str, text: str) -> tuple[int, ...]:
  """'3,4,6,3' -> (3, 4, 6, 3), positive ints only (UserError naming the knob otherwise)."""
  return tuple(util.parse_list(name, text, int, positive=True))


# Knobs only some families use, with their "not set" value; the universal knobs (width,
# kernel size, norm, activation, init, dropout, pooling, conv bias) apply to every family.
OPTIONAL_KNOBS = {'depth': None, 'widths': '', 'layers': '', 'one_by_one': 'default',
                  'num_one_by_one': None, 'aux_heads': False}


def resolve_knobs(knobs: dict, dtype: Any = jnp.float32, *, norm: str = 'batch',
                  act: str = 'relu', init: str = 'he', pool: str | None = 'max',
                  global_pool: str | None = 'avg', dropout: float = 0.0,
                  kernel_size: int | None = None,
                  conv_bias: bool = True, pools: Sequence[str] = POOLS,
                  one_by_one: Sequence[str] | None = ('default', 'none'),
                  uses: Sequence[str] = ('one_by_one',), bn_momentum: float = 0.9) -> Knobs:
  """Validates the knob dict in Python (bad input fails before anything compiles) and fills
  empty knobs with the family's reference values given as keyword arguments.

  `pools` and `one_by_one` list the values this family accepts for those knobs
  (`one_by_one=None`: the family checks it itself). A reference `pool` or `global_pool` of
  None means the family mixes kinds: the knob stays '' unless the user sets it. `uses` names
  the OPTIONAL_KNOBS the family reads; setting another is refused, as a typo in a config is.
  """
  ignored = [key for key, unset in OPTIONAL_KNOBS.items()
             if key not in uses and knobs.get(key, unset) not in (unset, None, '')]
  if ignored:
    raise UserError(f'model {knobs.get("name")} does not use the knob {ignored[0]!r} (it uses '
                    f'{", ".join(uses) or "none of " + ", ".join(OPTIONAL_KNOBS)}); remove it')
  get = lambda key, ref: ref if knobs.get(key) in (None, '') else knobs[key]
  k = Knobs(norm=get('norm', norm), act=get('activation', act), init=get('init', init),
            pool=get('pool', pool or ''), global_pool=get('global_pool', global_pool or ''),
            dropout=float(get('dropout', dropout)),
            width_multiplier=float(get('width_multiplier', 1.0)),
            kernel_size=get('kernel_size', kernel_size),
            conv_bias=bool(get('conv_bias', conv_bias)), depth=knobs.get('depth'),
            widths=ints('widths', knobs.get('widths') or ''), layers=knobs.get('layers') or '',
            one_by_one=str(get('one_by_one', 'default')),
            num_one_by_one=knobs.get('num_one_by_one'), bn_momentum=bn_momentum,
            dtype=jnp.dtype(dtype), convolutions=knobs.get('convolutions'))
  check_knobs(norm=k.norm, pool=k.pool or 'max', global_pool=k.global_pool or 'max', act=k.act,
              init=k.init)
  if k.pool:
    _check('pool', k.pool, pools)
  if one_by_one is not None:
    _check('one_by_one', k.one_by_one, one_by_one)
  if not 0.0 <= k.dropout < 1.0:
    raise UserError(f'dropout must be in [0, 1), got {k.dropout}')
  if k.width_multiplier <= 0:
    raise UserError(f'width_multiplier must be positive, got {k.width_multiplier}')
  if k.kernel_size is not None and k.kernel_size < 1:
    raise UserError(f'kernel_size must be positive, got {k.kernel_size}')
  if k.depth is not None and k.depth < 1:
    raise UserError(f'depth must be positive, got {k.depth}')
  if k.num_one_by_one is not None and k.num_one_by_one < 0:
    raise UserError(f'num_one_by_one must be >= 0, got {k.num_one_by_one}')
  return k


class MLPHead(nn.Module):
  """Classifier of AlexNet, ZFNet and VGG: pool to `pool_to` positions per spatial dim
  (PyTorch's adaptive average pool) or globally, flatten, hidden Dense -> act -> dropout
  layers, then the logits layer."""
  k: Knobs
  num_classes: int
  hidden: tuple[int, ...] = (4096, 4096)
  pool_to: int = 7
  global_pool: str = ''  # '' = adaptive pooling to `pool_to`

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    if self.global_pool:
      x = global_pool(x, self.global_pool)
    else:
      x = adaptive_avg_pool(x, self.pool_to)
    x = x.reshape(x.shape[0], -1)
    for h in self.hidden:
      x = activation(self.k.act)(self.k.dense(h)(x))
      x = nn.Dropout(self.k.dropout, deterministic=not train)(x)
    return self.k.dense(self.num_classes)(x).astype(jnp.float32)

