"""The training system: config -> validated setup -> jitted data-parallel steps -> eval,
checkpoints, TensorBoard and `results.json`.

Design notes (details in README.md):
* The dataset lives on the devices as uint8 (one copy per device). Each epoch gets a
  permutation from `fold_in(seed, epoch)`; the jitted step slices its batch out of it, shards it
  over the 'data' mesh axis, augments and normalizes it. No host work between steps.
* Randomness of step s is `fold_in(seed, s)`, so a resumed run sees exactly the randomness of an
  uninterrupted one, and the result does not depend on the number of devices.
* A non-finite loss or gradient freezes the state inside the step and records the step number;
  the host checks it at every log/eval/checkpoint point, so no bad state is ever saved and no
  per-step host sync is needed.
"""


import json
import os
import tempfile
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from clu import metrics as clu_metrics

import models
from configs import default as default_config
from models import summary
from data import augment as augment_lib
from data import datasets
from errors import NonFiniteLossError, UserError
from kernels import onednn
from train import distributed, optim

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
# Settings that may change when an existing run is resumed (extend it, change cadence).
RESUMABLE_CHANGES = ('num_epochs', 'num_train_steps', 'log_every_steps', 'eval_every_epochs',
                     'checkpoint_every_steps', 'keep_checkpoints', 'eval_batch_size', 'conv_impl',
                     'conv_algorithm')


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  nonfinite_step: jax.Array  # -1 while every loss and gradient has been finite
  ema_params: Any  # exponential moving average of params ({} when config.ema_decay == 0)


@flax.struct.dataclass
class TrainMetrics(clu_metrics.Collection):
  loss: clu_metrics.Average.from_output('loss')
  accuracy: clu_metrics.Accuracy


@flax.struct.dataclass
class EvalMetrics(clu_metrics.Collection):
  loss: clu_metrics.Average.from_output('loss')
  accuracy: clu_metrics.Accuracy


# ----------------------------------------------------------------------------- validation


def malloc() -> str:
  """The process's allocator: 'tcmalloc' when main.py preloaded it, else 'system'."""
  return 'tcmalloc' if 'tcmalloc' in os.environ.get('LD_PRELOAD', '') else 'system'


def tcmalloc_release_rate() -> str | None:
  """TCMALLOC_RELEASE_RATE under tcmalloc (main.py sets '0': freed memory stays mapped)."""
  return os.environ.get('TCMALLOC_RELEASE_RATE') if malloc() == 'tcmalloc' else None


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
  if config.dtype not in DTYPES:
    raise UserError(f'unknown dtype {config.dtype!r}; use float32 or bfloat16')
  if not 0.0 <= config.ema_decay < 1.0:
    raise UserError(f'ema_decay must be in [0, 1), got {config.ema_decay}')
  if not 0.0 <= config.label_smoothing < 1.0:
    raise UserError(f'label_smoothing must be in [0, 1), got {config.label_smoothing}')
  for key in ('crop_padding', 'cutout'):
    if config.augment[key] < 0:
      raise UserError(f'augment.{key} must be >= 0 (0 = off), got {config.augment[key]}')
  n_dev = jax.device_count()
  if config.batch_size % n_dev:
    raise UserError(f'batch_size {config.batch_size} is not divisible by the {n_dev} devices; '
                    f'use a multiple of {n_dev}')
  onednn.select(config.conv_impl, config.conv_algorithm)
  info = datasets.info(config.dataset)
  models.create(config.model, info.num_classes, DTYPES[config.dtype])  # resolves every knob
  optim.check(config)
  if need_data:
    datasets.resolve_source(config.dataset)  # missing data fails here, with what to install
  check_workdir(workdir)
  if need_data:
    check_resumable(config, workdir)
  return info


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
  with open(path) as f:
    old = _flat(json.load(f))
  new = _flat(json.loads(config.to_json()))
  # A key the run's config.json lacks was added to the code since; at its default value
  # (which keeps the old behaviour) it is no difference.
  defaults = _flat(json.loads(default_config.get_config().to_json()))
  diff = sorted(k for k in set(old) | set(new)
                if k not in RESUMABLE_CHANGES and old.get(k, defaults.get(k)) != new.get(k))
  if diff:
    raise UserError(f'workdir {workdir} holds a run with a different config ({", ".join(diff[:5])}); '
                    'use a new --workdir or the same config to resume')


# ----------------------------------------------------------------------------- steps


def create_train_state(model, tx, example_shape, key: jax.Array, sharding,
                       ema: bool = False) -> TrainState:
  """Initial state, created directly with the given (replicated) sharding."""

  def init():
    dummy = jnp.zeros((1, *example_shape), jnp.float32)
    variables = model.init({'params': key, 'dropout': key}, dummy, train=False)
    params = variables['params']
    return TrainState(step=jnp.int32(0), params=params,
                      batch_stats=variables.get('batch_stats', {}),
                      opt_state=tx.init(params), nonfinite_step=jnp.int32(-1),
                      ema_params=params if ema else {})

  return jax.jit(init, out_shardings=sharding)()


def run_keys(seed: int, sharding) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(init key, data-order key, step key data) of a run. The step key travels as raw uint32
  data placed once on the devices, so the step takes it as an argument (runs differing only
  in seed share one executable) without a host-to-device copy per step."""
  init_key, data_key, step_key = jax.random.split(jax.random.key(seed), 3)
  return init_key, data_key, distributed.put_replicated(
      np.asarray(jax.random.key_data(step_key)), sharding)


def make_train_step(model, tx, config, steps_per_epoch: int, mesh):
  """The jitted step; its randomness key is an argument, so runs that differ only in seed
  share one compiled (and persistently cached) executable."""
  batch = config.batch_size
  rep, shard = distributed.replicated(mesh), distributed.batch_sharded(mesh)
  aug = config.augment

  def step(state: TrainState, metrics: TrainMetrics, images, labels, perm, mean, std, key_data):
    # The key arrives as raw uint32 data (see run_keys).
    key = jax.random.fold_in(jax.random.wrap_key_data(key_data), state.step)
    k_aug, k_drop = jax.random.split(key)
    start = (state.step % steps_per_epoch) * batch
    idx = jax.lax.with_sharding_constraint(jax.lax.dynamic_slice(perm, (start,), (batch,)), shard)
    x = augment_lib.augment(k_aug, images[idx], aug.crop_padding, aug.flip)
    x = augment_lib.normalize(x, mean, std)
    x = augment_lib.cutout(jax.random.fold_in(k_aug, 1), x, aug.cutout)
    y = labels[idx]

    def loss_fn(params):
      logits, new_vars = model.apply({'params': params, 'batch_stats': state.batch_stats}, x,
                                     train=True, mutable=['batch_stats'], rngs={'dropout': k_drop})
      targets = optax.smooth_labels(jax.nn.one_hot(y, logits.shape[-1]), config.label_smoothing)
      loss = optax.softmax_cross_entropy(logits, targets).mean()
      return loss, (logits, new_vars.get('batch_stats', {}))

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ok = jnp.isfinite(loss) & jnp.isfinite(optax.tree.norm(grads))
    keep = lambda new, old: jax.tree_util.tree_map(lambda a, b: jnp.where(ok, a, b), new, old)
    ema = config.ema_decay
    new_state = state.replace(
        step=state.step + 1,
        params=keep(params, state.params),
        ema_params=keep(jax.tree_util.tree_map(lambda e, p: ema * e + (1 - ema) * p,
                                               state.ema_params, params), state.ema_params)
        if ema else state.ema_params,
        batch_stats=keep(batch_stats, state.batch_stats),
        opt_state=keep(opt_state, state.opt_state),
        nonfinite_step=jnp.where((state.nonfinite_step < 0) & ~ok, state.step,
                                 state.nonfinite_step))
    new_metrics = metrics.merge(TrainMetrics.single_from_model_output(
        loss=loss, logits=logits, labels=y))
    return new_state, new_metrics

  return jax.jit(step, donate_argnums=(0, 1), out_shardings=(rep, rep),
                 compiler_options=onednn.compiler_options())


def empty_metrics(sharding) -> TrainMetrics:
  """Zeroed train metrics placed like the step's outputs, so the step compiles only once."""
  return jax.device_put(TrainMetrics.empty(), sharding)


def make_eval_step(model, eval_batch: int, mesh, flip_tta: bool = False):
  rep, shard = distributed.replicated(mesh), distributed.batch_sharded(mesh)

  def step(params, batch_stats, images, labels, start, mean, std):
    n = labels.shape[0]
    idx = start + jnp.arange(eval_batch)
    mask = idx < n
    idx = jax.lax.with_sharding_constraint(jnp.minimum(idx, n - 1), shard)
    x = augment_lib.normalize(images[idx], mean, std)
    variables = {'params': params, 'batch_stats': batch_stats}
    logits = model.apply(variables, x, train=False)
    if flip_tta:  # average the predictions of the image and its mirror
      logits = (logits + model.apply(variables, jnp.flip(x, axis=-2), train=False)) / 2
    y = labels[idx]
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    return EvalMetrics.single_from_model_output(loss=loss, logits=logits, labels=y, mask=mask)

  return jax.jit(step, out_shardings=rep, compiler_options=onednn.compiler_options())


def evaluate(eval_step, state: TrainState, test_images, test_labels, eval_batch: int,
             mean, std) -> dict[str, float]:
  total = None
  params = state.ema_params if state.ema_params else state.params
  for start in range(0, test_labels.shape[0], eval_batch):
    m = eval_step(params, state.batch_stats, test_images, test_labels,
                  jnp.int32(start), mean, std)
    total = m if total is None else total.merge(m)
  return {k: float(v) for k, v in total.compute().items()}


# ----------------------------------------------------------------------------- the run


def _atomic_json(path: str, obj: Any) -> None:
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(obj, f, indent=2, sort_keys=True, default=str)
  os.replace(tmp, path)


def _fmt_time(seconds: float) -> str:
  seconds = int(max(0, seconds))
  return f'{seconds // 3600}h{seconds % 3600 // 60:02d}m' if seconds >= 3600 else \
      f'{seconds // 60}m{seconds % 60:02d}s'


def checkpoint_manager(workdir: str, keep: int) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      os.path.join(os.path.abspath(workdir), 'checkpoints'),
      options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))


def load_checkpoint(workdir: str, step: int | None = None) -> dict:
  """The saved train state (step, params, batch_stats, opt_state, ...) of the latest or given
  checkpoint, restored onto this process's first device whatever topology saved it.

  For analysis and probing: `model.apply({'params': s['params'], 'batch_stats':
  s['batch_stats']}, x, train=False)`.
  """
  ckpt_dir = os.path.join(os.path.abspath(workdir), 'checkpoints')
  steps = sorted(int(d) for d in os.listdir(ckpt_dir) if d.isdigit()) if os.path.isdir(ckpt_dir) else []
  if not steps or (step is not None and step not in steps):
    raise UserError(f'no checkpoint {"" if step is None else step} in {ckpt_dir}; '
                    f'available steps: {steps or "none"}')
  path = os.path.join(ckpt_dir, str(steps[-1] if step is None else step), 'state')
  checkpointer = ocp.StandardCheckpointer()
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree_util.tree_map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
      checkpointer.metadata(path).item_metadata.tree)
  return checkpointer.restore(path, target)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains and evaluates `config` in `workdir`, resuming from its latest checkpoint.

  Returns the dict also written to `workdir/results.json`.
  """
  t_start = time.time()
  info = validate(config, workdir)
  main_proc = distributed.is_main_process()
  if main_proc:
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config.to_json(indent=2))

  mesh = distributed.mesh()
  rep = distributed.replicated(mesh)
  train, test, info = datasets.load(config.dataset)
  batch = config.batch_size
  steps_per_epoch = train.labels.shape[0] // batch
  if steps_per_epoch == 0:
    raise UserError(f'batch_size {batch} is larger than the {train.labels.shape[0]} training examples')
  total_steps = config.num_train_steps or config.num_epochs * steps_per_epoch
  n_dev = jax.device_count()
  eval_batch = -(-min(config.eval_batch_size, test.labels.shape[0]) // n_dev) * n_dev

  # Per-channel statistics of the training images, in uint8 units.
  axes = tuple(range(train.images.ndim - 1))
  mean = train.images.mean(axis=axes, dtype=np.float64).astype(np.float32)
  std = np.maximum(train.images.std(axis=axes, dtype=np.float64), 1.0).astype(np.float32)
  put = lambda a: distributed.put_replicated(np.asarray(a), rep)
  train_images, train_labels = put(train.images), put(train.labels)
  test_images, test_labels = put(test.images), put(test.labels)
  mean, std = put(mean), put(std)

  model = models.create(config.model, info.num_classes, DTYPES[config.dtype])
  tx = optim.create(config, steps_per_epoch, total_steps)
  init_key, data_key, step_key = run_keys(config.seed, rep)

  state = create_train_state(model, tx, info.shape, init_key, rep, ema=config.ema_decay > 0)
  n_params = summary.count_params(state.params)

  meta = {'history': [], 'train_log': [], 'train_time_s': 0.0, 'train_images': 0, 'train_seconds': 0.0,
          'compile_time_s': 0.0}
  mngr = checkpoint_manager(workdir, config.keep_checkpoints)
  if mngr.latest_step() is not None:
    restored = mngr.restore(mngr.latest_step(), args=ocp.args.Composite(
        state=ocp.args.StandardRestore(state), meta=ocp.args.JsonRestore()))
    state, meta = restored.state, restored.meta
    logging.info('Resumed from %s at step %d.', mngr.directory, int(state.step))

  writer = None
  if main_proc:
    from clu import metric_writers  # imports TensorFlow; only the writing process needs it
    writer = metric_writers.SummaryWriter(os.path.join(workdir, 'tensorboard'))
    logging.info('Model %s: %s parameters. Data %s: %d train / %d test, %d steps/epoch, '
                 '%d steps, %d devices, %s convolutions, %s malloc.', config.model.name,
                 f'{n_params:,}', info.name, train.labels.shape[0], test.labels.shape[0],
                 steps_per_epoch, total_steps, n_dev, onednn.current(),
                 malloc())

  train_step = make_train_step(model, tx, config, steps_per_epoch, mesh)
  eval_step = make_eval_step(model, eval_batch, mesh, config.eval_flip_tta)
  permute = jax.jit(lambda e: jax.random.permutation(jax.random.fold_in(data_key, e),
                                                     train.labels.shape[0]), out_shardings=rep)
  lr_fn = optim.learning_rate_schedule(config, steps_per_epoch, total_steps)
  ckpt_every = config.checkpoint_every_steps or steps_per_epoch

  def check_finite():
    bad = int(state.nonfinite_step)
    if bad >= 0:
      mngr.wait_until_finished()  # the last good save lands before the process exits
      mngr.close()
      last = mngr.latest_step()
      kept = f'the last good checkpoint (step {last}) is kept' if last is not None else \
          'no checkpoint was written yet'
      raise NonFiniteLossError(f'loss became non-finite at step {bad}; {kept} in '
                               f'{mngr.directory}; lower the learning rate or check the data')

  def save(step: int):
    check_finite()
    meta['train_time_s'] = meta_time_base + time.time() - t_start
    mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                            meta=ocp.args.JsonSave(meta)), force=True)

  meta_time_base = meta['train_time_s']
  step = int(state.step)
  results_path = os.path.join(workdir, 'results.json')
  if step >= total_steps and os.path.exists(results_path):
    logging.info('Run already complete at step %d; results in %s', step, results_path)
    mngr.close()
    with open(results_path) as f:
      return json.load(f)
  metrics = empty_metrics(rep)
  t_mark, images_since_mark, first = time.time(), 0, True
  last_train: dict[str, float] = {}
  while step < total_steps:
    epoch = step // steps_per_epoch
    perm = permute(epoch)
    epoch_end = min((epoch + 1) * steps_per_epoch, total_steps)
    while step < epoch_end:
      state, metrics = train_step(state, metrics, train_images, train_labels, perm, mean, std,
                                  step_key)
      step += 1
      if first:  # time the compilation separately from steady-state throughput
        jax.block_until_ready(state)
        meta['compile_time_s'] = time.time() - t_mark
        t_mark, first = time.time(), False
        continue
      images_since_mark += batch
      if step % config.log_every_steps == 0 or step == epoch_end:
        last_train = {k: float(v) for k, v in metrics.compute().items()}
        now = time.time()
        meta['train_seconds'] += now - t_mark
        meta['train_images'] += images_since_mark
        rate = images_since_mark / max(now - t_mark, 1e-9)
        t_mark, images_since_mark = now, 0
        check_finite()
        meta['train_log'].append([step, last_train['loss'], last_train['accuracy']])
        if main_proc:
          eta = (total_steps - step) * batch / max(rate, 1e-9)
          logging.info('step %d/%d  epoch %.2f  loss %.4f  acc %.2f%%  lr %.4g  %.0f img/s  ETA %s',
                       step, total_steps, step / steps_per_epoch, last_train['loss'],
                       100 * last_train['accuracy'], float(lr_fn(step)), rate, _fmt_time(eta))
          writer.write_scalars(step, {'train/loss': last_train['loss'],
                                      'train/accuracy': last_train['accuracy'],
                                      'train/learning_rate': float(lr_fn(step)),
                                      'train/images_per_sec': rate})
        metrics = empty_metrics(rep)
      if step % ckpt_every == 0 and step != total_steps:
        save(step)
        t_mark = time.time()
    # End of an epoch (or of the run).
    done_epochs = step / steps_per_epoch
    if step == total_steps or (step % steps_per_epoch == 0 and
                               (step // steps_per_epoch) % config.eval_every_epochs == 0):
      check_finite()
      ev = evaluate(eval_step, state, test_images, test_labels, eval_batch, mean, std)
      meta['history'].append({'step': step, 'epoch': round(done_epochs, 3),
                              'test_accuracy': ev['accuracy'], 'test_loss': ev['loss'],
                              'train_loss': last_train.get('loss'),
                              'train_accuracy': last_train.get('accuracy'),
                              'time_s': round(meta_time_base + time.time() - t_start, 1)})
      if main_proc:
        logging.info('eval  epoch %.2f  test loss %.4f  test acc %.2f%%', done_epochs, ev['loss'],
                     100 * ev['accuracy'])
        writer.write_scalars(step, {'test/loss': ev['loss'], 'test/accuracy': ev['accuracy']})
        writer.flush()
      t_mark = time.time()
  if mngr.latest_step() != total_steps:
    save(total_steps)
  mngr.wait_until_finished()
  mngr.close()

  history = meta['history']
  accs = [h['test_accuracy'] for h in history]
  results = {
      'num_params': n_params,
      'test_accuracy': accs[-1] if accs else None,
      'best_test_accuracy': max(accs) if accs else None,
      'test_loss': history[-1]['test_loss'] if history else None,
      'train_time_s': round(meta_time_base + time.time() - t_start, 2),
      'images_per_sec': round(meta['train_images'] / max(meta['train_seconds'], 1e-9), 1),
      'compile_time_s': round(meta['compile_time_s'], 2),
      'steps': total_steps,
      'epochs': round(total_steps / steps_per_epoch, 3),
      'num_devices': n_dev,
      'num_processes': jax.process_count(),
      'conv_impl': onednn.current(),
      'conv_algorithm': onednn.algorithm(),
      'xla_compiler_options': onednn.compiler_options(),
      'malloc': malloc(),
      'tcmalloc_release_rate': tcmalloc_release_rate(),
      'history': history,
      'train_log': meta['train_log'],  # [step, mean loss, accuracy] over each log interval
      'config': json.loads(config.to_json()),
  }
  if main_proc:
    _atomic_json(results_path, results)
    writer.close()
    logging.info('Done: test accuracy %.2f%% (best %.2f%%), %s params, %.0f img/s, %s wall time. '
                 'Results in %s', 100 * (results['test_accuracy'] or 0),
                 100 * (results['best_test_accuracy'] or 0), f'{n_params:,}',
                 results['images_per_sec'], _fmt_time(results['train_time_s']),
                 results_path)
  return results
