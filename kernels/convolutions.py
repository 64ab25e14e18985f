"""Which convolution a run's models call: oneDNN's (kernels/onednn.py) or XLA's with this
project's CPU lowering (kernels/xla_conv.py), chosen once per run from the config and handed to
the models as their `convolutions` attribute (models/layers.py), never through a global.

`conv_impl`: 'auto' (the default) takes oneDNN where it measured faster and can run: the CPU
backend, a CPU with AVX-512 (on AVX2-only CPUs XLA's measured faster), one device in the whole
run (the FFI call is not partitioned across devices) and the library built (`make kernels`).
'onednn' insists and fails with the reason; 'xla' never uses it. `conv_algorithm`: 'auto' lets
oneDNN run Winograd on the layers where it measured faster, 'direct' never does (docs/speed.md).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from typing import Callable

import jax
from jax import lax

from errors import UserError
from kernels import onednn, xla_conv

IMPLS = ('auto', 'xla', 'onednn')
ALGORITHMS = ('auto', 'direct')
_YNN_FLAG = re.compile(r'--xla_cpu_experimental_ynn_fusion_type=(\S*)')
_YNN_ELTWISE = 'LIBRARY_FUSION_TYPE_ELTWISE'


@dataclasses.dataclass(frozen=True)
class Convolutions:
  """The `conv_general_dilated` of training steps and of inference, for one implementation.

  Inference keeps XLA's plain convolution with impl='xla' (so `--mode=summary` reads clean
  jaxprs); training adds the CPU lowering of kernels/xla_conv.py."""
  impl: str = 'xla'                 # 'onednn' | 'xla'
  algorithm: str | None = None      # oneDNN's conv_algorithm; None with XLA's convolutions

  @property
  def train(self) -> Callable:
    if self.impl == 'onednn':
      return functools.partial(onednn.conv_general_dilated, fallback=xla_conv.conv_general_dilated,
                               winograd=self.algorithm == 'auto')
    return xla_conv.conv_general_dilated

  @property
  def infer(self) -> Callable:
    if self.impl == 'onednn':
      return functools.partial(onednn.conv_general_dilated, winograd=self.algorithm == 'auto')
    return lax.conv_general_dilated

  def compiler_options(self) -> dict[str, str] | None:
    """XLA options for the train and eval steps: with oneDNN's convolutions, YNNPACK's
    elementwise fusions are left out (the other fusion types in XLA_FLAGS stay). With them XLA
    materializes full-size arrays of broadcast BatchNorm factors and ReLU zeros for YNNPACK to
    read; without them it fuses that work into its own loops (1.15-1.17x the SimpleNet step
    with oneDNN, no difference with XLA's convolutions; docs/speed.md)."""
    return without_ynn_eltwise() if self.impl == 'onednn' else None


def without_ynn_eltwise() -> dict[str, str] | None:
  """XLA options that leave YNNPACK's elementwise fusions out of one executable (the other
  fusion types in XLA_FLAGS stay); None when XLA_FLAGS asks for none."""
  match = _YNN_FLAG.search(os.environ.get('XLA_FLAGS', ''))
  if not match or _YNN_ELTWISE not in match.group(1).split(','):
    return None
  kept = [t for t in match.group(1).split(',') if t != _YNN_ELTWISE]
  return {'xla_cpu_experimental_ynn_fusion_type': ','.join(kept)}


def run_once(fn: Callable, *args, **jit_kwargs):
  """jax.jit(fn, **jit_kwargs)(*args) for one-off work such as a model's initialization. XLA:CPU
  rejects the column-major outputs of its LAPACK calls inside YNNPACK's elementwise fusions
  ("unsupported layout in YNN fusion": the QR of the orthogonal init), so a computation that
  calls LAPACK compiles without them; any other keeps the default options, and its values."""
  lowered = jax.jit(fn, **jit_kwargs).lower(*args)
  options = None
  if jax.default_backend() == 'cpu' and '@lapack_' in lowered.as_text():
    options = without_ynn_eltwise()
  return lowered.compile(compiler_options=options)(*args)


XLA = Convolutions()


def check(impl: str, algorithm: str = 'auto') -> None:
  if impl not in IMPLS:
    raise UserError(f'unknown conv_impl {impl!r}; choose one of {", ".join(IMPLS)}')
  if algorithm not in ALGORITHMS:
    raise UserError(f'unknown conv_algorithm {algorithm!r}; choose one of {", ".join(ALGORITHMS)}')


def select(impl: str, algorithm: str = 'auto') -> Convolutions:
  """The run's convolutions for config keys conv_impl and conv_algorithm (module docstring)."""
  check(impl, algorithm)
  if impl == 'xla':
    reason = 'conv_impl=xla'
  elif jax.default_backend() != 'cpu':
    reason = f'the backend is {jax.default_backend()}, not cpu'
  elif impl == 'auto' and not onednn.cpu_has_avx512():
    reason = 'the CPU has no AVX-512 (XLA\'s convolutions measured faster there)'
  elif jax.device_count() != 1:
    reason = (f'the run has {jax.device_count()} devices; the oneDNN call is single-device '
              '(use conv_impl=xla or auto)')
  else:
    reason = onednn.load_error()
  if reason and impl == 'onednn':
    raise UserError(f'conv_impl=onednn is unavailable: {reason}')
  return XLA if reason else Convolutions('onednn', algorithm)
