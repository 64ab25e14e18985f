"""int8 quantization of weights and activations through qwix: post-training (static activation
scales calibrated on training images) and quantization-aware training (`int8_qat` in the
config). qwix intercepts `jax.lax.conv_general_dilated` and `dot_general`, so the model is
built with plain lax convolutions (the oneDNN custom call is not something it can see).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import qwix

import models
from data import datasets
from models import quantized as quant
from store import runs


def ptq(model, variables: dict, calibration: jax.Array, batch_size: int = 250):
  """(int8 model, its variables): static activation scales from the calibration inputs
  (already normalized), averaged over batches as qwix's moving average does, and per-channel
  int8 weights. `model` must use lax convolutions."""
  calibrate = qwix.quantize_model(model, qwix.QtProvider(quant.rules()))
  stats = None
  # Not jitted: qwix's statistics update inside its custom-VJP convolution leaks a tracer under
  # jit (qwix 0.1.8); eager calibration over a few batches costs seconds.
  apply = lambda v, x: calibrate.apply(v, x, train=False, mutable=['quant_stats'])[1]
  for i in range(0, len(calibration), batch_size):
    v = dict(variables, **({'quant_stats': stats} if stats is not None else {}))
    stats = apply(v, calibration[i:i + batch_size])['quant_stats']
  quantized = qwix.quantize_model(model, qwix.PtqProvider(quant.rules()))
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


def apply_fn(model, preprocess):
  """The jitted inference `(variables, uint8 images) -> logits` of `model`."""
  return jax.jit(lambda v, x: model.apply(v, preprocess(x), train=False))


def speeds(run, base: dict, fp32_xla, int8_xla, qvars: dict, images) -> dict:
  """Images/s of the run's own fp32 inference, fp32 with XLA's convolutions and the int8 model
  (the last two as `apply_fn`s), side by side on the same batch."""
  x = jnp.asarray(images)
  return {'fp32_run_convolutions': round(images_per_second(
              apply_fn(run.model, run.preprocess), base, x), 1),
          'fp32_xla': round(images_per_second(fp32_xla, base, x), 1),
          'int8_xla': round(images_per_second(int8_xla, qvars, x), 1),
          'run_conv_impl': run.convolutions.impl, 'batch': len(x)}


def speeds_default_flags(workdir: str, step: int, calibration: int, batch: int) -> dict | None:
  """`speeds` in a fresh process with XLA's default CPU flags: the YNNPACK fusions main.py
  turns on for training (kernels/runtime.py) make XLA's int8 dots and convolutions 10-20x
  slower, so int8 inference is timed both ways. None if the child fails."""
  env = dict(os.environ)
  env['XLA_FLAGS'] = re.sub(r'--xla_cpu_experimental_ynn_fusion_type=\S*', '',
                            env.get('XLA_FLAGS', '')).strip()
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  proc = subprocess.run([sys.executable, '-m', 'compress.int8', workdir, str(step),
                         str(calibration), str(batch)], cwd=repo, env=env,
                        capture_output=True, text=True)
  lines = [l for l in proc.stdout.splitlines() if l.startswith('{')]
  return json.loads(lines[-1]) if proc.returncode == 0 and lines else None


def _child(workdir: str, step: int, calibration: int, batch: int) -> None:
  run = runs.load_run(workdir, step)
  plain = models.create(run.config.model, run.info.num_classes, run.config.dtype)
  train = datasets.load_split(run.config.dataset, 'train')
  qmodel, qvars = ptq(plain, run.variables, run.preprocess(jnp.asarray(train.images[:calibration])))
  test = run.test_split()
  print(json.dumps(speeds(run, run.variables, apply_fn(plain, run.preprocess),
                          apply_fn(qmodel, run.preprocess), qvars, test.images[:batch])))


if __name__ == '__main__':
  _child(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
