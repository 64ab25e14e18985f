"""int8 quantization rules (qwix) and the quantization-aware-training model of an `int8_qat`
run. qwix intercepts `jax.lax.conv_general_dilated` and `dot_general`, so a quantized model is
built with plain lax convolutions (the oneDNN custom call is not something it can see)."""

from __future__ import annotations

import jax.numpy as jnp


def rules(static: bool = True):
  import qwix  # pulls in flax.nnx (~0.2 s a process): only int8 and QAT runs need it
  # Per-channel absmax weight scales (qwix's default for conv kernels and dense weights);
  # activations per tensor, with static scales when calibrated.
  return [qwix.QuantizationRule(module_path='.*', weight_qtype=jnp.int8, act_qtype=jnp.int8,
                                act_static_scale=static, act_calibration_method='absmax')]


def qat_model(model):
  """The model with fake-quantized int8 weights and activations in every conv and dense layer
  (straight-through gradients), for quantization-aware training."""
  import qwix  # see rules()
  return qwix.quantize_model(model, qwix.QtProvider(rules(static=False)))
