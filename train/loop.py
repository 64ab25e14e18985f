"""The training system: config -> validated setup -> jitted data-parallel steps -> eval,
checkpoints, TensorBoard, `results.json` and `curves.png`.

`train_and_evaluate` is made of named pieces that other modes reuse: `validate` (every check
that needs no compilation), `setup` (mesh, data sources, model, optimizer, state, steps),
`restore`, `train_epoch`, `evaluate_now`, `finish` (results.json and the curves). The dataset
lives on the devices as uint8 (data/sources.py); the jitted step gathers, augments and
normalizes its own batch, so there is no host work between steps.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging

import models
import util
from data import augment, datasets, sources, streaming
from errors import NonFiniteLossError, UserError
from kernels import convolutions as convolutions_lib
from kernels import runtime
from models import summary
from train import checkpoints, diagnostics, distributed, optim, steps, transfer

# Settings that may change when an existing run is resumed (extend it, change cadence).
RESUMABLE_CHANGES = ('num_epochs', 'num_train_steps', 'log_every_steps', 'eval_every_epochs',
                     'checkpoint_every_steps', 'keep_checkpoints', 'eval_batch_size', 'conv_impl',
                     'conv_algorithm', 'dataset.prefetch_batches', 'diagnostics.enabled',
                     'diagnostics.every_steps')


# ----------------------------------------------------------------------------- validation


def check_workdir(workdir: str) -> None:
  try:
    os.makedirs(workdir, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=workdir, prefix='.write_test'):
      pass
  except OSError as e:
    raise UserError(f'workdir {workdir} is not writable ({e.strerror}); pass a --workdir you can '
                    'write to') from None


def validate(config: ml_collections.ConfigDict, workdir: str,
             need_data: bool = True) -> datasets.DatasetInfo:
  """Every check that needs no compilation: run before anything is traced."""
  if not workdir:
    raise UserError('--workdir is required: the directory for checkpoints and results')
  for key in ('batch_size', 'eval_batch_size', 'log_every_steps', 'eval_every_epochs',
              'keep_checkpoints'):
    if config[key] <= 0:
      raise UserError(f'{key} must be positive, got {config[key]}')
  if config.num_epochs <= 0 and config.num_train_steps <= 0:
    raise UserError('set num_epochs or num_train_steps to a positive value')
  if config.num_epochs < 0 or config.num_train_steps < 0 or config.checkpoint_every_steps < 0:
    raise UserError('num_epochs, num_train_steps and checkpoint_every_steps must be >= 0')
  if config.dtype not in steps.DTYPES:
    raise UserError(f'unknown dtype {config.dtype!r}; use float32 or bfloat16')
  if not 0.0 <= config.ema_decay < 1.0:
    raise UserError(f'ema_decay must be in [0, 1), got {config.ema_decay}')
  if not 0.0 <= config.label_smoothing < 1.0:
    raise UserError(f'label_smoothing must be in [0, 1), got {config.label_smoothing}')
  check_adversarial(config.adversarial)
  diagnostics.check(config)
  n_dev = jax.device_count()
  if config.batch_size % n_dev:
    raise UserError(f'batch_size {config.batch_size} is not divisible by the {n_dev} devices; '
                    f'use a multiple of {n_dev}')
  convolutions_lib.select(config.conv_impl, config.conv_algorithm)
  info = datasets.info(config.dataset)
  augment.check(config.augment, info.shape[-1])
  models.create(config.model, info.num_classes, steps.DTYPES[config.dtype])  # resolves every knob
  from compress import distill
  distill.check(config.distill, info.shape, info.num_classes)
  transfer.check(config, info)
  optim.check(config)
  if need_data:
    datasets.resolve_source(config.dataset)  # missing data fails here, with what to install
    datasets.pipeline(config.dataset, info)
  check_workdir(workdir)
  if need_data:
    check_resumable(config, workdir)
  return info


def check_adversarial(adv) -> None:
  from analysis import attack
  if adv.method not in steps.ADVERSARIAL:
    raise UserError(f'unknown adversarial.method {adv.method!r}; use '
                    f'{" | ".join(steps.ADVERSARIAL)}')
  if adv.method != 'none' and adv.eps <= 0:
    raise UserError(f'adversarial.eps must be positive for {adv.method} training, got {adv.eps}')
  attack.check(adv.eps, adv.norm, steps=adv.steps)
  attack.check(adv.eval_eps, adv.norm, steps=adv.eval_steps)
  if adv.step_size < 0 or adv.trades_beta < 0 or adv.eval_examples < 1:
    raise UserError('adversarial.step_size and trades_beta must be >= 0 and eval_examples '
                    f'positive, got {adv.step_size}, {adv.trades_beta}, {adv.eval_examples}')


def _flat(d: dict, prefix: str = '') -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flat(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


def check_resumable(config, workdir: str) -> None:
  """A workdir holding another experiment's checkpoints is refused, never overwritten."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path) or not os.path.isdir(os.path.join(workdir, 'checkpoints')):
    return
  old = _flat(json.loads(checkpoints.load_config(workdir).to_json()))
  new = _flat(json.loads(config.to_json()))
  diff = sorted(k for k in set(old) | set(new)
                if k not in RESUMABLE_CHANGES and old.get(k) != new.get(k))
  if diff:
    raise UserError(f'workdir {workdir} holds a run with a different config ({", ".join(diff[:5])}); '
                    'use a new --workdir or the same config to resume')


# ----------------------------------------------------------------------------- setup


@dataclasses.dataclass
class Experiment:
  """Everything a run's steps need, built once by `setup`."""
  config: ml_collections.ConfigDict
  info: datasets.DatasetInfo
  mesh: Any
  model: Any
  tx: Any
  train_source: Any
  eval_source: Any
  preprocess: augment.Preprocess
  convolutions: convolutions_lib.Convolutions
  state: steps.TrainState
  step_key: jax.Array
  train_step: Any
  eval_step: Any
  robust_source: Any  # the robust evaluation (None when off)
  robust_step: Any
  step_args: tuple  # extra arguments of every train step: (teacher variables,) when distilling
  teacher: Any      # compress.distill.Teacher or None
  steps_per_epoch: int
  total_steps: int
  num_params: int
  factors: dict       # learning-rate factor of every layer (0 = frozen)
  init_record: Any    # results.json's init_from (None when training from scratch)
  source_task: Any    # transfer.SourceTask when the source task is evaluated, else None
  layers: list        # top-level layers in forward order (the head last)
  diagnostics_step: Any  # jitted per-layer statistics (None when config.diagnostics is off)


def evaluator(config, test, model, preprocess: augment.Preprocess, mesh,
              convs: convolutions_lib.Convolutions):
  """(eval source, jitted eval step) over `test` (a Split in memory, or streaming.Examples), as
  a run evaluates: its eval batch size, flip TTA and compiler options. Shared by training and
  `--mode=eval`."""
  if isinstance(test, datasets.Split):
    source = sources.InMemoryEval(test, config.eval_batch_size, mesh)
  else:
    source = streaming.StreamingEval(test, config.dataset, config.eval_batch_size, mesh)
  return source, steps.make_eval_step(model, source, preprocess, mesh, config.eval_flip_tta,
                                      convs.compiler_options())


def setup(config, train, test, info: datasets.DatasetInfo,
          preprocess: augment.Preprocess, total_steps: int | None = None,
          wrap_tx=None, init_variables: dict | None = None, source=None) -> Experiment:
  """Mesh, data sources, model, optimizer, initial state and the jitted steps of a run.

  `train` and `test` are Splits in memory or streaming.Examples (test may be None);
  `wrap_tx(tx)` replaces the run's optimizer by a wrapper of it (compress/: pruning masks,
  shared weights); `init_variables` starts from given weights instead of the initializers;
  `source` (a checkpoints.Run) is the run `init_from` names."""
  from compress import distill
  teacher = distill.load_teacher(config.distill, info.shape, info.num_classes)
  mesh = distributed.mesh()
  rep = distributed.replicated(mesh)
  batch = config.batch_size
  if len(train) < batch:
    raise UserError(f'batch_size {batch} is larger than the {len(train)} training examples')
  init_key, data_key, step_key = steps.run_keys(config.seed, rep)
  spe = len(train) // batch
  total = total_steps or config.num_train_steps or config.num_epochs * spe
  if isinstance(train, datasets.Split):
    train_source = sources.InMemoryTrain(train, batch, mesh, data_key)
  else:
    train_source = streaming.StreamingTrain(train, config.dataset, batch, total, mesh, config.seed)
  convs = convolutions_lib.select(config.conv_impl, config.conv_algorithm)
  if config.int8_qat:
    from compress import int8
    model = int8.qat_model(models.create(config.model, info.num_classes,
                                         steps.DTYPES[config.dtype]))
  else:
    model = transfer.build(config, info.num_classes, steps.DTYPES[config.dtype],
                           convolutions=convs)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jax.numpy.zeros(
      (1, *info.shape)), train=False))
  order = summary.layer_order(model, shapes, info.shape)
  init_record = None
  if source is not None and init_variables is None:
    this = datasets.identity(config.dataset, info, len(train), len(test) if test else 0)
    init_variables, init_record = transfer.initial_variables(config, model, info.shape,
                                                             init_key, source, this, order)
  factors = transfer.layer_factors(config, order)
  tx = optim.create(config, spe, total, *transfer.optimizer_groups(factors))
  if wrap_tx is not None:
    tx = wrap_tx(tx)
  state = steps.create_train_state(model, tx, info.shape, init_key, rep,
                                   ema=config.ema_decay > 0, variables=init_variables)
  frozen = [n for n, v in factors.items() if v == 0]
  keep_stats = (transfer.stats_mask(frozen, state.batch_stats)
                if frozen and config.finetune.freeze_batch_stats else None)
  train_step = steps.make_train_step(model, tx, config, train_source, preprocess, mesh,
                                     convs.compiler_options(), teacher=teacher,
                                     keep_stats=keep_stats)
  diagnostics_step = (diagnostics.make_diagnostics_step(
      steps.make_step_core(model, tx, config, train_source, preprocess, teacher), model, order,
      mesh, convs.compiler_options()) if config.diagnostics.enabled else None)
  source_task = (transfer.source_task(config, source, preprocess, mesh, convs)
                 if source is not None and config.finetune.eval_source else None)
  eval_source, eval_step = (evaluator(config, test, model, preprocess, mesh, convs) if test
                            else (None, None))
  robust_source = robust_step = None
  if test and steps.robust_eps(config.adversarial):
    n = config.adversarial.eval_examples
    subset = (datasets.Split(test.images[:n], test.labels[:n])
              if isinstance(test, datasets.Split) else test.head(n))
    robust_source = sources.InMemoryEval(subset, config.eval_batch_size, mesh)
    robust_step = steps.make_robust_eval_step(model, robust_source, preprocess, mesh,
                                              config.adversarial, convs.compiler_options())
  return Experiment(config=config, info=info, mesh=mesh, model=model, tx=tx,
                    train_source=train_source, eval_source=eval_source, preprocess=preprocess,
                    convolutions=convs, state=state, step_key=step_key, train_step=train_step,
                    eval_step=eval_step, robust_source=robust_source,
                    robust_step=robust_step, teacher=teacher,
                    step_args=(distributed.replicate_tree(teacher.variables, mesh),)
                    if teacher else (), steps_per_epoch=spe, total_steps=total,
                    num_params=summary.count_params(state.params), factors=factors,
                    init_record=init_record, source_task=source_task, layers=order,
                    diagnostics_step=diagnostics_step)


def restore(exp: Experiment, mngr: ocp.CheckpointManager, meta: dict) -> dict:
  """Loads the latest checkpoint into `exp.state`, if there is one; returns its meta."""
  if mngr.latest_step() is None:
    return meta
  items = {'state': ocp.args.StandardRestore(exp.state), 'meta': ocp.args.JsonRestore()}
  iterator = exp.train_source.iterator
  if iterator is not None:  # the streaming pipeline's position, saved with the state
    import grain
    items['data'] = grain.checkpoint.CheckpointRestore(iterator)
  restored = mngr.restore(mngr.latest_step(), args=ocp.args.Composite(**items))
  exp.state = restored.state
  if iterator is not None:
    exp.train_source.restored(int(exp.state.step))
  logging.info('Resumed from %s at step %d.', mngr.directory, int(exp.state.step))
  return {**meta, **restored.meta}


# ----------------------------------------------------------------------------- the run


def _fmt_time(seconds: float) -> str:
  seconds = int(max(0, seconds))
  return f'{seconds // 3600}h{seconds % 3600 // 60:02d}m' if seconds >= 3600 else \
      f'{seconds // 60}m{seconds % 60:02d}s'


class _Run:
  """The mutable side of one training process: checkpoints, timers, logs."""

  def __init__(self, exp: Experiment, workdir: str, meta: dict, mngr, writer, t_start: float):
    self.exp, self.workdir, self.meta, self.mngr, self.writer = exp, workdir, meta, mngr, writer
    self.t_start, self.time_base = t_start, meta['train_time_s']
    self.wait_base = meta.get('input_wait_s', 0.0)
    self.lr_fn = optim.learning_rate_schedule(exp.config, exp.steps_per_epoch, exp.total_steps)
    self.last_train: dict[str, float] = {}
    self.first = True
    self.diagnostics = (diagnostics.Recorder(exp.config.diagnostics.every_steps, exp.layers,
                                             meta.get('diagnostics'))
                        if exp.diagnostics_step else None)
    if self.diagnostics:
      meta['diagnostics'] = self.diagnostics.history

  def elapsed(self) -> float:
    return self.time_base + time.time() - self.t_start

  def input_wait(self) -> float:
    """Host seconds blocked on the streaming pipeline, over every session of the run."""
    return self.wait_base + self.exp.train_source.wait_s

  def check_finite(self) -> None:
    bad = int(self.exp.state.nonfinite_step)
    if bad >= 0:
      self.mngr.wait_until_finished()  # the last good save lands before the process exits
      self.mngr.close()
      last = self.mngr.latest_step()
      kept = f'the last good checkpoint (step {last}) is kept' if last is not None else \
          'no checkpoint was written yet'
      raise NonFiniteLossError(f'loss became non-finite at step {bad}; {kept} in '
                               f'{self.mngr.directory}; lower the learning rate or check the data')

  def save(self, step: int) -> None:
    self.check_finite()
    if self.diagnostics:  # the checkpoint's metadata carries the series so far
      self.diagnostics.flush(self.writer)
    self.meta['train_time_s'] = self.elapsed()
    self.meta['input_wait_s'] = self.input_wait()
    items = {'state': ocp.args.StandardSave(self.exp.state), 'meta': ocp.args.JsonSave(self.meta)}
    iterator = self.exp.train_source.iterator
    if iterator is not None:
      import grain
      items['data'] = grain.checkpoint.CheckpointSave(iterator)
    self.mngr.save(step, args=ocp.args.Composite(**items), force=True)

  def log_train(self, step: int, values: dict[str, float], images: int, seconds: float) -> None:
    exp = self.exp
    self.last_train = values
    self.meta['train_seconds'] += seconds
    self.meta['train_images'] += images
    rate = images / max(seconds, 1e-9)
    self.check_finite()
    self.meta['train_log'].append([step, self.last_train['loss'], self.last_train['accuracy']])
    if self.writer:
      lr = float(self.lr_fn(step))
      eta = (exp.total_steps - step) * exp.config.batch_size / max(rate, 1e-9)
      logging.info('step %d/%d  epoch %.2f  loss %.4f  acc %.2f%%  lr %.4g  %.0f img/s  ETA %s',
                   step, exp.total_steps, step / exp.steps_per_epoch, self.last_train['loss'],
                   100 * self.last_train['accuracy'], lr, rate, _fmt_time(eta))
      self.writer.write_scalars(step, {'train/loss': self.last_train['loss'],
                                       'train/accuracy': self.last_train['accuracy'],
                                       'train/learning_rate': lr, 'train/images_per_sec': rate})


def train_epoch(run: _Run, step: int) -> int:
  """Trains from `step` to the end of its epoch (or of the run); returns the step reached."""
  exp, config = run.exp, run.exp.config
  rep = distributed.replicated(exp.mesh)
  epoch_end = min((step // exp.steps_per_epoch + 1) * exp.steps_per_epoch, exp.total_steps)
  ckpt_every = config.checkpoint_every_steps or exp.steps_per_epoch
  metrics = steps.empty_metrics(rep)
  t_mark, images = time.time(), 0
  while step < epoch_end:
    inputs = exp.train_source.step_inputs(step)
    if run.diagnostics and run.diagnostics.due(step):  # before the step donates the state
      run.diagnostics.add(step, exp.diagnostics_step(exp.state, inputs, exp.step_key,
                                                     *exp.step_args))
    exp.state, metrics = exp.train_step(exp.state, metrics, inputs, exp.step_key, *exp.step_args)
    step += 1
    if run.first:  # time the compilation separately from steady-state throughput
      jax.block_until_ready(exp.state)
      run.meta['compile_time_s'] = time.time() - t_mark
      t_mark, run.first = time.time(), False
      continue
    images += config.batch_size
    if step % config.log_every_steps == 0 or step == epoch_end:
      values = {k: float(v) for k, v in metrics.compute().items()}  # waits for the steps
      now = time.time()
      run.log_train(step, values, images, now - t_mark)
      if run.diagnostics:
        run.diagnostics.flush(run.writer)
      t_mark, images = now, 0
      metrics = steps.empty_metrics(rep)
    if step % ckpt_every == 0 and step != exp.total_steps:
      run.save(step)
      t_mark = time.time()
  return step


def eval_due(exp: Experiment, step: int) -> bool:
  """Whether `step` ends an epoch whose test evaluation the config asks for."""
  epochs = step // exp.steps_per_epoch
  return step % exp.steps_per_epoch == 0 and epochs % exp.config.eval_every_epochs == 0


def evaluate_now(run: _Run, step: int) -> dict[str, float]:
  """Evaluates the current state on the test split and records it in the history."""
  exp = run.exp
  run.check_finite()
  ev = steps.evaluate(exp.eval_step, exp.state.inference_variables(), exp.eval_source)
  epoch = step / exp.steps_per_epoch
  entry = {'step': step, 'epoch': round(epoch, 3), 'test_accuracy': ev['accuracy'],
           'test_loss': ev['loss'], 'train_loss': run.last_train.get('loss'),
           'train_accuracy': run.last_train.get('accuracy'), 'time_s': round(run.elapsed(), 1)}
  scalars = {'test/loss': ev['loss'], 'test/accuracy': ev['accuracy']}
  robust = ''
  if exp.robust_step:
    rv = steps.evaluate(exp.robust_step, exp.state.inference_variables(), exp.robust_source)
    entry['test_robust_accuracy'] = rv['accuracy']
    scalars['test/robust_accuracy'] = rv['accuracy']
    robust = f'  robust acc {100 * rv["accuracy"]:.2f}% (PGD, first {exp.robust_source.num_examples})'
  if exp.source_task:
    sv = evaluate_source(exp)
    entry['source_test_accuracy'] = sv['accuracy']
    scalars['source/accuracy'] = sv['accuracy']
    robust += f'  source task acc {100 * sv["accuracy"]:.2f}%'
  run.meta['history'].append(entry)
  if run.writer:
    logging.info('eval  epoch %.2f  test loss %.4f  test acc %.2f%%%s', epoch, ev['loss'],
                 100 * ev['accuracy'], robust)
    run.writer.write_scalars(step, scalars)
    run.writer.flush()
  return ev


def evaluate_source(exp: Experiment) -> dict[str, float]:
  """The current network on the source run's task, through the source run's head."""
  t = exp.source_task
  variables = transfer.source_variables(exp.config, exp.state.inference_variables(), t)
  return steps.evaluate(t.eval_step, variables, t.eval_source)


def finetune_record(run: _Run) -> dict | None:
  """results.json's `init_from`: the source, what was loaded and re-initialized, and the
  source task's accuracy before and after (when evaluated)."""
  exp = run.exp
  if exp.init_record is None and 'init_from' not in run.meta:
    return None
  record = dict(run.meta.get('init_from') or exp.init_record)
  hist = [h['source_test_accuracy'] for h in run.meta['history'] if 'source_test_accuracy' in h]
  if hist:
    record['source_test_accuracy'] = hist[-1]
    record['forgetting'] = record['source_test_accuracy_before'] - hist[-1]
  return record


def results_dict(run: _Run) -> dict:
  """What results.json holds (README "results.json")."""
  exp, meta = run.exp, run.meta
  history = meta['history']
  accs = [h['test_accuracy'] for h in history]
  return {
      'num_params': exp.num_params,
      'test_accuracy': accs[-1] if accs else None,
      'best_test_accuracy': max(accs) if accs else None,
      'test_loss': history[-1]['test_loss'] if history else None,
      'train_time_s': round(run.elapsed(), 2),
      'images_per_sec': round(meta['train_images'] / max(meta['train_seconds'], 1e-9), 1),
      'compile_time_s': round(meta['compile_time_s'], 2),
      # Host time blocked on the streaming pipeline over training time: an upper bound of the
      # device's input wait (steps run asynchronously while the host waits). 0 in memory.
      'input_wait_fraction': round(run.input_wait() / max(meta['train_seconds'], 1e-9), 4),
      'steps': exp.total_steps,
      'epochs': round(exp.total_steps / exp.steps_per_epoch, 3),
      'num_devices': jax.device_count(),
      'num_processes': jax.process_count(),
      'conv_impl': exp.convolutions.impl,
      'conv_algorithm': exp.convolutions.algorithm,
      'xla_compiler_options': exp.convolutions.compiler_options(),
      'malloc': runtime.malloc(),
      'tcmalloc_release_rate': runtime.tcmalloc_release_rate(),
      'preprocess': meta['run']['preprocess'],
      'dataset': meta['run']['dataset'],
      'evaluated_ema': bool(exp.config.ema_decay),
      'robust_accuracy': history[-1].get('test_robust_accuracy') if history else None,
      'robust_eval': robust_eval(exp),
      'distill': {'teacher': exp.teacher.workdir, 'teacher_step': exp.teacher.step,
                  'teacher_params': exp.teacher.num_params,
                  'temperature': exp.config.distill.temperature,
                  'weight': exp.config.distill.weight} if exp.teacher else None,
      'int8_qat': bool(exp.config.int8_qat),
      'init_from': finetune_record(run),
      'finetune': {'frozen': [n for n, v in exp.factors.items() if v == 0],
                   'lr_multipliers': {n: v for n, v in exp.factors.items() if v not in (0, 1)},
                   'trainable_params': transfer.num_trainable(exp.state.params, exp.factors),
                   'freeze_batch_stats': bool(exp.config.finetune.freeze_batch_stats),
                   'progressive': bool(exp.config.finetune.progressive)},
      'history': history,
      'diagnostics': meta.get('diagnostics'),
      'train_log': meta['train_log'],  # [step, mean loss, accuracy] over each log interval
      'config': json.loads(exp.config.to_json()),
  }


def robust_eval(exp: Experiment) -> dict | None:
  """How `robust_accuracy` was measured (None when the run has no robust evaluation)."""
  if not exp.robust_step:
    return None
  adv = exp.config.adversarial
  return {'attack': 'pgd', 'norm': adv.norm, 'eps': steps.robust_eps(adv),
          'steps': adv.eval_steps, 'restarts': 1, 'num_examples': exp.robust_source.num_examples,
          'trained_with': adv.method}


def plot_curves(results: dict, path: str) -> None:
  """`curves.png`: test accuracy and train loss per epoch, from a results dict."""
  import matplotlib
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt
  hist, log = results['history'], results['train_log']
  steps_per_epoch = results['steps'] / results['epochs']
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
  ax1.plot([h['epoch'] for h in hist], [100 * h['test_accuracy'] for h in hist], 'o-',
           label='test')
  if any('source_test_accuracy' in h for h in hist):  # fine-tuning: the source task too
    ax1.plot([h['epoch'] for h in hist], [100 * h['source_test_accuracy'] for h in hist], 's--',
             label='source task (its head)')
    ax1.legend()
  ax1.set(xlabel='epoch', ylabel='test accuracy (%)',
          title=f"{results['config']['model']['name']}: {100 * (results['test_accuracy'] or 0):.2f}%"
                f" in {results['train_time_s'] / 60:.1f} min")
  ax1.grid(alpha=0.3)
  ax2.plot([s / steps_per_epoch for s, _, _ in log], [l for _, l, _ in log])
  ax2.set(xlabel='epoch', ylabel='training loss', title='training loss (per log interval)')
  ax2.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def load_data(config, info: datasets.DatasetInfo):
  """(train, test, preprocess) of a run: Splits in host memory, or for the streaming pipeline
  streaming.Examples (read while training) with statistics of a training sample."""
  if datasets.pipeline(config.dataset, info) == 'memory':
    train = datasets.load_split(config.dataset, 'train')
    return (train, datasets.load_split(config.dataset, 'test'),
            augment.Preprocess.from_images(train.images))
  train = streaming.Examples(config.dataset, info, 'train', augment.resized_crop_setting(config.augment))
  return train, streaming.Examples(config.dataset, info, 'test'), train.preprocess()


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, wrap_tx=None,
                       init_variables: dict | None = None) -> dict:
  """Trains and evaluates `config` in `workdir`, resuming from its latest checkpoint.

  `wrap_tx` and `init_variables` as in `setup` (used by --mode=compress's retraining stages).
  Returns the dict also written to `workdir/results.json`.
  """
  t_start = time.time()
  info = validate(config, workdir)
  main_proc = distributed.is_main_process()
  if main_proc:
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config.to_json(indent=2))
  train, test, preprocess = load_data(config, info)
  source = transfer.load_source(config)
  if source is not None:  # the loaded filters expect the source's input scale
    preprocess = source.preprocess
  exp = setup(config, train, test, info, preprocess, wrap_tx=wrap_tx,
              init_variables=init_variables, source=source)
  meta = {'history': [], 'train_log': [], 'train_time_s': 0.0, 'train_images': 0,
          'train_seconds': 0.0, 'compile_time_s': 0.0}
  mngr = checkpoints.manager(workdir, config.keep_checkpoints)
  meta = restore(exp, mngr, meta)
  if exp.init_record is not None and 'init_from' not in meta:  # a new fine-tuning run
    meta['init_from'] = dict(exp.init_record)
    if exp.source_task:
      meta['init_from']['source_test_accuracy_before'] = evaluate_source(exp)['accuracy']
    logging.info(transfer.summary_line(meta['init_from'], exp.factors))
  # Recorded with every checkpoint, so load_run needs no training data.
  meta['run'] = checkpoints.run_info(preprocess, datasets.identity(
      config.dataset, info, len(train), len(test)))

  writer = None
  if main_proc:
    from clu import metric_writers  # imports TensorFlow; only the writing process needs it
    writer = metric_writers.SummaryWriter(os.path.join(workdir, 'tensorboard'))
    logging.info('Model %s: %s parameters. Data %s: %d train / %d test, %d steps/epoch, '
                 '%d steps, %d devices, %s convolutions, %s malloc, %s data.', config.model.name,
                 f'{exp.num_params:,}', info.name, len(train), len(test),
                 exp.steps_per_epoch, exp.total_steps, jax.device_count(),
                 exp.convolutions.impl, runtime.malloc(), type(exp.train_source).__name__)
  run = _Run(exp, workdir, meta, mngr, writer, t_start)
  step = int(exp.state.step)
  # An epoch's checkpoint is written before its evaluation: a run stopped in between resumes
  # without that point of the curve, so it is evaluated again (the same state, the same number).
  if 0 < step < exp.total_steps and eval_due(exp, step) and \
      not any(h['step'] == step for h in meta['history']):
    evaluate_now(run, step)
  results_path = os.path.join(workdir, 'results.json')
  if step >= exp.total_steps and os.path.exists(results_path):
    logging.info('Run already complete at step %d; results in %s', step, results_path)
    mngr.close()
    exp.train_source.close()
    with open(results_path) as f:
      return json.load(f)
  while step < exp.total_steps:
    step = train_epoch(run, step)
    if step == exp.total_steps or eval_due(exp, step):
      evaluate_now(run, step)
  if mngr.latest_step() != exp.total_steps:
    run.save(exp.total_steps)
  mngr.wait_until_finished()
  mngr.close()
  exp.train_source.close()
  results = results_dict(run)
  if main_proc:
    util.write_json(results_path, results)
    plot_curves(results, os.path.join(workdir, 'curves.png'))
    if results['diagnostics']:
      diagnostics.plot(results['diagnostics'], diagnostics.output_path(workdir))
      logging.info(diagnostics.summary_line(results['diagnostics']))
    writer.close()
    logging.info('Done: test accuracy %.2f%% (best %.2f%%), %s params, %.0f img/s, %s wall time. '
                 'Results in %s', 100 * (results['test_accuracy'] or 0),
                 100 * (results['best_test_accuracy'] or 0), f'{exp.num_params:,}',
                 results['images_per_sec'], _fmt_time(results['train_time_s']), results_path)
  return results
