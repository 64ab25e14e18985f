"""`--mode=gan`: a class-conditional DCGAN (models/dcgan.py) trained on a config's dataset, with
the conventions of the classifier runs: an ml_collections config, one jitted step, orbax
checkpoints in `W/checkpoints` with resume, TensorBoard in `W/tensorboard`, and the results in
`W/gan/`.

Each step draws a batch of real images (uniformly, with replacement, from `fold_in(seed, step)`,
so a resumed run sees the same batches), generates as many fakes for the same classes, updates
the discriminator on real vs fake (non-saturating GAN loss), then the generator against the
updated discriminator through the same forward pass of its fakes, as Radford et al.'s reference
code does. Adam for both.

Every `gan.eval_every_steps` the generator (inference mode) makes `gan.eval_per_class` images of
every class; their Fréchet distance to as many real test images (gan/frechet.py, features of the
classifier run `gan.classifier`) and that classifier's accuracy on them (the class they were
asked for) are recorded: the curve in `W/gan/fd_curve.png`. At the end: `W/gan/results.json`
and `.md`, `samples.png` (a row per class) and `samples.npz` (`gan.export_per_class` uint8 images
of every class, for `dataset.extra_train`).
"""

from __future__ import annotations

import os
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging

import lifecycle
import util
from analysis import common
from data import datasets
from errors import UserError
from gan import frechet
from models import dcgan, summary
from store import checkpoints, runs


@flax.struct.dataclass
class GanState:
  step: jax.Array
  g: dict          # {'params', 'batch_stats'}
  d: dict
  g_opt: Any
  d_opt: Any


def to_pixels(x: jax.Array) -> jax.Array:
  """Generator output in [-1, 1] -> uint8 pixels, as exported (the quantized images are what
  every measurement sees)."""
  return jnp.clip(jnp.round((x + 1.0) * 127.5), 0, 255).astype(jnp.uint8)


def from_pixels(images: jax.Array) -> jax.Array:
  return images.astype(jnp.float32) / 127.5 - 1.0


def bce(logits: jax.Array, target: float) -> jax.Array:
  return optax.sigmoid_binary_cross_entropy(logits, jnp.full_like(logits, target)).mean()


def d_loss(D, d_params, d_stats, real, fake, labels):
  """Discriminator loss on a real and a fake batch (each normalized by its own batch statistics,
  as the DCGAN reference does), and the updated statistics."""
  r, v = D.apply({'params': d_params, 'batch_stats': d_stats}, real, labels, train=True,
                 mutable=['batch_stats'])
  f, v = D.apply({'params': d_params, 'batch_stats': v['batch_stats']}, fake, labels, train=True,
                 mutable=['batch_stats'])
  return bce(r, 1.0) + bce(f, 0.0), v['batch_stats']


def g_loss(D, d_vars, fake, labels):
  """Non-saturating generator loss -log D(G(z)); the discriminator's statistics are not kept."""
  logits, _ = D.apply(d_vars, fake, labels, train=True, mutable=['batch_stats'])
  return bce(logits, 1.0)


def generate(G, g_vars, z, labels, train: bool = False):
  if not train:
    return G.apply(g_vars, z, labels, train=False), g_vars['batch_stats']
  fake, v = G.apply(g_vars, z, labels, train=True, mutable=['batch_stats'])
  return fake, v['batch_stats']


class Gan:
  """The two networks, their optimizers and the jitted step of a GAN config."""

  def __init__(self, config, shape: tuple[int, ...], num_classes: int):
    m, o = config.model, config.optimizer
    self.z_dim, self.num_classes, self.shape = int(m.z_dim), num_classes, tuple(shape)
    self.G = dcgan.Generator(self.shape, num_classes, int(m.width))
    self.D = dcgan.Discriminator(num_classes, int(m.width))
    self.g_tx = optax.adam(o.learning_rate, b1=o.b1, b2=o.b2)
    self.d_tx = optax.adam(o.learning_rate, b1=o.b1, b2=o.b2)

  def init(self, key) -> GanState:
    kg, kd = jax.random.split(key)
    z = jnp.zeros((1, self.z_dim))
    y = jnp.zeros((1,), jnp.int32)
    g = self.G.init(kg, z, y, train=False)
    d = self.D.init(kd, jnp.zeros((1, *self.shape)), y, train=False)
    g, d = ({'params': v['params'], 'batch_stats': v['batch_stats']} for v in (g, d))
    return GanState(step=jnp.int32(0), g=g, d=d, g_opt=self.g_tx.init(g['params']),
                    d_opt=self.d_tx.init(d['params']))

  def update(self, state: GanState, real, labels, z):
    """One discriminator and one generator update; (state, {'d_loss', 'g_loss'})."""
    G, D = self.G, self.D

    def forward(gp):
      return generate(G, {'params': gp, 'batch_stats': state.g['batch_stats']}, z, labels,
                      train=True)

    fake, g_vjp, g_stats = jax.vjp(forward, state.g['params'], has_aux=True)
    (dl, d_stats), d_grads = jax.value_and_grad(d_loss, argnums=1, has_aux=True)(
        D, state.d['params'], state.d['batch_stats'], real, jax.lax.stop_gradient(fake), labels)
    d_upd, d_opt = self.d_tx.update(d_grads, state.d_opt, state.d['params'])
    d = {'params': optax.apply_updates(state.d['params'], d_upd), 'batch_stats': d_stats}
    gl, d_fake = jax.value_and_grad(lambda f: g_loss(D, d, f, labels))(fake)
    g_grads = g_vjp(d_fake)[0]
    g_upd, g_opt = self.g_tx.update(g_grads, state.g_opt, state.g['params'])
    g = {'params': optax.apply_updates(state.g['params'], g_upd), 'batch_stats': g_stats}
    return (GanState(step=state.step + 1, g=g, d=d, g_opt=g_opt, d_opt=d_opt),
            {'d_loss': dl, 'g_loss': gl})

  def step_fn(self, images: jax.Array, labels: jax.Array, batch: int):
    """The jitted `(state, key) -> (state, losses)` drawing its batch from `images` (uint8, on
    the device) by `fold_in(key, step)`."""
    n = images.shape[0]

    def step(state, key):
      k = jax.random.fold_in(key, state.step)
      ki, kz = jax.random.split(k)
      idx = jax.random.randint(ki, (batch,), 0, n)
      z = jax.random.normal(kz, (batch, self.z_dim))
      return self.update(state, from_pixels(images[idx]), labels[idx], z)

    return jax.jit(step, donate_argnums=0)

  def sampler(self):
    """Jitted (generator variables, z, labels) -> uint8 images, inference mode."""
    return jax.jit(lambda g, z, y: to_pixels(generate(self.G, g, z, y)[0]))

  def samples(self, g_vars, per_class: int, seed: int, batch: int = 1000):
    """`per_class` images of every class, class-major, from noise of `seed`."""
    labels = np.repeat(np.arange(self.num_classes, dtype=np.int32), per_class)
    z = jax.random.normal(jax.random.key(seed), (len(labels), self.z_dim))
    fn = self.sampler()
    out = [np.asarray(fn(g_vars, z[i:i + batch], labels[i:i + batch]))
           for i in range(0, len(labels), batch)]
    return np.concatenate(out), labels


# ----------------------------------------------------------------------------- the run


def validate(config, workdir: str) -> datasets.DatasetInfo:
  if not workdir:
    raise UserError('--workdir is required: the directory for the GAN\'s checkpoints and results')
  if config.get('model', {}).get('name') != 'dcgan':
    raise UserError('--mode=gan trains a GAN config (model.name=dcgan), e.g. '
                    '--config=configs/dcgan_fashion_mnist.py')
  g = config.gan
  for key, value in (('batch_size', config.batch_size), ('num_train_steps', config.num_train_steps),
                     ('log_every_steps', config.log_every_steps),
                     ('checkpoint_every_steps', config.checkpoint_every_steps),
                     ('keep_checkpoints', config.keep_checkpoints),
                     ('gan.eval_every_steps', g.eval_every_steps),
                     ('gan.eval_per_class', g.eval_per_class),
                     ('gan.export_per_class', g.export_per_class),
                     ('model.width', config.model.width), ('model.z_dim', config.model.z_dim),
                     ('optimizer.learning_rate', config.optimizer.learning_rate)):
    if value <= 0:
      raise UserError(f'{key} must be positive, got {value}')
  info = datasets.info(config.dataset)
  if len(info.shape) != 3 or info.shape[0] % 4 or info.shape[1] % 4:
    raise UserError(f'the DCGAN needs images whose height and width divide by 4; '
                    f'{info.name} is {"x".join(map(str, info.shape))} (set dataset.image_shape)')
  # The Fréchet distance needs a classifier trained on the real data (e.g. configs/default.py).
  runs.check_run(g.classifier, 'gan.classifier', info.shape, info.num_classes, what='this GAN')
  datasets.resolve_source(config.dataset)
  util.check_workdir(workdir)
  lifecycle.hold(workdir, 'gan')  # one writer per workdir
  checkpoints.check_resumable(config, workdir, ('num_train_steps', 'log_every_steps'),
                              what='another GAN run', classifier=False)
  return info


class Evaluator:
  """Fréchet distance and classifier accuracy of generated images against real test images."""

  def __init__(self, gan: Gan, classifier_dir: str, test: datasets.Split, per_class: int):
    self.run = runs.load_run(classifier_dir)
    self.fn, self.layer = frechet.feature_fn(self.run)
    self.per_class = per_class
    n = per_class * gan.num_classes
    order = np.random.default_rng(0).permutation(len(test))
    if len(test) < 2 * n:
      raise UserError(f'gan.eval_per_class {per_class} needs {2 * n} test images (two real sets '
                      f'for the baseline); the test split has {len(test)}')
    real_a, real_b = test.images[order[:n]], test.images[order[n:2 * n]]
    self.real = frechet.statistics(self.features(real_a))
    self.baseline = frechet.distance(*self.real, *frechet.statistics(self.features(real_b)))
    noise = np.random.default_rng(1).integers(0, 256, real_a.shape).astype(np.uint8)
    self.noise = frechet.distance(*self.real, *frechet.statistics(self.features(noise)))
    self.classifier_accuracy = float(np.mean(np.argmax(self.run.logits(real_a), -1) ==
                                             test.labels[order[:n]]))

  def features(self, images: np.ndarray) -> np.ndarray:
    return frechet.features(self.run, images, fn=self.fn)

  def __call__(self, gan: Gan, g_vars, seed: int) -> dict:
    images, labels = gan.samples(g_vars, self.per_class, seed)
    fd = frechet.distance(*self.real, *frechet.statistics(self.features(images)))
    pred = np.argmax(self.run.logits(images), -1)
    per_class = [float(np.mean(pred[labels == c] == c)) for c in range(gan.num_classes)]
    return {'frechet_distance': fd, 'generated_accuracy': float(np.mean(pred == labels)),
            'per_class_accuracy': per_class}


def train(config, workdir: str) -> dict:
  """Trains (resuming) the GAN of `config` in `workdir` and writes `W/gan/`; returns results.
  SIGTERM/SIGINT save the current step and end with lifecycle.Stopped."""
  with lifecycle.stop_on_signals() as stop:
    return _train(config, workdir, stop)


def _train(config, workdir: str, stop: lifecycle.StopRequest) -> dict:
  info = validate(config, workdir)
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    f.write(config.to_json(indent=2))
  train_split = datasets.load_split(config.dataset, 'train')
  test_split = datasets.load_split(config.dataset, 'test')
  gan = Gan(config, info.shape, info.num_classes)
  evaluator = Evaluator(gan, config.gan.classifier, test_split, config.gan.eval_per_class)
  device = jax.local_devices()[0]
  state = jax.device_put(gan.init(jax.random.key(config.seed)), device)
  mngr = checkpoints.manager(workdir, config.keep_checkpoints)
  meta = {'history': [], 'train_time_s': 0.0}

  def read(step: int):
    restored = mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(state), meta=ocp.args.JsonRestore()))
    checkpoints.verify(restored.state, restored.meta)
    return restored

  resumed, restored = checkpoints.restore_newest(str(mngr.directory), mngr.all_steps(), read,
                                                 mngr)
  if resumed is not None:
    state, meta = restored.state, restored.meta
    logging.info('Resumed the GAN from %s at step %d.', mngr.directory, int(state.step))
  step_fn = gan.step_fn(jax.device_put(train_split.images, device),
                        jax.device_put(train_split.labels, device), config.batch_size)
  key = jax.random.fold_in(jax.random.key(config.seed), 1)
  from clu import metric_writers  # imports TensorFlow; only the writing process needs it
  writer = metric_writers.SummaryWriter(os.path.join(workdir, 'tensorboard'))
  logging.info('DCGAN: generator %s, discriminator %s parameters; %d real images of %s, '
               'classifier %s (features of %s, %d-d); real-vs-real Fréchet distance %.3f, '
               'noise %.1f.', f'{summary.count_params(state.g["params"]):,}',
               f'{summary.count_params(state.d["params"]):,}', len(train_split), info.name,
               config.gan.classifier, evaluator.layer,
               evaluator.features(test_split.images[:2]).shape[1], evaluator.baseline,
               evaluator.noise)
  step, total = int(state.step), config.num_train_steps
  t_mark, losses = time.time(), []
  session_start, time_base, first_step = time.time(), meta['train_time_s'], step
  while step < total:
    state, out = step_fn(state, key)
    step += 1
    losses.append(out)
    if step % config.log_every_steps == 0 or step == total:
      vals = {k: float(np.mean([float(o[k]) for o in losses])) for k in ('d_loss', 'g_loss')}
      if not all(np.isfinite(list(vals.values()))):
        raise UserError(f'GAN loss became non-finite at step {step}; lower '
                        'optimizer.learning_rate (checkpoints so far are kept)')
      rate = len(losses) * config.batch_size / (time.time() - t_mark)
      # The ETA counts this session's evaluations too (the Fréchet measurements are not free).
      eta = (time.time() - session_start) / (step - first_step) * (total - step)
      logging.info('step %d/%d  d_loss %.4f  g_loss %.4f  %.0f img/s  ETA %s', step, total,
                   vals['d_loss'], vals['g_loss'], rate, util.format_seconds(eta))
      writer.write_scalars(step, {'train/d_loss': vals['d_loss'], 'train/g_loss': vals['g_loss']})
      meta.setdefault('train_log', []).append([step, vals['d_loss'], vals['g_loss']])
      losses, t_mark = [], time.time()
    if step % config.gan.eval_every_steps == 0 or step == total:
      ev = evaluator(gan, state.g, seed=config.seed)
      meta['history'].append({'step': step, **ev})
      logging.info('eval  step %d  Fréchet distance %.3f (real vs real %.3f)  classifier '
                   'accuracy on generated %.2f%%', step, ev['frechet_distance'],
                   evaluator.baseline, 100 * ev['generated_accuracy'])
      writer.write_scalars(step, {'gan/frechet_distance': ev['frechet_distance'],
                                  'gan/generated_accuracy': ev['generated_accuracy']})
      t_mark = time.time()
    if step % config.checkpoint_every_steps == 0 or step == total or stop.requested:
      meta['train_time_s'] = time_base + time.time() - session_start
      meta['checksums'] = checkpoints.checksums(state)
      mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                              meta=ocp.args.JsonSave(meta)), force=True)
      t_mark = time.time()
    if stop.requested and step < total:
      mngr.wait_until_finished()
      mngr.close()
      writer.close()
      raise lifecycle.Stopped(f'stopped by {stop.signal_name} at step {step}/{total}: checkpoint '
                              f'saved in {mngr.directory}; rerun the same command to resume')
  mngr.wait_until_finished()
  mngr.close()
  writer.close()
  return write_outputs(config, workdir, gan, state, evaluator, meta, info)


def write_outputs(config, workdir: str, gan: Gan, state: GanState, evaluator: Evaluator,
                  meta: dict, info) -> dict:
  out = common.output_dir(workdir, 'gan')
  images, labels = gan.samples(state.g, config.gan.export_per_class, seed=config.seed + 1)
  np.savez_compressed(os.path.join(out, 'samples.npz'), images=images, labels=labels)
  last = meta['history'][-1]
  names = list(info.class_names) or [str(c) for c in range(gan.num_classes)]
  results = {
      'frechet_distance': last['frechet_distance'],
      'frechet_distance_real_vs_real': evaluator.baseline,
      'frechet_distance_noise': evaluator.noise,
      'generated_accuracy': last['generated_accuracy'],
      'per_class_accuracy': dict(zip(names, last['per_class_accuracy'])),
      'classifier': os.path.abspath(config.gan.classifier),
      'classifier_accuracy_on_real': evaluator.classifier_accuracy,
      'feature_layer': evaluator.layer,
      'images_per_measurement': evaluator.per_class * gan.num_classes,
      'generator_params': summary.count_params(state.g['params']),
      'discriminator_params': summary.count_params(state.d['params']),
      'steps': int(state.step), 'train_time_s': round(meta['train_time_s'], 1),
      'samples': 'gan/samples.npz', 'samples_per_class': config.gan.export_per_class,
      'history': meta['history'], 'train_log': meta.get('train_log', []),
  }
  rows = [{'class': n, 'classifier accuracy on generated': a}
          for n, a in results['per_class_accuracy'].items()]
  common.write_outputs(out, results, rows, title=(
      f'DCGAN after {results["steps"]} steps: Fréchet distance {results["frechet_distance"]:.3f} '
      f'(real vs real {evaluator.baseline:.3f}, noise {evaluator.noise:.1f}) on '
      f'{evaluator.layer} features of {config.gan.classifier}; classifier accuracy on '
      f'generated images {100 * results["generated_accuracy"]:.2f}% '
      f'(on real {100 * evaluator.classifier_accuracy:.2f}%)'))
  plot(results, images, labels, names, config.gan.export_per_class, out)
  logging.info('GAN done: Fréchet distance %.3f (real vs real %.3f), accuracy on generated '
               '%.2f%%; results in %s', results['frechet_distance'], evaluator.baseline,
               100 * results['generated_accuracy'], out)
  return results


def plot(results: dict, images, labels, names, per_class: int, out: str, columns: int = 10) -> None:
  plt = common.pyplot()
  k = len(names)
  cols = min(columns, per_class)
  fig, axes = plt.subplots(k, cols, figsize=(cols * 0.9, k * 0.95), squeeze=False)
  for c in range(k):
    for j in range(cols):
      ax = axes[c, j]
      img = images[c * per_class + j]
      ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap='gray', vmin=0, vmax=255)
      ax.set_xticks([])
      ax.set_yticks([])
    axes[c, 0].set_ylabel(names[c], rotation=0, ha='right', fontsize=8)
  fig.suptitle(f'Generated samples, a row per class (step {results["steps"]}; the classifier '
               f'labels {100 * results["generated_accuracy"]:.0f}% of them as their class)',
               fontsize=8)
  common.save_figure(fig, os.path.join(out, 'samples.png'))
  fig, ax = plt.subplots(figsize=(5, 3.5))
  h = results['history']
  ax.plot([e['step'] for e in h], [e['frechet_distance'] for e in h], 'o-', label='generated')
  ax.axhline(results['frechet_distance_real_vs_real'], color='gray', ls='--',
             label='real vs real')
  ax.set(xlabel='step', ylabel='Fréchet distance', yscale='log',
         title='Fréchet distance to real test images')
  ax.legend()
  ax.grid(alpha=0.3)
  common.save_figure(fig, os.path.join(out, 'fd_curve.png'))
