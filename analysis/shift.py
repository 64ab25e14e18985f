"""`--mode=shift`: a trained run on corrupted copies of its test split, in the protocol of
Hendrycks & Dietterich (2019, CIFAR-10-C / ImageNet-C): every corruption at severities 1-5,
made on the fly and deterministic for a seed; accuracy per corruption and severity, and with a
reference run the corruption error CE_c = sum_s E_{s,c} / sum_s E^ref_{s,c}, its mean over
corruptions (mCE, in percent: 100 = as robust as the reference) and the relative mCE (errors
minus each network's clean error).

Images are pixels in [0, 1], NHWC, any channel count. Severity 0 is the clean image. The
parameters of the noises, the blur, brightness, contrast and JPEG follow CIFAR-10-C's
(Hendrycks & Dietterich's make_cifar_c). Pixelation averages down to a fraction of the side and
interpolates back bilinearly, at 0.9-0.5 of the side: with CIFAR-10-C's nearest-neighbour
upsampling and 0.95-0.65, the misaligned half pixels at 28-32 px made severity 1 farther from
the clean image than severity 2 (measured), so the levels would not be ordered. The elastic
deformation follows Simard et al. (2003, MNIST: alpha 34, sigma 4 at 28x28) scaled to the image
side; rotation, translation and scaling (ImageNet-P's kinds of perturbation, here as
fixed-size transforms) are this project's choice. Rotation, translation and scaling fill uncovered pixels with the border's mean.

Outputs in W/shift/: results.json (`clean_accuracy`, `corruptions[c].accuracy[s]`, with a
reference `mce`, `relative_mce` and `corruptions[c].ce`), results.md (the table),
examples.png (one image per corruption at each severity) and accuracy_vs_severity.png.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Callable, Sequence

import dm_pix as pix
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

import util
from analysis import common, options
from errors import UserError
from store import runs
from train import tasks

SEVERITIES = options.SEVERITIES
Options = options.Shift  # the mode's options and their defaults (analysis/options.py)

# Per corruption, its parameter at severities 1-5.
PARAMS: dict[str, tuple] = {
    'gaussian_noise': (0.04, 0.06, 0.08, 0.09, 0.10),         # sd of the added noise
    'shot_noise': (500, 250, 100, 75, 50),                    # photons per unit intensity
    'impulse_noise': (0.01, 0.02, 0.03, 0.05, 0.07),          # fraction of salt-and-pepper
    'gaussian_blur': (0.4, 0.6, 0.7, 0.8, 1.0),               # sigma, pixels at 32x32
    'brightness': (0.05, 0.1, 0.15, 0.2, 0.3),                # added to HSV value
    'contrast': (0.75, 0.5, 0.4, 0.3, 0.15),                  # factor about the image mean
    'rotation': (5, 10, 15, 20, 30),                          # degrees, random sign
    'translation': (0.05, 0.1, 0.15, 0.2, 0.25),              # fraction of the side, random dir
    'scaling': (0.9, 0.8, 0.7, 0.6, 0.5),                     # zoom-out factor
    'elastic': (10, 20, 34, 45, 60),                          # alpha (pixels at 28x28), sigma 4
    'pixelate': (0.9, 0.8, 0.7, 0.6, 0.5),                    # side of the coarse grid
    'jpeg': (80, 65, 58, 50, 40),                             # JPEG quality
}
CORRUPTIONS = tuple(PARAMS)


def check(corruptions: Sequence[str], severities: Sequence[int]) -> None:
  unknown = [c for c in corruptions if c not in PARAMS]
  if unknown:
    raise UserError(f'unknown corruption {unknown[0]!r}; use any of {", ".join(CORRUPTIONS)}')
  bad = [s for s in severities if s not in SEVERITIES]
  if bad:
    raise UserError(f'severity {bad[0]} is outside 1-5 (the protocol\'s five levels)')
  if not corruptions or not severities:
    raise UserError('nothing to evaluate: give at least one corruption and one severity')


def _affine(x: jax.Array, matrix: jax.Array, shift: jax.Array) -> jax.Array:
  """Output pixel p samples the input at matrix @ (p - centre) + centre + shift (per image,
  channels untouched)."""
  h, w = x.shape[:2]
  centre = jnp.array([(h - 1) / 2, (w - 1) / 2])
  m = jnp.eye(3).at[:2, :2].set(matrix)
  offset = jnp.zeros(3).at[:2].set(centre - matrix @ centre + shift)
  # Uncovered pixels take the mean of the border (black on Fashion-MNIST): repeating edge
  # pixels would smear objects that touch the border across the image.
  border = jnp.concatenate([x[0], x[-1], x[:, 0], x[:, -1]]).mean(axis=0)
  return pix.affine_transform(x - border, m, offset=offset, order=1, mode='constant') + border


def _one(name: str, p: float, key: jax.Array, x: jax.Array) -> jax.Array:
  """Corruption `name` at parameter `p` of one HWC image in [0, 1]."""
  h, w, c = x.shape
  side = min(h, w)
  if name == 'gaussian_noise':
    return x + p * jax.random.normal(key, x.shape)
  if name == 'shot_noise':
    return jax.random.poisson(key, x * p, x.shape).astype(x.dtype) / p
  if name == 'impulse_noise':
    k1, k2 = jax.random.split(key)
    hit = jax.random.uniform(k1, x.shape) < p
    return jnp.where(hit, jax.random.bernoulli(k2, 0.5, x.shape).astype(x.dtype), x)
  if name == 'gaussian_blur':
    sigma = p * side / 32
    return pix.gaussian_blur(x, sigma, kernel_size=2 * int(np.ceil(3 * sigma)) + 1)
  if name == 'brightness':
    if c != 3:
      return x + p
    hsv = pix.rgb_to_hsv(x)
    return pix.hsv_to_rgb(hsv.at[..., 2].set(jnp.clip(hsv[..., 2] + p, 0, 1)))
  if name == 'contrast':
    mean = x.mean(axis=(0, 1), keepdims=True)
    return (x - mean) * p + mean
  if name == 'rotation':
    angle = jnp.deg2rad(p) * jnp.where(jax.random.bernoulli(key), 1.0, -1.0)
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    return _affine(x, jnp.array([[cos, -sin], [sin, cos]]), jnp.zeros(2))
  if name == 'translation':
    theta = jax.random.uniform(key, (), maxval=2 * jnp.pi)
    return _affine(x, jnp.eye(2), p * jnp.array([h, w]) * jnp.array([jnp.sin(theta), jnp.cos(theta)]))
  if name == 'scaling':
    return _affine(x, jnp.eye(2) / p, jnp.zeros(2))
  if name == 'elastic':
    return pix.elastic_deformation(key, x, alpha=p * side / 28, sigma=4.0 * side / 28)
  if name == 'pixelate':
    small = (max(1, int(h * p)), max(1, int(w * p)), c)
    coarse = jax.image.resize(x, small, 'linear', antialias=True)
    return jax.image.resize(coarse, x.shape, 'linear')
  raise UserError(f'unknown corruption {name!r}')


def _jpeg(x: np.ndarray, quality: int) -> np.ndarray:
  """JPEG round trip of each image (TensorFlow's codec), uint8 quantization included."""
  import tensorflow as tf  # heavy: only when TFDS data is read or JPEG-coded
  u8 = np.round(np.clip(np.asarray(x), 0, 1) * 255).astype(np.uint8)
  out = np.stack([tf.io.decode_jpeg(tf.io.encode_jpeg(im, quality=int(quality)),
                                    channels=u8.shape[-1]).numpy() for im in u8])
  return out.astype(np.float32) / 255.0


# Corruptions whose parameter sets a shape (a kernel size, a grid) compile once per severity;
# the others take it as a traced scalar, so all five severities share one executable.
SHAPE_PARAMS = ('gaussian_blur', 'pixelate')


@functools.partial(jax.jit, static_argnames=('name', 'static_p'))
def _corrupt_jax(x, key, p, name: str, static_p):
  p = p if static_p is None else static_p
  keys = jax.random.split(key, x.shape[0])
  return jnp.clip(jax.vmap(lambda k, im: _one(name, p, k, im))(keys, x), 0.0, 1.0)


def corrupt(x, name: str, severity: int, key: jax.Array) -> np.ndarray:
  """A batch (N, H, W, C) in [0, 1] under corruption `name` at `severity` (0 = unchanged),
  clipped to [0, 1]; image i's randomness is split i of `key`."""
  check([name], [severity] if severity else [1])
  x = np.asarray(x, np.float32)
  if severity == 0:
    return x
  if name == 'jpeg':
    return _jpeg(x, PARAMS[name][severity - 1])
  p = PARAMS[name][severity - 1]
  static_p = p if name in SHAPE_PARAMS else None
  return np.asarray(_corrupt_jax(jnp.asarray(x), key, jnp.float32(p), name, static_p))


def corruption_key(seed: int, name: str, severity: int, batch_index: int) -> jax.Array:
  """The key of one batch: the same images get the same corruption in every run and for the
  reference, whatever else is evaluated."""
  k = jax.random.fold_in(jax.random.key(seed), CORRUPTIONS.index(name))
  return jax.random.fold_in(jax.random.fold_in(k, severity), batch_index)


# ----------------------------------------------------------------------------- the mode


def accuracies(predict: Callable[[np.ndarray], np.ndarray], x: np.ndarray, y: np.ndarray,
               o: Options, progress: util.Progress | None = None
               ) -> tuple[float, dict[str, dict[int, float]]]:
  """Clean accuracy and {corruption: {severity: accuracy}} of `predict` (x in [0, 1]);
  `progress` counts one unit per (corruption, severity) and one for the clean split."""
  def acc(images_of) -> float:
    right, chunks = 0, range(0, len(y), o.batch)
    for b, start in enumerate(chunks):
      right += int((predict(images_of(b, x[start:start + o.batch])) ==
                    y[start:start + o.batch]).sum())
      if progress:
        progress.advance(1 / len(chunks))
    return right / len(y)
  clean = acc(lambda b, xb: xb)
  table = {c: {s: acc(lambda b, xb, c=c, s=s: corrupt(xb, c, s, corruption_key(o.seed, c, s, b)))
               for s in o.severities} for c in o.corruptions}
  return clean, table


def corruption_errors(acc: dict, clean: float, ref_acc: dict, ref_clean: float) -> dict:
  """CE and relative CE per corruption, mCE and relative mCE, in percent of the reference."""
  out: dict = {'ce': {}, 'relative_ce': {}}
  for c, by_s in acc.items():
    err = sum(1 - a for a in by_s.values())
    ref = sum(1 - ref_acc[c][s] for s in by_s)
    rel = sum((1 - a) - (1 - clean) for a in by_s.values())
    rel_ref = sum((1 - ref_acc[c][s]) - (1 - ref_clean) for s in by_s)
    out['ce'][c] = 100 * err / ref if ref > 0 else None
    out['relative_ce'][c] = 100 * rel / rel_ref if rel_ref > 0 else None
  ces = [v for v in out['ce'].values() if v is not None]
  rels = [v for v in out['relative_ce'].values() if v is not None]
  out['mce'] = float(np.mean(ces)) if ces else None
  out['relative_mce'] = float(np.mean(rels)) if rels else None
  return out


def _predictor(run, batch: int, probabilities: bool = False):
  """Images in [0, 1] -> predicted classes (or softmax probabilities) of the run."""
  device = jax.local_devices()[0]
  variables = jax.device_put(run.variables, device)
  f = jax.jit(lambda v, xa: jax.nn.softmax(run.net.logits01(v)(xa), -1) if probabilities
              else jnp.argmax(run.net.logits01(v)(xa), -1))
  return lambda xa: np.asarray(f(variables, jnp.asarray(xa)))


def run_shift(workdir: str, o: Options) -> dict:
  """`--mode=shift` on the run in `workdir` (and its reference), into `W/shift/`."""
  check(o.corruptions, o.severities)
  if o.batch < 1 or o.examples < 0:
    raise UserError(f'--shift_batch must be positive and --shift_examples >= 0, got {o.batch} '
                    f'and {o.examples}')
  progress = util.Progress('shift', {'the run': 1.0, 'the reference': 1.0 if o.reference else 0})
  run = runs.load_run(workdir, o.step)
  tasks.check_mode(run.config, 'shift')
  if o.reference:  # a reference must see the same test images
    runs.check_run(o.reference, '--shift_reference', run.info.shape, run.info.num_classes)
  ref_run = runs.load_run(o.reference) if o.reference else None
  test = run.test_split()
  n = o.examples or len(test.labels)
  images, labels, idx = common.pick_examples(test.images, test.labels, n, o.seed, per_class=True)
  x, y = images.astype(np.float32) / 255.0, labels.astype(np.int32)
  t = time.time()
  units = 1 + len(o.corruptions) * len(o.severities)
  progress.part('the run', units)
  clean, acc = accuracies(_predictor(run, o.batch), x, y, o, progress)
  results: dict = {
      'workdir': '.', 'step': run.step, 'model': run.config.model.name,
      'dataset': run.dataset['name'], 'num_examples': len(y), 'seed': o.seed,
      'severities': list(o.severities), 'clean_accuracy': clean,
      'mean_corruption_accuracy': float(np.mean([a for s in acc.values() for a in s.values()])),
      'corruptions': {c: {'parameters': [PARAMS[c][s - 1] for s in o.severities],
                          'accuracy': {str(s): a for s, a in by_s.items()},
                          'mean_accuracy': float(np.mean(list(by_s.values())))}
                      for c, by_s in acc.items()},
      'settings': {**dataclasses.asdict(o), 'corruptions': list(o.corruptions),
                   'severities': list(o.severities)}}
  if ref_run is not None:
    progress.part('the reference', units)
    ref_clean, ref_acc = accuracies(_predictor(ref_run, o.batch), x, y, o, progress)
    errs = corruption_errors(acc, clean, ref_acc, ref_clean)
    results.update(mce=errs['mce'], relative_mce=errs['relative_mce'])
    results['reference'] = {
        'workdir': o.reference, 'step': ref_run.step, 'model': ref_run.config.model.name,
        'clean_accuracy': ref_clean,
        'corruptions': {c: {'accuracy': {str(s): a for s, a in by_s.items()}}
                        for c, by_s in ref_acc.items()}}
    for c in acc:
      results['corruptions'][c].update(ce=errs['ce'][c], relative_ce=errs['relative_ce'][c])
  results['seconds'] = round(time.time() - t, 1)
  out = common.output_dir(workdir, 'shift')
  rows = [{'corruption': c, **{f's{s}': 100 * v['accuracy'][str(s)] for s in o.severities},
           'mean': 100 * v['mean_accuracy'],
           **({'CE': v['ce'], 'rel. CE': v['relative_ce']} if ref_run is not None else {})}
          for c, v in results['corruptions'].items()]
  title = (f'{run.config.model.name} under distribution shift: test accuracy (%) per corruption '
           f'and severity; clean {100 * clean:.2f}%, {len(y)} test images')
  if ref_run is not None:
    title += (f'; mCE {results["mce"]:.1f}, relative mCE {results["relative_mce"]:.1f} '
              f'(reference {o.reference} = 100)')
  plt = common.pyplot()
  examples_png(plt, x, y, o, _predictor(run, o.batch, probabilities=True),
               common.class_names(run.info), f'{out}/examples.png')
  curve_png(plt, results, f'{out}/accuracy_vs_severity.png')
  common.write_outputs(out, common.stamp(results, progress), rows, title)
  logging.info('shift: %d corruptions x %d severities on %d images in %.0fs',
               len(acc), len(o.severities), len(y), results['seconds'])
  return results


def examples_png(plt, x: np.ndarray, y: np.ndarray, o: Options, probs: Callable, names: list,
                 path: str) -> None:
  """Per corruption (row), the first test image of a class (a different class each row) clean
  and at each evaluated severity, drawn with their own keys, each titled with the run's
  prediction and confidence (the row's true class is its label)."""
  cols = (0, *o.severities)
  fig, axes = plt.subplots(len(o.corruptions), len(cols), squeeze=False,
                           figsize=(1.3 * len(cols), 1.3 * len(o.corruptions)))
  for i, c in enumerate(o.corruptions):
    j = int(np.flatnonzero(y == np.unique(y)[i % len(np.unique(y))])[0])
    ims = np.stack([corrupt(x[j:j + 1], c, s, corruption_key(o.seed, c, s, 0))[0] for s in cols])
    p = probs(ims)
    for k, s in enumerate(cols):
      im = ims[k]
      ax = axes[i, k]
      ax.imshow(im[..., 0] if im.shape[-1] == 1 else np.clip(im, 0, 1), cmap='gray', vmin=0, vmax=1)
      ax.set_xticks([])
      ax.set_yticks([])
      guess = f'{names[p[k].argmax()]} {100 * p[k].max():.0f}%'
      head = ('clean' if s == 0 else f'severity {s}') + '\n' if i == 0 else ''
      ax.set_title(head + guess, fontsize=6,
                   color='black' if p[k].argmax() == y[j] else 'crimson')
      if k == 0:
        ax.set_ylabel(f'{c}\n({names[y[j]]})', fontsize=7)
  fig.suptitle('Corruptions by severity; titles: the prediction and its confidence '
               '(red = wrong)', fontsize=8)
  fig.tight_layout()
  common.save_figure(fig, path)


def curve_png(plt, results: dict, path: str) -> None:
  fig, ax = plt.subplots(figsize=(6.5, 4))
  sev = results['severities']
  for c, v in results['corruptions'].items():
    ax.plot([0, *sev], [100 * results['clean_accuracy'], *[100 * v['accuracy'][str(s)] for s in sev]],
            marker='.', label=c)
  ax.set_xlabel('severity (0 = clean; the ImageNet-C levels, analysis/shift.py PARAMS)')
  ax.set_ylabel('test accuracy (%)')
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, ncol=2)
  ax.set_title(f'{results["model"]}: accuracy under corruption', fontsize=10)
  common.save_figure(fig, path, dpi=110)
