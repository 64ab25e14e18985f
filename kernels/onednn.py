"""oneDNN convolutions for the CPU backend, as a drop-in `conv_general_dilated`.

XLA:CPU lowers a convolution's weight gradient to slow loops and surrounds it with layout
transposes; oneDNN (the library PyTorch's CPU convolutions use) has tuned kernels for all
three passes on channels-last data. `conv_general_dilated` here calls them through the XLA
FFI (kernels/onednn_conv.cc, built by `make kernels`) with a custom VJP: forward, backward
data and backward weights are one oneDNN primitive each, while XLA keeps fusing the bias,
BatchNorm, activation and pooling around them.

Covered: f32, and bf16 where the CPU runs oneDNN's bf16 convolutions (AVX-512; AVX512-BF16
and AMX make them fast: `supports_bf16`), channels-last inputs with (spatial..., in, out)
kernels (Flax's nn.Conv), 1-3 spatial dims, any stride, padding and kernel dilation, one
feature group. Anything else (mixed dtypes, bf16 elsewhere, grouped or transposed
convolutions) falls through to XLA (`kernels/xla_conv.py` in training steps,
`lax.conv_general_dilated` otherwise).
The VJP is first order: gradients w.r.t. inputs and kernels work (training, saliency,
adversarial attacks); second derivatives and forward-mode JVPs need `conv_impl='xla'`.

Which implementation a run uses, and whether oneDNN may pick Winograd, is decided by
kernels/convolutions.py (config keys `conv_impl` and `conv_algorithm`); the choice reaches the
models as an attribute, never as a global. Winograd computes the same convolution with fewer
multiplications and a different rounding (relative differences ~1e-6, like XLA's vs oneDNN's
direct kernels).
"""

from __future__ import annotations

import ctypes
import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from kernels import xla_conv

LIBRARY = pathlib.Path(__file__).resolve().parent / 'build' / 'libonednn_conv.so'
_TARGETS = {'fwd': 'OnednnConvForward', 'bwd_data': 'OnednnConvBackwardData',
            'bwd_weights': 'OnednnConvBackwardWeights'}


@functools.cache
def _load() -> tuple[ctypes.CDLL | None, str | None]:
  """Loads the library and registers its FFI targets once: (library, None) or (None, why not)."""
  if not LIBRARY.exists():
    return None, f'{LIBRARY} is not built (run `make kernels`; it needs apt\'s libdnnl-dev and g++)'
  try:
    lib = ctypes.cdll.LoadLibrary(str(LIBRARY))
  except OSError as e:
    return None, f'cannot load {LIBRARY}: {e} (rebuild it with `make kernels`)'
  for name, symbol in _TARGETS.items():
    jax.ffi.register_ffi_target(f'onednn_conv_{name}', jax.ffi.pycapsule(getattr(lib, symbol)),
                                platform='cpu')
  return lib, None


def load_error() -> str | None:
  """Why the oneDNN kernels are unavailable, or None (registers them on first call)."""
  return _load()[1]


@functools.cache
def supports_bf16() -> bool:
  """Whether this CPU and oneDNN build run bf16 convolutions (all three passes)."""
  lib = _load()[0]
  return lib is not None and bool(lib.OnednnConvSupportsBf16())


@functools.cache
def cpu_has_avx512() -> bool:
  """Whether this CPU has AVX-512 (Linux: /proc/cpuinfo's avx512f flag)."""
  try:
    with open('/proc/cpuinfo') as f:
      return any(line.startswith('flags') and ' avx512f' in line for line in f)
  except OSError:
    return False


def _out_size(n: int, k: int, stride: int, dilation: int, lo: int, hi: int) -> int:
  return (n + lo + hi - dilation * (k - 1) - 1) // stride + 1


def wants_winograd(x_shape, kernel_shape, dtype, strides, dilation) -> bool:
  """Whether a layer is one where oneDNN's Winograd measured faster than direct (f32 3x3
  stride-1, >= 16 channels in and out, maps of at least 4x4; docs/speed.md)."""
  return (dtype == jnp.float32 and len(x_shape) == 4
          and tuple(kernel_shape[:2]) == (3, 3) and tuple(strides) == (1, 1)
          and tuple(dilation) == (1, 1) and min(kernel_shape[2:]) >= 16
          and min(x_shape[1:3]) >= 4)


def _call(target: str, shape, *operands, geometry):
  strides, dilation, lo, hi, winograd = geometry
  dtype = operands[0].dtype  # every operand and the result share it (see `fits` below)
  ints = lambda v: np.asarray(v, np.int64)
  return jax.ffi.ffi_call(f'onednn_conv_{target}', jax.ShapeDtypeStruct(shape, dtype),
                          vmap_method='sequential')(
                              *operands, strides=ints(strides), dilation=ints(dilation),
                              pad_lo=ints(lo), pad_hi=ints(hi), winograd=np.int64(winograd))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv(x: jax.Array, kernel: jax.Array, geometry: tuple) -> jax.Array:
  """Channels-last convolution; geometry = (strides, dilation, pad_lo, pad_hi) tuples and
  whether to ask for Winograd."""
  strides, dilation, lo, hi, _ = geometry
  nd = x.ndim - 2
  shape = (x.shape[0],) + tuple(
      _out_size(x.shape[1 + i], kernel.shape[i], strides[i], dilation[i], lo[i], hi[i])
      for i in range(nd)) + (kernel.shape[-1],)
  return _call('fwd', shape, x, kernel, geometry=geometry)


def _conv_fwd(x, kernel, geometry):
  return conv(x, kernel, geometry), (x, kernel)


def _conv_bwd(geometry, residuals, dy):
  x, kernel = residuals
  dx = _call('bwd_data', x.shape, dy, kernel, geometry=geometry)
  dk = _call('bwd_weights', kernel.shape, x, dy, geometry=geometry)
  return dx, dk


conv.defvjp(_conv_fwd, _conv_bwd)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         batch_group_count=1, precision=None, preferred_element_type=None,
                         fallback=lax.conv_general_dilated, winograd: bool = True):
  """`lax.conv_general_dilated` through oneDNN when the call fits (else through `fallback`,
  same signature); `winograd=False` keeps oneDNN on its direct kernels."""
  nd = lhs.ndim - 2
  lhs_dilation = tuple(lhs_dilation or (1,) * nd)
  rhs_dilation = tuple(rhs_dilation or (1,) * nd)
  dnums = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  dtype = lhs.dtype
  fits = (load_error() is None and 1 <= nd <= 3 and rhs.dtype == dtype
          and (dtype == jnp.float32 or (dtype == jnp.bfloat16 and supports_bf16()))
          and preferred_element_type in (None, dtype) and feature_group_count == 1
          and batch_group_count == 1 and set(lhs_dilation) == {1}
          and xla_conv.channels_last(nd, dnums))
  if not fits:
    return fallback(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                    dimension_numbers, feature_group_count, batch_group_count, precision,
                    preferred_element_type)
  lo, hi = zip(*xla_conv.explicit_padding(lhs, rhs, window_strides, padding, rhs_dilation))
  winograd = winograd and wants_winograd(lhs.shape, rhs.shape, dtype, window_strides,
                                         rhs_dilation)
  geometry = (tuple(window_strides), rhs_dilation, tuple(lo), tuple(hi), winograd)
  return conv(lhs, rhs, geometry)
