"""`--mode=benchmark`: times the real jitted train step on random data shaped like the
configured dataset (no data files needed) and writes `workdir/benchmark.json`.

Numbers: steady-state throughput of back-to-back steps (how training actually runs: the host
dispatches ahead, no per-step sync), the median of individually synchronized steps, XLA's
FLOP count of the step, and an f32 matmul measured in the same process as the machine's
achievable peak, so efficiency is a ratio measured side by side.
"""

import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

import models
from data import datasets
from kernels import onednn
from models import summary
from train import distributed, loop, optim


def _cost_flops(compiled) -> float:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get('flops', 0.0))


def matmul_peak_gflops(n: int = 2048, repeats: int = 10) -> float:
  """Achieved GFLOP/s of an n^3 float32 matmul on the first local device (best of repeats)."""
  device = jax.local_devices()[0]
  a = jax.device_put(jnp.ones((n, n), jnp.float32), device)
  b = jax.device_put(jnp.ones((n, n), jnp.float32), device)
  mm = jax.jit(jnp.matmul)
  mm(a, b).block_until_ready()
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    mm(a, b).block_until_ready()
    times.append(time.perf_counter() - t)
  return 2 * n ** 3 / min(times) / 1e9


def run(config, workdir: str, steps: int = 30, warmup: int = 3) -> dict:
  """Benchmarks the train step of `config`; returns what it writes to benchmark.json."""
  info = loop.validate(config, workdir, need_data=False)
  mesh = distributed.mesh()
  rep = distributed.replicated(mesh)
  batch = config.batch_size
  n_examples = batch * 4  # random uint8 data: the step indexes into it exactly as in training
  rng = np.random.default_rng(0)
  images = distributed.put_replicated(
      rng.integers(0, 256, (n_examples, *info.shape), dtype=np.uint8), rep)
  labels = distributed.put_replicated(
      rng.integers(0, info.num_classes, n_examples).astype(np.int32), rep)
  channels = info.shape[-1]
  mean = distributed.put_replicated(np.full((channels,), 127.0, np.float32), rep)
  std = distributed.put_replicated(np.full((channels,), 64.0, np.float32), rep)

  model = models.create(config.model, info.num_classes, loop.DTYPES[config.dtype])
  steps_per_epoch = n_examples // batch
  tx = optim.create(config, steps_per_epoch, max(steps + warmup, 10) * 10)
  init_key, data_key, step_key = loop.run_keys(config.seed, rep)
  state = loop.create_train_state(model, tx, info.shape, init_key, rep, ema=config.ema_decay > 0)
  metrics = loop.empty_metrics(rep)
  permute = jax.jit(lambda e: jax.random.permutation(jax.random.fold_in(data_key, e), n_examples),
                    out_shardings=rep)
  perm = permute(0)
  train_step = loop.make_train_step(model, tx, config, steps_per_epoch, mesh)

  t0 = time.perf_counter()
  compiled = train_step.lower(state, metrics, images, labels, perm, mean, std, step_key).compile()
  compile_time = time.perf_counter() - t0
  flops = _cost_flops(compiled)
  if onednn.active():
    # XLA counts no FLOPs inside FFI calls: count those of the same step compiled with XLA's
    # convolutions (compiled, not just lowered: the optimized HLO is what the count is of).
    with onednn.disabled():
      xla_step = loop.make_train_step(model, tx, config, steps_per_epoch, mesh)
      flops = _cost_flops(xla_step.lower(
          state, metrics, images, labels, perm, mean, std, step_key).compile())

  for _ in range(warmup):
    state, metrics = compiled(state, metrics, images, labels, perm, mean, std, step_key)
  jax.block_until_ready(state)

  # Synchronized steps: per-step latency distribution.
  step_times = []
  for _ in range(steps):
    t = time.perf_counter()
    state, metrics = compiled(state, metrics, images, labels, perm, mean, std, step_key)
    jax.block_until_ready(state)
    step_times.append(time.perf_counter() - t)

  # Back-to-back steps, as the train loop runs them. Input work outside the step is only the
  # per-epoch permutation, timed here as the share of wall time spent waiting on input.
  t_input = 0.0
  t = time.perf_counter()
  for i in range(steps):
    if i % steps_per_epoch == 0:
      ti = time.perf_counter()
      perm = permute(i // steps_per_epoch)
      t_input += time.perf_counter() - ti
    state, metrics = compiled(state, metrics, images, labels, perm, mean, std, step_key)
  jax.block_until_ready(state)
  wall = time.perf_counter() - t

  peak = matmul_peak_gflops()
  step_s = statistics.median(step_times)
  achieved = flops / (wall / steps) / 1e9
  result = {
      'model': config.model.name,
      'dataset_shape': list(info.shape),
      'batch_size': batch,
      'dtype': config.dtype,
      'num_devices': jax.device_count(),
      'num_params': summary.count_params(state.params),
      'images_per_sec': round(batch * steps / wall, 2),
      'step_time_ms': round(1000 * step_s, 3),
      'step_time_ms_p90': round(1000 * sorted(step_times)[int(0.9 * (steps - 1))], 3),
      'flops_per_step': flops,
      'achieved_gflops_per_sec': round(achieved, 2),
      'peak_gflops_per_sec': round(peak, 2),
      'fraction_of_peak': round(achieved / peak, 4),
      'compile_time_s': round(compile_time, 3),
      'input_wait_fraction': round(t_input / wall, 5),
      'timed_steps': steps,
      'conv_impl': onednn.current(),
      'conv_algorithm': onednn.algorithm(),
      'xla_compiler_options': onednn.compiler_options(),
      'xla_flags': os.environ.get('XLA_FLAGS', ''),
      'malloc': loop.malloc(),
      'tcmalloc_release_rate': loop.tcmalloc_release_rate(),
      'backend': jax.default_backend(),
  }
  if distributed.is_main_process():
    with open(os.path.join(workdir, 'benchmark.json'), 'w') as f:
      json.dump(result, f, indent=2)
    logging.info('benchmark %s batch %d: %.1f img/s, %.1f ms/step, %.1f GFLOP/s = %.0f%% of the '
                 '%.1f GFLOP/s matmul peak, compile %.1f s', config.model.name, batch,
                 result['images_per_sec'], result['step_time_ms'], achieved,
                 100 * achieved / peak, peak, compile_time)
  return result
