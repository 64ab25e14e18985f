"""How convolutions reach XLA's CPU backend: two lowering choices, same math.

Measured on 2-core AMD EPYC machines (docs/speed.md):

* *Keep convolutions out of YNNPACK's elementwise fusions.* With
  `LIBRARY_FUSION_TYPE_ELTWISE` (set by main.py, worth ~30% for BatchNorm and ReLU), XLA
  also pulls a convolution whose result feeds a bias add into the YNNPACK fusion, and
  YNNPACK's convolution is slower than Eigen's on most layers of these networks
  (SimpleNet-5M 32x32x64 -> 128 at batch 64: 122 ms vs 72 ms; Fashion-MNIST 28x28x64 -> 32:
  30 ms vs 18 ms). A `reduce_precision` to the array's own precision, an exact identity,
  sits between the convolution and its consumer; YNNPACK fusions do not take it, so the
  convolution stays a plain (Eigen) convolution. It costs a copy of the output (~4 ms of a
  ~210 ms Fashion-MNIST step), far less than the convolution time it saves on wide layers. Stems with few input channels, where
  YNNPACK is faster (64x28x28x1 -> 64: 2.1 ms vs 4.9 ms), are left alone.
* *Tiny feature maps as one matmul.* Eigen spends 65 ms on a 3x3 convolution over a 2x2
  map (64x2x2x256 -> 256, 4.7 GFLOP/s) and about twice that on its gradients. When every
  spatial side is at most 2, the convolution is computed as shifted slices of the padded
  input, concatenated along channels, times the kernel reshaped to a matrix: 9 ms for
  forward and backward instead of 137.

Both apply only while tracing for the CPU backend (accelerators get `lax.conv_general_dilated`
unchanged; cuDNN fuses conv + bias itself), and kernels/convolutions.py hands them to the
models for training steps only, so inference graphs, which `--mode=summary` reads, keep the
plain convolution.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
from jax import lax

# Input channels below which a convolution is left to YNNPACK's fusion (the stem).
MIN_EIGEN_IN_CHANNELS = 8
# Feature maps whose every spatial side is at most this go through slices and a matmul.
TINY_SIDE = 2


def channels_last(nd: int, dnums) -> bool:
  """Whether `dnums` are Flax's layout: (N, spatial..., C) data, (spatial..., in, out) kernel."""
  spec = lax.ConvDimensionNumbers(lhs_spec=(0, nd + 1) + tuple(range(1, nd + 1)),
                                  rhs_spec=(nd + 1, nd) + tuple(range(nd)),
                                  out_spec=(0, nd + 1) + tuple(range(1, nd + 1)))
  return dnums == spec


def explicit_padding(lhs, rhs, window_strides, padding, rhs_dilation):
  """`padding` as (low, high) pairs per spatial dimension (resolves 'SAME' / 'VALID')."""
  nd = lhs.ndim - 2
  if isinstance(padding, str):
    dilated = [(k - 1) * d + 1 for k, d in zip(rhs.shape[:nd], rhs_dilation)]
    padding = lax.padtype_to_pads(lhs.shape[1:-1], dilated, window_strides, padding)
  return [tuple(p) for p in padding]


def _slices_matmul(lhs, rhs, pads, precision, preferred_element_type):
  """Stride-1, undilated channels-last convolution as shifted slices times a matrix. Kernel
  taps that only ever see padding add zeros and are left out (a 3x3 conv on a 1x1 map is
  one matmul with the centre tap)."""
  nd = lhs.ndim - 2
  sizes, kernel = lhs.shape[1:-1], rhs.shape[:nd]
  x = jnp.pad(lhs, [(0, 0), *pads, (0, 0)])
  out = [n + lo + hi - k + 1 for n, (lo, hi), k in zip(sizes, pads, kernel)]
  cols, taps = [], []
  for offset in itertools.product(*(range(k) for k in kernel)):
    # The window rows [o, o + out) of the padded input overlap the data rows [lo, lo + n).
    if all(o < lo + n and o + m > lo for o, m, (lo, _), n in zip(offset, out, pads, sizes)):
      cols.append(x[(slice(None), *(slice(o, o + m) for o, m in zip(offset, out)))])
      taps.append(rhs[offset])
  return jnp.matmul(jnp.concatenate(cols, axis=-1), jnp.concatenate(taps, axis=0),
                    precision=precision, preferred_element_type=preferred_element_type)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         batch_group_count=1, precision=None, preferred_element_type=None):
  """`lax.conv_general_dilated` with the CPU lowering choices above."""
  nd = lhs.ndim - 2
  lhs_dilation = tuple(lhs_dilation or (1,) * nd)
  rhs_dilation = tuple(rhs_dilation or (1,) * nd)
  dnums = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  simple = (jax.default_backend() == 'cpu' and channels_last(nd, dnums)
            and feature_group_count == 1 and batch_group_count == 1 and set(lhs_dilation) == {1})
  if (simple and set(window_strides) == {1} and set(rhs_dilation) == {1}
          and max(lhs.shape[1:-1]) <= TINY_SIDE and max(rhs.shape[:nd]) > 1):
    pads = explicit_padding(lhs, rhs, window_strides, padding, rhs_dilation)
    if all(n + lo + hi >= k for n, (lo, hi), k in zip(lhs.shape[1:-1], pads, rhs.shape[:nd])):
      return _slices_matmul(lhs, rhs, pads, precision, preferred_element_type)
  y = lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation,
                               rhs_dilation, dimension_numbers, feature_group_count,
                               batch_group_count, precision, preferred_element_type)
  if simple and lhs.shape[-1] >= MIN_EIGEN_IN_CHANNELS and jnp.issubdtype(y.dtype, jnp.floating):
    info = jnp.finfo(y.dtype)
    y = lax.reduce_precision(y, exponent_bits=info.nexp, mantissa_bits=info.nmant)
  return y
