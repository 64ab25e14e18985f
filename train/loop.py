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
import time
from typing import Any

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging

import lifecycle
import models
import util
from data import augment, datasets, sources, streaming
from errors import NonFiniteLossError, UserError
from kernels import convolutions as convolutions_lib
from kernels import runtime
from models import summary
from store import checkpoints, runs
from train import diagnostics, distributed, evaluators, optim, steps, tasks, transfer

# Settings that may change when an existing run is resumed (extend it, change cadence).
RESUMABLE_CHANGES = ('num_epochs', 'num_train_steps', 'log_every_steps', 'eval_every_epochs',
                     'checkpoint_every_steps', 'keep_checkpoints', 'eval_batch_size', 'conv_impl',
                     'conv_algorithm', 'dataset.prefetch_batches', 'diagnostics.enabled',
                     'diagnostics.every_steps')


# ----------------------------------------------------------------------------- validation


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
  diagnostics.check(config)
  n_dev = jax.device_count()
  if config.batch_size % n_dev:
    raise UserError(f'batch_size {config.batch_size} is not divisible by the {n_dev} devices; '
                    f'use a multiple of {n_dev}')
  convolutions_lib.select(config.conv_impl, config.conv_algorithm)
  info = datasets.info(config.dataset)
  augment.check(config.augment, info.shape[-1])
  models.create(config.model, info.num_classes, steps.DTYPES[config.dtype])  # resolves every knob
  tasks.get(config).check(config, info)  # labels, objective, teacher
  transfer.check(config, info)
  optim.check(config)
  if need_data:
    datasets.resolve_source(config.dataset)  # missing data fails here, with what to install
    datasets.pipeline(config.dataset, info)
  util.check_workdir(workdir)
  if need_data:
    if distributed.is_main_process():  # one writer per workdir: a second run is refused here
      lifecycle.hold(workdir, 'train')
    checkpoints.check_resumable(config, workdir, RESUMABLE_CHANGES)
  return info


# ----------------------------------------------------------------------------- setup


@dataclasses.dataclass
class Experiment:
  """Everything a run's steps need, built once by `setup`."""
  config: ml_collections.ConfigDict
  info: datasets.DatasetInfo
  task: Any           # train/tasks.py: metrics, evaluators, results fields
  objective: Any      # train/objectives/: what the step minimizes
  mesh: Any
  model: Any
  tx: Any
  train_source: Any
  preprocess: augment.Preprocess
  convolutions: convolutions_lib.Convolutions
  state: steps.TrainState
  step_key: jax.Array
  train_step: Any
  step_args: tuple    # extra arguments of every train step (the objective's)
  evaluators: list    # run in order at every evaluation (train/evaluators.py)
  steps_per_epoch: int
  total_steps: int
  num_params: int
  factors: dict       # learning-rate factor of every layer (0 = frozen)
  init_record: Any    # results.json's init_from (None when training from scratch)
  layers: list        # top-level layers in forward order (the head last)
  diagnostics_step: Any  # jitted per-layer statistics (None when config.diagnostics is off)


def setup(config, train, test, info: datasets.DatasetInfo,
          preprocess: augment.Preprocess, total_steps: int | None = None,
          wrap_tx=None, init_variables: dict | None = None, init_run=None) -> Experiment:
  """Mesh, data sources, model, optimizer, initial state and the jitted steps of a run.

  `train` and `test` are Splits in memory or datasets.Examples (test may be None);
  `wrap_tx(tx)` replaces the run's optimizer by a wrapper of it (compress/: pruning masks,
  shared weights); `init_variables` starts from given weights instead of the initializers;
  `init_run` (a runs.Run) is the run `init_from` names."""
  task = tasks.get(config)
  objective = task.objective(config, info)
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
  model = runs.build(config, info.num_classes, steps.DTYPES[config.dtype], convolutions=convs,
                     quantize_aware=config.int8_qat)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jax.numpy.zeros(
      (1, *info.shape)), train=False))
  order = summary.layer_order(model, shapes, info.shape)
  init_record = None
  if init_run is not None and init_variables is None:
    this = datasets.identity(config.dataset, info, len(train), len(test) if test else 0)
    init_variables, init_record = transfer.initial_variables(config, model, info.shape,
                                                             init_key, init_run, this, order)
  factors = transfer.layer_factors(config, order)
  tx = optim.create(config, spe, total, *transfer.optimizer_groups(factors))
  if wrap_tx is not None:
    tx = wrap_tx(tx)
  state = steps.create_train_state(model, tx, info.shape, init_key, rep,
                                   ema=config.ema_decay > 0, variables=init_variables)
  frozen = [n for n, v in factors.items() if v == 0]
  keep_stats = (transfer.stats_mask(frozen, state.batch_stats)
                if frozen and config.finetune.freeze_batch_stats else None)
  train_step = steps.make_train_step(model, tx, config, train_source, preprocess, mesh, task,
                                     objective, convs.compiler_options(), keep_stats=keep_stats)
  diagnostics_step = (diagnostics.make_diagnostics_step(
      steps.make_step_core(model, tx, config, train_source, preprocess, objective, task), model,
      order,
      mesh, convs.compiler_options()) if config.diagnostics.enabled else None)
  evaluator_list = (task.evaluators(config, test, model, preprocess, mesh, convs, init_run)
                    if test else [])
  return Experiment(config=config, info=info, task=task, objective=objective, mesh=mesh,
                    model=model, tx=tx, train_source=train_source, preprocess=preprocess,
                    convolutions=convs, state=state, step_key=step_key, train_step=train_step,
                    step_args=objective.step_args(mesh), evaluators=evaluator_list,
                    steps_per_epoch=spe, total_steps=total,
                    num_params=summary.count_params(state.params), factors=factors,
                    init_record=init_record, layers=order, diagnostics_step=diagnostics_step)


def restore(exp: Experiment, mngr: ocp.CheckpointManager, meta: dict) -> dict:
  """Loads the newest usable checkpoint into `exp.state`, if there is one (unreadable ones and
  ones failing their checksums are set aside, store.checkpoints.restore_newest); returns its
  meta."""
  iterator = exp.train_source.iterator

  def read(step: int):
    items = {'state': ocp.args.StandardRestore(exp.state), 'meta': ocp.args.JsonRestore()}
    if iterator is not None:  # the streaming pipeline's position, saved with the state
      items['data'] = grain.checkpoint.CheckpointRestore(iterator)
    restored = mngr.restore(step, args=ocp.args.Composite(**items))
    checkpoints.verify(restored.state, restored.meta)
    return restored

  step, restored = checkpoints.restore_newest(str(mngr.directory), mngr.all_steps(), read,
                                              mngr)
  if step is None:
    return meta
  exp.state = restored.state
  if iterator is not None:
    exp.train_source.restored(int(exp.state.step))
  logging.info('Resumed from %s at step %d.', mngr.directory, int(exp.state.step))
  return {**meta, **restored.meta}


# ----------------------------------------------------------------------------- the run


class Session:
  """The mutable side of one training process: checkpoints, timers, logs."""

  def __init__(self, exp: Experiment, workdir: str, meta: dict, mngr, writer, t_start: float,
               stop: lifecycle.StopRequest):
    self.exp, self.workdir, self.meta, self.mngr, self.writer = exp, workdir, meta, mngr, writer
    self.stop = stop
    self.saved_step = mngr.latest_step()
    self.stopping = False
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

  def should_stop(self, synced: bool) -> bool:
    """Whether a stop signal asks to end now. One process checks after every step; several
    agree at the steps where they already wait for the devices (`synced`: the log steps), so
    they all save the same step."""
    if jax.process_count() == 1:
      self.stopping = self.stop.requested
    elif synced:
      self.stopping = distributed.any_process(self.stop.requested)
    return self.stopping

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
    self.meta['checksums'] = checkpoints.checksums(self.exp.state)
    items = {'state': ocp.args.StandardSave(self.exp.state), 'meta': ocp.args.JsonSave(self.meta)}
    iterator = self.exp.train_source.iterator
    if iterator is not None:
        items['data'] = grain.checkpoint.CheckpointSave(iterator)
    self.mngr.save(step, args=ocp.args.Composite(**items), force=True)
    self.saved_step = step

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
                   100 * self.last_train['accuracy'], lr, rate, util.format_seconds(eta))
      self.writer.write_scalars(step, {'train/loss': self.last_train['loss'],
                                       'train/accuracy': self.last_train['accuracy'],
                                       'train/learning_rate': lr, 'train/images_per_sec': rate})


def train_epoch(session: Session, step: int) -> int:
  """Trains from `step` to the end of its epoch (or of the run); returns the step reached."""
  exp, config = session.exp, session.exp.config
  rep = distributed.replicated(exp.mesh)
  epoch_end = min((step // exp.steps_per_epoch + 1) * exp.steps_per_epoch, exp.total_steps)
  ckpt_every = config.checkpoint_every_steps or exp.steps_per_epoch
  metrics = steps.empty_metrics(exp.task.Metrics, rep)
  t_mark, images = time.time(), 0
  while step < epoch_end:
    inputs = exp.train_source.step_inputs(step)
    if session.diagnostics and session.diagnostics.due(step):  # before the step donates the state
      session.diagnostics.add(step, exp.diagnostics_step(exp.state, inputs, exp.step_key,
                                                     *exp.step_args))
    exp.state, metrics = exp.train_step(exp.state, metrics, inputs, exp.step_key, *exp.step_args)
    step += 1
    if session.first:  # time the compilation separately from steady-state throughput
      jax.block_until_ready(exp.state)
      session.meta['compile_time_s'] = time.time() - t_mark
      t_mark, session.first = time.time(), False
      if session.should_stop(synced=False):
        break
      continue
    images += config.batch_size
    synced = step % config.log_every_steps == 0 or step == epoch_end
    if synced:
      values = {k: float(v) for k, v in metrics.compute().items()}  # waits for the steps
      now = time.time()
      session.log_train(step, values, images, now - t_mark)
      if session.diagnostics:
        session.diagnostics.flush(session.writer)
      t_mark, images = now, 0
      metrics = steps.empty_metrics(exp.task.Metrics, rep)
    if step % ckpt_every == 0 and step != exp.total_steps:
      session.save(step)
      t_mark = time.time()
    if session.should_stop(synced):
      break
  return step


def eval_due(exp: Experiment, step: int) -> bool:
  """Whether `step` ends an epoch whose test evaluation the config asks for."""
  epochs = step // exp.steps_per_epoch
  return step % exp.steps_per_epoch == 0 and epochs % exp.config.eval_every_epochs == 0


def evaluate_now(session: Session, step: int) -> dict[str, float]:
  """Runs every evaluator on the current state and records their fields in the history;
  returns the first evaluator's (the test split's) fields."""
  exp = session.exp
  session.check_finite()
  variables = exp.state.inference_variables()
  measured = [e(variables) for e in exp.evaluators]
  epoch = step / exp.steps_per_epoch
  entry = {'step': step, 'epoch': round(epoch, 3)}
  for m in measured:
    entry.update(m.fields)
  entry.update({f'train_{k}': session.last_train.get(k) for k in exp.task.Metrics.__annotations__})
  entry['time_s'] = round(session.elapsed(), 1)
  session.meta['history'].append(entry)
  if session.writer:
    logging.info('eval  epoch %.2f  %s', epoch, '  '.join(m.text for m in measured))
    session.writer.write_scalars(step, {k: v for m in measured for k, v in m.scalars.items()})
    session.writer.flush()
  return measured[0].fields


def results_dict(session: Session) -> dict:
  """What results.json holds (README "results.json"): the run's own fields, the task's (its
  evaluators' and objective's among them) and fine-tuning's."""
  exp, meta = session.exp, session.meta
  return {
      'num_params': exp.num_params,
      'train_time_s': round(session.elapsed(), 2),
      'images_per_sec': round(meta['train_images'] / max(meta['train_seconds'], 1e-9), 1),
      'compile_time_s': round(meta['compile_time_s'], 2),
      # Host time blocked on the streaming pipeline over training time: an upper bound of the
      # device's input wait (steps run asynchronously while the host waits). 0 in memory.
      'input_wait_fraction': round(session.input_wait() / max(meta['train_seconds'], 1e-9), 4),
      'steps': exp.total_steps,
      'epochs': round(exp.total_steps / exp.steps_per_epoch, 3),
      'num_devices': jax.device_count(),
      'num_processes': jax.process_count(),
      'conv_impl': exp.convolutions.impl,
      'conv_algorithm': exp.convolutions.algorithm,
      'xla_compiler_options': exp.convolutions.compiler_options(),
      'malloc': runtime.malloc(),
      'machine': runtime.machine(),
      'commit': util.source_version(),
      'finished_at': time.strftime('%Y-%m-%d %H:%M:%S %Z'),
      'tcmalloc_release_rate': runtime.tcmalloc_release_rate(),
      'preprocess': meta['run']['preprocess'],
      'dataset': meta['run']['dataset'],
      'evaluated_ema': bool(exp.config.ema_decay),
      **exp.task.results(exp.config, meta['history'], exp.evaluators, exp.objective),
      **transfer.results(exp.config, meta, exp.init_record, exp.factors, exp.state.params),
      'history': meta['history'],
      'diagnostics': meta.get('diagnostics'),
      'train_log': meta['train_log'],  # [step, mean loss, accuracy] over each log interval
      'config': json.loads(exp.config.to_json()),
  }


def plot_curves(results: dict, path: str,
                curve: tuple[str, str] = ('test_accuracy', 'test accuracy (%)')) -> None:
  """`curves.png`: the task's test metric (`curve`: field, axis label) and the train loss per
  epoch, from a results dict."""
  import matplotlib  # heavy (~1 s): loaded only when a figure is drawn
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt
  hist, log = results['history'], results['train_log']
  steps_per_epoch = results['steps'] / results['epochs']
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
  field, label = curve
  ax1.plot([h['epoch'] for h in hist], [100 * h[field] for h in hist], 'o-', label='test')
  if any('source_test_accuracy' in h for h in hist):  # fine-tuning: the source task too
    ax1.plot([h['epoch'] for h in hist], [100 * h['source_test_accuracy'] for h in hist], 's--',
             label='source task (its head)')
    ax1.legend()
  ax1.set(xlabel='epoch', ylabel=label,
          title=f"{results['config']['model']['name']}: {100 * (results[field] or 0):.2f}%"
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
  datasets.Examples (read while training) with statistics of a training sample."""
  if datasets.pipeline(config.dataset, info) == 'memory':
    train = datasets.load_split(config.dataset, 'train')
    return (train, datasets.load_split(config.dataset, 'test'),
            augment.Preprocess.from_images(train.images))
  train = datasets.Examples(config.dataset, info, 'train',
                            augment.resized_crop_setting(config.augment), aug=config.augment)
  return train, datasets.Examples(config.dataset, info, 'test'), train.preprocess()


def stop_here(session: Session, step: int, writer) -> None:
  """A stop signal arrived: the state of `step` is saved (with the streaming position) and
  the run ends with lifecycle.Stopped, whose line says how to resume."""
  if step > 0 and session.saved_step != step:
    session.save(step)
  session.mngr.wait_until_finished()
  session.mngr.close()
  session.exp.train_source.close()
  if writer:
    writer.close()
  where = (f'checkpoint of step {step} saved in {session.mngr.directory}' if step > 0 else
           'nothing to save yet (step 0)')
  by = session.stop.signal_name or 'a signal to another process of the run'
  raise lifecycle.Stopped(f'stopped by {by} at step {step}/'
                          f'{session.exp.total_steps}: {where}; rerun the same command to resume')


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, wrap_tx=None,
                       init_variables: dict | None = None) -> dict:
  """Trains and evaluates `config` in `workdir`, resuming from its latest checkpoint.

  `wrap_tx` and `init_variables` as in `setup` (used by --mode=compress's retraining stages).
  Returns the dict also written to `workdir/results.json`.
  """
  t_start = time.time()
  lock_held = workdir and lifecycle.is_held(workdir)
  try:
    with lifecycle.stop_on_signals() as stop:
      return _train(config, workdir, wrap_tx, init_variables, t_start, stop)
  finally:
    if not lock_held:
      lifecycle.release(workdir)


def _train(config, workdir: str, wrap_tx, init_variables, t_start: float,
           stop: lifecycle.StopRequest) -> dict:
  info = validate(config, workdir)
  main_proc = distributed.is_main_process()
  if main_proc:
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config.to_json(indent=2))
  train, test, preprocess = load_data(config, info)
  init_run = transfer.load_source(config)
  if init_run is not None:  # the loaded filters expect the source run's input scale
    preprocess = init_run.preprocess
  exp = setup(config, train, test, info, preprocess, wrap_tx=wrap_tx,
              init_variables=init_variables, init_run=init_run)
  meta = {'history': [], 'train_log': [], 'train_time_s': 0.0, 'train_images': 0,
          'train_seconds': 0.0, 'compile_time_s': 0.0}
  mngr = checkpoints.manager(workdir, config.keep_checkpoints)
  meta = restore(exp, mngr, meta)
  if exp.init_record is not None and 'init_from' not in meta:  # a new fine-tuning run
    meta['init_from'] = dict(exp.init_record)
    for e in exp.evaluators:
      if isinstance(e, evaluators.SourceTask):
        meta['init_from']['source_test_accuracy_before'] = e.accuracy(
            exp.state.inference_variables())
    logging.info(transfer.summary_line(meta['init_from'], exp.factors))
  # Recorded with every checkpoint, so load_run needs no training data.
  meta['run'] = runs.run_info(preprocess, datasets.identity(
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
  session = Session(exp, workdir, meta, mngr, writer, t_start, stop)
  step = int(exp.state.step)
  # An epoch's checkpoint is written before its evaluation: a run stopped in between resumes
  # without that point of the curve, so it is evaluated again (the same state, the same number).
  if 0 < step < exp.total_steps and eval_due(exp, step) and \
      not any(h['step'] == step for h in meta['history']):
    evaluate_now(session, step)
  results_path = os.path.join(workdir, 'results.json')
  if step >= exp.total_steps and os.path.exists(results_path):
    logging.info('Run already complete at step %d; results in %s', step, results_path)
    mngr.close()
    exp.train_source.close()
    with open(results_path) as f:
      return json.load(f)
  while step < exp.total_steps:
    step = train_epoch(session, step)
    if session.stopping and step < exp.total_steps:  # the last step finishes normally
      break
    if step == exp.total_steps or eval_due(exp, step):
      evaluate_now(session, step)
  if step < exp.total_steps:
    stop_here(session, step, writer)
  if mngr.latest_step() != exp.total_steps:
    session.save(exp.total_steps)
  mngr.wait_until_finished()
  mngr.close()
  exp.train_source.close()
  results = results_dict(session)
  if main_proc:
    util.write_json(results_path, results)
    plot_curves(results, os.path.join(workdir, 'curves.png'), exp.task.curve)
    if test is not None:
      split = test if isinstance(test, datasets.Split) else test.head(6)
      exp.task.write_figures(exp.model, exp.state.inference_variables(), preprocess, split,
                             info.class_names, workdir, config.eval_flip_tta)
    if results['diagnostics']:
      diagnostics.plot(results['diagnostics'], diagnostics.output_path(workdir))
      logging.info(diagnostics.summary_line(results['diagnostics']))
    writer.close()
    logging.info('Done: %s, %s params, %.0f img/s, %s wall time. Results in %s',
                 exp.task.summary(results), f'{exp.num_params:,}',
                 results['images_per_sec'], util.format_seconds(results['train_time_s']), results_path)
  return results
