"""`--mode=benchmark`: times the real jitted train step on random data shaped like the
configured dataset (no data files needed) and writes `workdir/benchmark.json`. With
`dataset.pipeline=streaming` it reads the configured data through the streaming pipeline
instead, and also reports the pipeline's own rate and the share of training time lost to input.

Numbers: steady-state throughput of back-to-back steps (how training runs: the host
dispatches ahead, no per-step sync), the median of individually synchronized steps, XLA's
FLOP count of the step, and an f32 matmul measured in the same process as the machine's
achievable peak, so efficiency is a ratio measured side by side.
"""

from __future__ import annotations

import os
import statistics
import time

import jax
import jax.numpy as jnp
from absl import logging

import models
import util
from data import augment, sources
from kernels import convolutions, runtime
from models import summary
from train import distributed, loop, steps as steps_lib, tasks


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


def time_diagnostics(exp, compiled, state, metrics, source, key, step: int,
                     steps: int) -> dict | None:
  """With config.diagnostics on: the diagnostics call and the train step timed alternately
  (each synchronized, medians), so load on a shared machine slows both alike; the overhead is
  one call per `every_steps` steps."""
  if exp.diagnostics_step is None:
    return None
  inputs = source.step_inputs(step)
  diag = exp.diagnostics_step.lower(state, inputs, key).compile()
  jax.block_until_ready(diag(state, inputs, key))
  t_diag, t_step = [], []
  for _ in range(steps):
    t = time.perf_counter()
    jax.block_until_ready(diag(state, inputs, key))
    t_diag.append(time.perf_counter() - t)
    t = time.perf_counter()
    state, metrics = compiled(state, metrics, inputs, key)
    jax.block_until_ready(state)
    t_step.append(time.perf_counter() - t)
  every = exp.config.diagnostics.every_steps
  d, s = statistics.median(t_diag), statistics.median(t_step)
  return {'every_steps': every, 'step_time_ms': round(1000 * d, 3),
          'train_step_time_ms': round(1000 * s, 3), 'call_to_step_ratio': round(d / s, 4),
          'overhead_fraction': round(d / (every * s), 5)}


def run(config, workdir: str, steps: int = 30, warmup: int = 3) -> dict:
  """Benchmarks the train step of `config`; returns what it writes to benchmark.json."""
  stream = config.dataset.pipeline == 'streaming'
  info = loop.validate(config, workdir, need_data=stream)
  batch = config.batch_size
  if stream:
    data, _, preprocess = loop.load_data(config, info)
  else:  # random uint8 data: the step gathers its batch from it exactly as in training
    data = sources.random_split(info.shape, info.num_classes, batch * 4,
                                label_shape=tasks.get(config).label_shape(info))
    channels = info.shape[-1]
    preprocess = augment.Preprocess((127.0,) * channels, (64.0,) * channels)
  exp = loop.setup(config, data, None, info, preprocess,
                   total_steps=max(steps + warmup, 10) * 10)
  state, key, source = exp.state, exp.step_key, exp.train_source
  pipeline_rate = None
  if stream:
    pipeline_rate = source.rate(steps)
  metrics = steps_lib.empty_metrics(exp.task.Metrics, distributed.replicated(exp.mesh))

  t0 = time.perf_counter()
  compiled = exp.train_step.lower(state, metrics, source.step_inputs(0), key).compile()
  compile_time = time.perf_counter() - t0
  flops = summary.flops(compiled)
  if exp.convolutions.impl != 'xla':
    # XLA counts no FLOPs inside FFI calls: count those of the same step with XLA's
    # convolutions (compiled, not just lowered: the optimized HLO is what the count is of).
    xla_model = models.create(config.model, info.num_classes, steps_lib.DTYPES[config.dtype],
                              convolutions=convolutions.XLA)
    xla_step = steps_lib.make_train_step(xla_model, exp.tx, config, source, preprocess, exp.mesh,
                                         exp.task, exp.objective)
    flops = summary.flops(xla_step.lower(state, metrics, source.step_inputs(0), key).compile())

  step = 0
  for _ in range(warmup):
    state, metrics = compiled(state, metrics, source.step_inputs(step), key)
    step += 1
  jax.block_until_ready(state)

  # Synchronized steps: per-step latency distribution.
  step_times = []
  for _ in range(steps):
    t = time.perf_counter()
    state, metrics = compiled(state, metrics, source.step_inputs(step), key)
    jax.block_until_ready(state)
    step_times.append(time.perf_counter() - t)
    step += 1

  # Back-to-back steps, as the train loop runs them; the source's host work (the per-epoch
  # permutation) is timed as the share of wall time spent waiting on input.
  t_input = 0.0
  t = time.perf_counter()
  for _ in range(steps):
    ti = time.perf_counter()
    inputs = source.step_inputs(step)
    t_input += time.perf_counter() - ti
    state, metrics = compiled(state, metrics, inputs, key)
    step += 1
  jax.block_until_ready(state)
  wall = time.perf_counter() - t
  input_wait = t_input / wall
  if stream:
    # The same steps on one batch already on the device: the time the pipeline added is the
    # share of training lost to input (the host's blocked time overlaps running steps).
    inputs = source.step_inputs(step)
    jax.block_until_ready(inputs)
    t = time.perf_counter()
    for _ in range(steps):
      state, metrics = compiled(state, metrics, inputs, key)
    jax.block_until_ready(state)
    input_wait = max(0.0, 1.0 - (time.perf_counter() - t) / wall)

  diagnostics = time_diagnostics(exp, compiled, state, metrics, source, key, step, steps)
  source.close()
  peak = matmul_peak_gflops()
  step_s = statistics.median(step_times)
  achieved = flops / (wall / steps) / 1e9
  result = {
      'model': config.model.name,
      'dataset_shape': list(info.shape),
      'batch_size': batch,
      'dtype': config.dtype,
      'num_devices': jax.device_count(),
      'num_params': exp.num_params,
      'images_per_sec': round(batch * steps / wall, 2),
      'step_time_ms': round(1000 * step_s, 3),
      'step_time_ms_p90': round(1000 * sorted(step_times)[int(0.9 * (steps - 1))], 3),
      'flops_per_step': flops,
      'achieved_gflops_per_sec': round(achieved, 2),
      'peak_gflops_per_sec': round(peak, 2),
      'fraction_of_peak': round(achieved / peak, 4),
      'compile_time_s': round(compile_time, 3),
      'input_wait_fraction': round(input_wait, 5),
      'pipeline': 'streaming' if stream else 'memory',
      'pipeline_images_per_sec': round(pipeline_rate, 1) if pipeline_rate else None,
      'host_blocked_fraction': round(t_input / wall, 5),
      'timed_steps': steps,
      'conv_impl': exp.convolutions.impl,
      'conv_algorithm': exp.convolutions.algorithm,
      'xla_compiler_options': exp.convolutions.compiler_options(),
      'xla_flags': os.environ.get('XLA_FLAGS', ''),
      'malloc': runtime.malloc(),
      'tcmalloc_release_rate': runtime.tcmalloc_release_rate(),
      'backend': jax.default_backend(),
      'diagnostics': diagnostics,
  }
  if diagnostics:
    logging.info('diagnostics: %.1f ms per call vs %.1f ms per step; every %d steps = %.2f%% '
                 'of training time', diagnostics['step_time_ms'],
                 diagnostics['train_step_time_ms'], diagnostics['every_steps'],
                 100 * diagnostics['overhead_fraction'])
  if stream:
    logging.info('streaming input: pipeline alone %.1f img/s per process; %.1f%% of training '
                 'time lost to input', pipeline_rate, 100 * input_wait)
  if distributed.is_main_process():
    util.write_json(os.path.join(workdir, 'benchmark.json'), result)
    logging.info('benchmark %s batch %d: %.1f img/s, %.1f ms/step, %.1f GFLOP/s = %.0f%% of the '
                 '%.1f GFLOP/s matmul peak, compile %.1f s', config.model.name, batch,
                 result['images_per_sec'], result['step_time_ms'], achieved,
                 100 * achieved / peak, peak, compile_time)
  return result
