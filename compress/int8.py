"""int8 quantization of weights and activations through qwix: post-training (static activation
scales calibrated on training images) and quantization-aware training (`int8_qat` in the
config). qwix intercepts `jax.lax.conv_general_dilated` and `dot_general`, so the model is
built with plain lax convolutions (the oneDNN custom call is not something it can see).
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np


def rules(static: bool = True):
  import qwix
  # Per-channel absmax weight scales (qwix's default for conv kernels and dense weights);
  # activations per tensor, with static scales when calibrated.
  return [qwix.QuantizationRule(module_path='.*', weight_qtype=jnp.int8, act_qtype=jnp.int8,
                                act_static_scale=static, act_calibration_method='absmax')]


def qat_model(model):
  """The model with fake-quantized int8 weights and activations in every conv and dense layer
  (straight-through gradients), for quantization-aware training."""
  import qwix
  return qwix.quantize_model(model, qwix.QtProvider(rules(static=False)))


def ptq(model, variables: dict, calibration: jax.Array, batch_size: int = 250):
  """(int8 model, its variables): static activation scales from the calibration inputs
  (already normalized), averaged over batches as qwix's moving average does, and per-channel
  int8 weights. `model` must use lax convolutions."""
  import qwix
  calibrate = qwix.quantize_model(model, qwix.QtProvider(rules()))
  stats = None
  # Not jitted: qwix's statistics update inside its custom-VJP convolution leaks a tracer under
  # jit (qwix 0.1.8); eager calibration over a few batches costs seconds.
  apply = lambda v, x: calibrate.apply(v, x, train=False, mutable=['quant_stats'])[1]
  for i in range(0, len(calibration), batch_size):
    v = dict(variables, **({'quant_stats': stats} if stats is not None else {}))
    stats = apply(v, calibration[i:i + batch_size])['quant_stats']
  quantized = qwix.quantize_model(model, qwix.PtqProvider(rules()))
  abstract = jax.eval_shape(lambda x: quantized.init(jax.random.key(0), x, train=False),
                            calibration[:1])
  qparams = qwix.quantize_params(variables['params'], abstract['params'], stats)
  return quantized, {'params': qparams, 'batch_stats': variables.get('batch_stats', {})}


def save(path: str, variables: dict) -> int:
  """The int8 model's arrays (int8 kernels, float32 scales, biases, batch statistics) as an
  uncompressed .npz; returns its bytes."""
  leaves = jax.tree_util.tree_leaves_with_path(variables)
  arrays = {jax.tree_util.keystr(k): np.asarray(v) for k, v in leaves}
  tmp = path + '.tmp.npz'
  np.savez(tmp, **arrays)
  os.replace(tmp, path)
  return os.path.getsize(path)


def images_per_second(fn, variables, x: jax.Array, repeats: int = 5) -> float:
  """Inference throughput of a jitted `fn(variables, x)`: the best of `repeats` timed calls
  after a warm-up (the best, as machines here are shared)."""
  jax.block_until_ready(fn(variables, x))
  best = float('inf')
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn(variables, x))
    best = min(best, time.perf_counter() - t)
  return len(x) / best
