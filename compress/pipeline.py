"""`--mode=compress`: Deep Compression (Han et al. 2016: prune, retrain, share weights, fine-tune
the centroids, Huffman-code) and int8 post-training quantization of a trained run, into
`W/compress/`.

Every retraining is a normal training run in `W/compress/<stage>/` (its config.json,
checkpoints, TensorBoard and results.json), started from the previous stage's weights with the
run's own optimizer wrapped by the stage's (compress/prune.py, compress/share.py); running the
mode again resumes an interrupted stage and skips finished ones. Each stage writes the model in
its format (compress/codec.py), and the sizes reported are those files' bytes.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import time
from typing import Any, Callable

import jax.numpy as jnp
import numpy as np
from absl import logging

import models
import util
from analysis import common
from compress import codec, int8, options, prune, share
from data import datasets
from errors import UserError
from models import summary
from store import checkpoints, runs
from train import distributed, loop, steps, tasks

STAGES = options.STAGES
STAGE_COLUMNS = ('stage', 'params_kept', 'bits_per_weight', 'bytes', 'compression_ratio',
                 'test_accuracy')
Options = options.Compress  # the mode's options and their defaults (compress/options.py)


def check_options(o: Options, params) -> dict:
  """Every setting checked, before anything is compiled; returns the per-layer settings."""
  bad = [s for s in o.stages if s not in STAGES]
  if bad:
    raise UserError(f'unknown compress stage {bad[0]!r}; choose from {", ".join(STAGES)}')
  if 'huffman' in o.stages and 'share' not in o.stages:
    raise UserError('the huffman stage codes shared weights: add share to --compress_stages')
  if o.scope not in prune.SCOPES:
    raise UserError(f'--compress_scope must be layer or global, got {o.scope!r}')
  if o.iterations < 1:
    raise UserError(f'--compress_iterations must be >= 1, got {o.iterations}')
  for name, v in (('retrain_epochs', o.retrain_epochs), ('finetune_epochs', o.finetune_epochs)):
    if v < 0:
      raise UserError(f'--compress_{name} must be >= 0, got {v}')
  if o.lr_scale <= 0 or o.finetune_lr_scale <= 0:
    raise UserError('--compress_lr_scale and --compress_finetune_lr_scale must be positive')
  util.check_output_folder('--compress_out', o.out)
  if o.calibration < 1:
    raise UserError(f'--compress_calibration must be positive, got {o.calibration}')
  sparsity = prune.parse_spec(o.sparsity, '--compress_sparsity', params)
  prune.check_sparsity(sparsity)
  bits = prune.parse_spec(o.bits, '--compress_bits', params, int)
  share.check_bits(bits)
  index_bits = prune.parse_spec(o.index_bits, '--compress_index_bits', params, int)
  for name, b in index_bits.items():
    if not 1 <= b <= 16:
      raise UserError(f'--compress_index_bits of {name} must be in 1..16, got {b}')
  if 'prune' not in o.stages:
    sparsity = {n: 0.0 for n in sparsity}
  return {'sparsity': sparsity, 'bits': bits, 'index_bits': index_bits}


def stage_config(config, epochs: float, lr_scale: float, train_examples: int):
  """The run's config as a retraining stage: `epochs` (any fraction) of cosine decay from the
  run's learning rate times `lr_scale`, no warmup, no EMA, distillation and QAT off."""
  c = copy.deepcopy(config)
  with c.unlocked():
    c.num_train_steps = max(1, int(round(epochs * (train_examples // config.batch_size))))
    c.optimizer.learning_rate = config.optimizer.learning_rate * lr_scale
    c.schedule.name, c.schedule.warmup_epochs, c.schedule.final_lr_fraction = 'cosine', 0.0, 0.0
    c.ema_decay = 0.0
    c.distill.teacher = ''
    c.int8_qat = False
    c.keep_checkpoints = 1
  return c


def _retrain(config, workdir: str, variables: dict, wrap_tx) -> tuple[dict, float]:
  """Trains a stage (or resumes / skips it); returns its final {'params', 'batch_stats'} and
  its training time over all sessions (results.json's train_time_s)."""
  results = loop.train_and_evaluate(config, workdir, wrap_tx=wrap_tx, init_variables=variables)
  state = checkpoints.load_checkpoint(workdir)
  return {'params': state['params'], 'batch_stats': state.get('batch_stats', {})}, \
      results['train_time_s']


def _arrays(variables: dict) -> dict[str, np.ndarray]:
  out = {}
  for col in ('params', 'batch_stats'):
    for n, v in prune.flatten(variables.get(col, {})).items():
      out[f'{col}/{n}'] = np.asarray(v, np.float32)
  return out


def _variables(arrays: dict[str, np.ndarray]) -> dict:
  cols = {'params': {}, 'batch_stats': {}}
  for n, v in arrays.items():
    col, _, rest = n.partition('/')
    cols[col][rest] = jnp.asarray(v)
  return {c: prune.unflatten(f) for c, f in cols.items()}


def _prefixed(d: dict, prefix: str = 'params/') -> dict:
  return {prefix + k: v for k, v in d.items()}


@dataclasses.dataclass
class Context:
  """What the stages of `--mode=compress` share: the run, its test accuracy as a function of
  weights, the per-layer settings, the `stages` rows, and the weights and masks each weight
  stage hands to the next (prune -> share -> huffman)."""
  workdir: str
  run: runs.Run
  o: Options
  per_layer: dict
  out: str                # W/compress (or --compress_out)
  test: Any
  accuracy: Callable      # variables -> test accuracy
  total_params: int
  n_train: int
  layers: dict            # prunable kernels: name -> kind
  rows: list
  row: Callable           # appends one `stages` row
  base: dict              # the run's fp32 variables
  current: dict           # the weights after the last weight stage
  masks: dict             # kept weights of every prunable kernel
  shared: dict | None = None   # arrays and codec arguments of the shared-weight stage
  int8_info: dict | None = None


def _fp32(ctx: Context) -> None:
  """The reference: every weight as float32 in the codec's container."""
  t0 = time.time()
  path = os.path.join(ctx.out, 'fp32.cnnz')
  ctx.row('fp32', ctx.base, path, codec.write(path, _arrays(ctx.base)), ctx.accuracy(ctx.base),
          t0)


def _prune(ctx: Context) -> None:
  """Iterative magnitude pruning (Han et al. 2015), retraining between iterations."""
  o, run, per_layer = ctx.o, ctx.run, ctx.per_layer
  t0, train_s = time.time(), 0.0
  current, masks = ctx.current, ctx.masks
  for i in range(1, o.iterations + 1):
    target = prune.iteration_sparsity(per_layer['sparsity'], i, o.iterations)
    masks = prune.magnitude_masks(current['params'], target, o.scope, previous=masks)
    start = {'params': prune.apply_masks(current['params'], masks),
             'batch_stats': current['batch_stats']}
    if o.retrain_epochs > 0:
      cfg = stage_config(run.config, o.retrain_epochs, o.lr_scale, ctx.n_train)
      current, secs = _retrain(cfg, os.path.join(ctx.out, f'prune_{i}'), start,
                               lambda tx, m=masks: prune.masked(tx, m))
      train_s += secs
    else:
      current = start
  ctx.current, ctx.masks = current, masks
  path = os.path.join(ctx.out, 'pruned.cnnz')
  nbytes = codec.write(path, _arrays(current), 'sparse', masks=_prefixed(masks),
                       index_bits=_prefixed(per_layer['index_bits']))
  ctx.row('pruned', current, path, nbytes, ctx.accuracy(current), t0,
          iterations=o.iterations, scope=o.scope, train_time_s=round(train_s, 1))


def _share(ctx: Context) -> None:
  """Weight sharing by k-means per layer, then fine-tuning the centroids (Deep Compression)."""
  o, run, per_layer, layers, masks = ctx.o, ctx.run, ctx.per_layer, ctx.layers, ctx.masks
  t0, train_s = time.time(), 0.0
  shared_params, centroids, assignments = share.cluster(ctx.current['params'], masks,
                                                        per_layer['bits'])
  start = {'params': shared_params, 'batch_stats': ctx.current['batch_stats']}
  if o.finetune_epochs > 0:
    cfg = stage_config(run.config, o.finetune_epochs, o.finetune_lr_scale, ctx.n_train)
    current, train_s = _retrain(cfg, os.path.join(ctx.out, 'share'), start,
                                lambda tx: share.shared(tx, assignments))
  else:
    current = start
  ctx.current = current
  centroids = share.extract(current['params'], assignments)
  distinct = share.distinct_values(current['params'], layers)
  for n in layers:
    if distinct[n] > 2 ** per_layer['bits'][n]:
      raise RuntimeError(f'{n}: {distinct[n]} distinct values after fine-tuning')
  arrays = _arrays(current)
  kw = dict(masks=_prefixed(masks), index_bits=_prefixed(per_layer['index_bits']),
            centroids=_prefixed(centroids), assignments=_prefixed(assignments))
  ctx.shared = {'arrays': arrays, 'kw': kw}
  path = os.path.join(ctx.out, 'quantized.cnnz')
  nbytes = codec.write(path, arrays, 'shared', **kw)
  ctx.row('quantized', current, path, nbytes, ctx.accuracy(current), t0,
          train_time_s=round(train_s, 1))


def _huffman(ctx: Context) -> None:
  """Huffman coding of the shared-weight model (needs the share stage), decoded back and
  checked to give the same logits."""
  if ctx.shared is None:
    return
  run = ctx.run
  t0 = time.time()
  path = os.path.join(ctx.out, 'model.cnnz')
  nbytes = codec.write(path, ctx.shared['arrays'], 'huffman', meta={
      'workdir': os.path.abspath(ctx.workdir), 'step': run.step,
      'model': run.config.model.to_dict()}, **ctx.shared['kw'])
  decoded, _ = codec.read(path)
  dv = _variables(decoded)
  logits = int8.apply_fn(run.model, run.preprocess)
  probe = jnp.asarray(ctx.test.images[:256])
  exact = bool(np.array_equal(logits(dv, probe), logits(ctx.current, probe)))
  ctx.row('huffman', dv, path, nbytes, ctx.accuracy(dv), t0, decoded_logits_equal=exact)


def _int8_stage(ctx: Context) -> None:
  """int8 post-training quantization of the fp32 run (qwix), with its inference speed."""
  t0 = time.time()
  ctx.int8_info, int8_bytes = _int8(ctx.run, ctx.base, ctx.out, ctx.o.calibration, ctx.test)
  ctx.row('int8', ctx.base, os.path.join(ctx.out, 'int8.npz'), int8_bytes,
          ctx.int8_info['int8_accuracy'], t0, kept=ctx.total_params,
          source='fp32')  # every parameter is stored, as int8 or float32


# The weight stages in order (each starts from the previous one's weights); int8 starts from
# the fp32 run. `--compress_stages` picks among them.
STAGE_FUNCTIONS = (('prune', _prune), ('share', _share), ('huffman', _huffman))
# Rough shares of the mode's time with the defaults (retraining dominates), for the overall ETA.
STAGE_SHARES = {'fp32': 0.2, 'prune': 5.0, 'share': 2.0, 'huffman': 0.2, 'int8': 1.0}


def context(workdir: str, o: Options) -> Context:
  """The shared context of the stages: the run loaded and checked, its evaluation compiled."""
  run = runs.load_run(workdir, o.step)
  tasks.check_mode(run.config, 'compress')
  per_layer = check_options(o, run.variables['params'])
  out = common.output_dir(workdir, o.out)
  _check_same_options(out, o)
  test = run.test_split()
  mesh = distributed.mesh()
  source, eval_step = tasks.get(run.config).evaluation(run.config, test, run.model,
                                                       run.preprocess, mesh, run.convolutions)

  def accuracy(variables: dict) -> float:
    return steps.evaluate(eval_step, distributed.replicate_tree(variables, mesh),
                          source)['accuracy']

  total_params = summary.count_params(run.variables['params'])
  n_train = run.dataset.get('num_train') or len(
      datasets.load_split(run.config.dataset, 'train').labels)
  layers = prune.kernels(run.variables['params'])
  rows: list[dict] = []

  def row(stage: str, variables: dict, path: str, nbytes: int, acc: float, t0: float,
          kept: int | None = None, **extra) -> dict:
    """One `stages` row; `kept` defaults to the parameters not pruned to zero."""
    flat = prune.flatten(variables['params'])
    if kept is None:
      kept = total_params - sum(int(np.size(flat[n]) - np.count_nonzero(np.asarray(flat[n])))
                                for n in layers)
    r = {'stage': stage, 'params_kept': kept, 'bits_per_weight': round(8 * nbytes / kept, 3),
         'bytes': nbytes, 'compression_ratio': round(rows[0]['bytes'] / nbytes, 2) if rows else 1.0,
         'test_accuracy': acc, 'file': os.path.relpath(path, workdir),
         'seconds': round(time.time() - t0, 1), **extra}
    rows.append(r)
    logging.info('compress: %s: %s bytes (%.1fx), %s params kept, %.2f%% test accuracy', stage,
                 f'{nbytes:,}', r['compression_ratio'], f'{kept:,}', 100 * acc)
    return r

  base = {'params': run.variables['params'], 'batch_stats': run.variables['batch_stats']}
  masks = {n: np.ones(np.shape(v), bool) for n, v in prune.flatten(base['params']).items()
           if n in layers}
  return Context(workdir=workdir, run=run, o=o, per_layer=per_layer, out=out, test=test,
                 accuracy=accuracy, total_params=total_params, n_train=n_train, layers=layers,
                 rows=rows, row=row, base=base, current=base, masks=masks)


def run_compress(workdir: str, o: Options) -> dict:
  """`--mode=compress`: fp32, then the weight stages of `o.stages` in order, then int8."""
  progress = util.Progress('compress', {'fp32': STAGE_SHARES['fp32'], **{
      s: STAGE_SHARES[s] for s in o.stages}})
  ctx = context(workdir, o)
  progress.part('fp32')
  _fp32(ctx)
  for name, stage in STAGE_FUNCTIONS:
    if name in o.stages:
      progress.part(name)  # a retraining stage logs its own steps and ETA (train/loop.py)
      stage(ctx)
  layer_rows = _layer_rows(ctx.current, ctx.masks, ctx.per_layer, ctx.layers)
  if 'int8' in o.stages:
    progress.part('int8')
    _int8_stage(ctx)
  run, rows, out, int8_info = ctx.run, ctx.rows, ctx.out, ctx.int8_info
  results = {'workdir': os.path.abspath(workdir), 'step': run.step,
             'model': run.config.model.name, 'num_params': ctx.total_params,
             'stages': rows, 'layers': layer_rows, 'int8': int8_info,
             'options': dataclasses.asdict(o),
             'per_layer_settings': ctx.per_layer}
  _plot(rows, os.path.join(out, 'compression.png'), run.config.model.name)
  common.stamp(results, progress)
  common.write_outputs(out, results, rows, title=f'Compression of {workdir} '
                       f'({run.config.model.name}, step {run.step})', columns=STAGE_COLUMNS)
  with open(os.path.join(out, 'results.md'), 'a') as f:
    f.write('\n## Layers (after the last weight stage)\n\n')
    f.write(common.markdown_table(layer_rows))
    if int8_info:
      f.write('\n## int8 inference (CPU, images/s, best of 5)\n\n')
      rows_speed = [{'xla_flags': 'main.py (YNNPACK fusions)', **int8_info['speed']}]
      if int8_info['speed_xla_default_flags']:
        rows_speed.append({'xla_flags': 'XLA defaults', **int8_info['speed_xla_default_flags']})
      f.write(common.markdown_table(rows_speed))
  return results


def _check_same_options(out: str, o: Options) -> None:
  """Finished stages are reused when the mode runs again, so a folder holding a compression
  with other settings is refused rather than silently mixed with this one."""
  path = os.path.join(out, 'options.json')
  mine = {k: v for k, v in dataclasses.asdict(o).items() if k not in ('stages', 'calibration')}
  mine = json.loads(json.dumps(mine))
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    diff = sorted(k for k in set(old) | set(mine) if old.get(k) != mine.get(k))
    if diff:
      raise UserError(f'{out} holds a compression with other settings ({", ".join(diff)}); pass '
                      'the same flags to resume it, or --compress_out=NAME for a new one')
  util.write_json(path, mine)


def _layer_rows(variables, masks, per_layer, layers) -> list[dict]:
  flat = prune.flatten(variables['params'])
  rows = []
  for n, k in layers.items():
    v = np.asarray(flat[n])
    kept = int(np.count_nonzero(v))
    rows.append({'layer': n, 'kind': k, 'shape': 'x'.join(map(str, v.shape)), 'weights': v.size,
                 'kept': kept, 'kept_fraction': round(kept / v.size, 4),
                 'distinct_values': int(np.unique(v[v != 0]).size),
                 'bits': per_layer['bits'][n], 'index_bits': per_layer['index_bits'][n]})
  return rows


def _int8(run, base: dict, out: str, calibration: int, test) -> tuple[dict, int]:
  """qwix int8 post-training quantization of the fp32 run; accuracy and CPU inference speed
  side by side with fp32 (the run's own convolutions and XLA's)."""
  plain = models.create(run.config.model, run.info.num_classes, run.config.dtype)
  train = datasets.load_split(run.config.dataset, 'train')
  calib = run.preprocess(jnp.asarray(train.images[:calibration]))
  qmodel, qvars = int8.ptq(plain, base, calib)
  nbytes = int8.save(os.path.join(out, 'int8.npz'), qvars)
  q_fn, f_fn = int8.apply_fn(qmodel, run.preprocess), int8.apply_fn(plain, run.preprocess)

  def acc(fn, v):
    hits = 0
    for i in range(0, len(test.labels), 1000):
      pred = np.asarray(fn(v, jnp.asarray(test.images[i:i + 1000]))).argmax(-1)
      hits += int((pred == test.labels[i:i + 1000]).sum())
    return hits / len(test.labels)

  speed = int8.speeds(run, base, f_fn, q_fn, qvars, test.images[:1000])
  speed_default = int8.speeds_default_flags(run.workdir, run.step, calibration, 1000)
  info = {'fp32_accuracy': acc(f_fn, base), 'int8_accuracy': acc(q_fn, qvars),
          'calibration_images': int(calib.shape[0]), 'bytes': nbytes,
          'weights': 'int8 per output channel (absmax)',
          'activations': 'int8 per tensor, static scales from calibration (absmax)',
          'speed': speed,                     # this process: main.py's XLA flags
          'speed_xla_default_flags': speed_default}  # a fresh process, XLA's default flags
  return info, nbytes


def _plot(rows: list[dict], path: str, name: str) -> None:
  plt = common.pyplot()
  fig, ax = plt.subplots(figsize=(6, 4))
  chain = [r for r in rows if r['stage'] != 'int8']  # the Deep Compression stages, in order
  ax.plot([r['bytes'] / 1024 for r in chain], [100 * r['test_accuracy'] for r in chain], '-',
          color='0.7', zorder=1)
  for i, r in enumerate(rows):
    ax.plot(r['bytes'] / 1024, 100 * r['test_accuracy'], 'o', zorder=2)
    ax.annotate(f"{r['stage']} ({r['compression_ratio']:.1f}x)",
                (r['bytes'] / 1024, 100 * r['test_accuracy']), textcoords='offset points',
                xytext=(6, 6 if i % 2 else -12), fontsize=8)
  ax.set(xscale='log', xlabel='file size (KiB, log)', ylabel='test accuracy (%)',
         title=f'{name}: size vs accuracy')
  ax.grid(alpha=0.3)
  common.save_figure(fig, path)
