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

import jax.numpy as jnp
import numpy as np
from absl import logging

import models
import util
from analysis import common
from compress import codec, int8, prune, share
from data import datasets
from errors import UserError
from models import summary
from store import checkpoints, runs
from train import distributed, loop, steps, tasks

STAGES = ('prune', 'share', 'huffman', 'int8')
STAGE_COLUMNS = ('stage', 'params_kept', 'bits_per_weight', 'bytes', 'compression_ratio',
                 'test_accuracy')


@dataclasses.dataclass(frozen=True)
class Options:
  # Defaults are the paper's where it gives one: pruning keeps about a third of conv weights and
  # 8% of fully connected ones (AlexNet conv, LeNet fc), 8-bit conv / 5-bit fc shared weights and
  # relative indices (Han et al. 2016, sections 2-3).
  stages: tuple[str, ...] = STAGES
  sparsity: str = 'conv=0.65,dense=0.92'
  scope: str = 'layer'
  iterations: int = 3
  retrain_epochs: float = 1.0      # per pruning iteration (0 = prune without retraining)
  lr_scale: float = 0.1            # retraining peak learning rate / the run's
  bits: str = 'conv=8,dense=5'
  index_bits: str = 'conv=8,dense=5'
  finetune_epochs: float = 1.0     # centroid fine-tuning (0 = k-means only)
  finetune_lr_scale: float = 0.001  # of the run's learning rate, for the summed centroid gradients
  calibration: int = 1000          # int8: training images for the activation scales
  step: int | None = None
  out: str = 'compress'            # the output folder inside the workdir


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
  if not o.out or os.path.isabs(o.out) or '..' in o.out.split(os.sep):
    raise UserError(f'--compress_out must be a folder name inside the workdir, got {o.out!r}')
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


def run_compress(workdir: str, o: Options) -> dict:
  run = runs.load_run(workdir, o.step)
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

  t0 = time.time()
  base = {'params': run.variables['params'], 'batch_stats': run.variables['batch_stats']}
  fp32_path = os.path.join(out, 'fp32.cnnz')
  row('fp32', base, fp32_path, codec.write(fp32_path, _arrays(base)), accuracy(base), t0)

  current, masks = base, {n: np.ones(np.shape(v), bool) for n, v in
                          prune.flatten(base['params']).items() if n in layers}
  if 'prune' in o.stages:
    t0, train_s = time.time(), 0.0
    for i in range(1, o.iterations + 1):
      target = prune.iteration_sparsity(per_layer['sparsity'], i, o.iterations)
      masks = prune.magnitude_masks(current['params'], target, o.scope, previous=masks)
      start = {'params': prune.apply_masks(current['params'], masks),
               'batch_stats': current['batch_stats']}
      if o.retrain_epochs > 0:
        cfg = stage_config(run.config, o.retrain_epochs, o.lr_scale, n_train)
        current, secs = _retrain(cfg, os.path.join(out, f'prune_{i}'), start,
                                 lambda tx, m=masks: prune.masked(tx, m))
        train_s += secs
      else:
        current = start
    path = os.path.join(out, 'pruned.cnnz')
    nbytes = codec.write(path, _arrays(current), 'sparse', masks=_prefixed(masks),
                         index_bits=_prefixed(per_layer['index_bits']))
    row('pruned', current, path, nbytes, accuracy(current), t0,
        iterations=o.iterations, scope=o.scope, train_time_s=round(train_s, 1))

  if 'share' in o.stages:
    t0, train_s = time.time(), 0.0
    shared_params, centroids, assignments = share.cluster(current['params'], masks,
                                                          per_layer['bits'])
    start = {'params': shared_params, 'batch_stats': current['batch_stats']}
    if o.finetune_epochs > 0:
      cfg = stage_config(run.config, o.finetune_epochs, o.finetune_lr_scale, n_train)
      current, train_s = _retrain(cfg, os.path.join(out, 'share'), start,
                                  lambda tx: share.shared(tx, assignments))
    else:
      current = start
    centroids = share.extract(current['params'], assignments)
    distinct = share.distinct_values(current['params'], layers)
    for n in layers:
      if distinct[n] > 2 ** per_layer['bits'][n]:
        raise RuntimeError(f'{n}: {distinct[n]} distinct values after fine-tuning')
    arrays = _arrays(current)
    kw = dict(masks=_prefixed(masks), index_bits=_prefixed(per_layer['index_bits']),
              centroids=_prefixed(centroids), assignments=_prefixed(assignments))
    path = os.path.join(out, 'quantized.cnnz')
    nbytes = codec.write(path, arrays, 'shared', **kw)
    row('quantized', current, path, nbytes, accuracy(current), t0,
        train_time_s=round(train_s, 1))

    if 'huffman' in o.stages:
      t0 = time.time()
      path = os.path.join(out, 'model.cnnz')
      nbytes = codec.write(path, arrays, 'huffman', meta={
          'workdir': os.path.abspath(workdir), 'step': run.step,
          'model': run.config.model.to_dict()}, **kw)
      decoded, _ = codec.read(path)
      dv = _variables(decoded)
      logits = int8.apply_fn(run.model, run.preprocess)
      probe = jnp.asarray(test.images[:256])
      exact = bool(np.array_equal(logits(dv, probe), logits(current, probe)))
      row('huffman', dv, path, nbytes, accuracy(dv), t0, decoded_logits_equal=exact)
  layer_rows = _layer_rows(current, masks, per_layer, layers)

  int8_info = None
  if 'int8' in o.stages:
    t0 = time.time()
    int8_info, int8_bytes = _int8(run, base, out, o.calibration, test)
    row('int8', base, os.path.join(out, 'int8.npz'), int8_bytes, int8_info['int8_accuracy'], t0,
        kept=total_params, source='fp32')  # every parameter is stored, as int8 or float32

  results = {'workdir': os.path.abspath(workdir), 'step': run.step,
             'model': run.config.model.name, 'num_params': total_params,
             'stages': rows, 'layers': layer_rows, 'int8': int8_info,
             'options': dataclasses.asdict(o),
             'per_layer_settings': per_layer}
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
  _plot(rows, os.path.join(out, 'compression.png'), run.config.model.name)
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
