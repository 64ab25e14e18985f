"""`--mode=explain` and `--mode=attack` on a segmentation run (a dense model: a score per class
per pixel).

Explain: a dense network has no single class score, so each map explains the summed logit of one
class over a region of pixels (captum's recipe for segmentation: wrap the model so its output is
the class logits summed over a mask). `RegionScores` is that wrapper; through it the gradient
methods and Grad-CAM of analysis/visualize.py run unchanged. The class (`--explain_class`): true
or predicted = the largest non-background class of the image's ground truth or prediction, or a
class index; the region (`--explain_region`): the pixels predicted as that class (default), its
ground-truth pixels, all pixels, or a box TOP,LEFT,HEIGHT,WIDTH.

Attack: PGD (attacks.ascend) on the mean per-pixel cross-entropy of the labelled pixels:
untargeted (raise it against the truth) and targeted (lower it towards one class for every pixel;
`--attack_target_class`, 0 = background: make the objects vanish). Reported per eps: mIoU and
pixel accuracy under attack (`robust_accuracy` is the pixel accuracy), and for the targeted attack
the share of object pixels turned into the target.
"""

from __future__ import annotations

import dataclasses
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

import attacks
import util
from analysis import attack as attack_lib
from analysis import common, visualize
from analysis import options
from errors import UserError
from store import checkpoints, runs
from train import segmentation, tasks

IGNORE = segmentation.IGNORE
# The attribution methods that run through RegionScores. Occlusion evaluates shifted copies of
# each image in one batch and the guided/deconvnet rules are ReLU-rule variants of the gradient
# maps here; they are classification-only for now.
DENSE_METHODS = ('gradient', 'grad_x_input', 'smoothgrad', 'integrated_gradients', 'gradcam',
                 'gradcam_pp')


def is_segmentation(workdir: str) -> bool:
  """Whether the trained run in `workdir` is a segmentation run (from its config.json)."""
  return checkpoints.load_config(workdir).get('task', 'classification') == 'segmentation'


@dataclasses.dataclass(frozen=True)
class RegionScores:
  """A dense net seen as a classifier: `logits(variables, x)[n, c]` is class c's logit summed
  over `region[n]` (float weights (N, H', W') on the output grid). A batch k times as large as the
  region (integrated gradients stacks its path points) reuses the regions in order."""
  net: runs.Net
  region: jax.Array

  @property
  def preprocess(self):
    return self.net.preprocess

  def _sum(self, dense: jax.Array) -> jax.Array:
    reps = dense.shape[0] // self.region.shape[0]
    return jnp.einsum('nhwc,nhw->nc', dense, jnp.tile(self.region, (reps, 1, 1)))

  def logits(self, variables, x: jax.Array) -> jax.Array:
    return self._sum(self.net.logits(variables, x))

  def with_layer(self, variables, x: jax.Array, layer: str, delta: jax.Array | None = None):
    dense, a = self.net.with_layer(variables, x, layer, delta)
    return self._sum(dense), a


def _largest_class(masks: np.ndarray) -> np.ndarray:
  """Per image, the non-background class with the most pixels (background if there is none)."""
  out = []
  for m in masks:
    counts = np.bincount(m[(m != IGNORE) & (m != 0)].ravel(), minlength=1)
    out.append(int(counts.argmax()) if counts.max() > 0 else 0)
  return np.asarray(out, np.int32)


def choose_class(spec: str, truth: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
  if spec == 'true':
    return _largest_class(truth)
  if spec == 'predicted':
    return _largest_class(pred)
  if spec.isdigit() and int(spec) < num_classes:
    return np.full(len(truth), int(spec), np.int32)
  raise UserError(f'--explain_class={spec!r}: use true, predicted or a class index 0-'
                  f'{num_classes - 1}')


def choose_region(spec: str, classes: np.ndarray, truth: np.ndarray, pred: np.ndarray):
  """(N, H', W') float weights of the pixels whose summed logit is explained, and a note for the
  images whose region came out empty (they fall back to all pixels)."""
  n, h, w = pred.shape
  if spec == 'predicted':
    region = pred == classes[:, None, None]
  elif spec == 'true':
    region = truth == classes[:, None, None]
  elif spec == 'all':
    region = np.ones((n, h, w), bool)
  else:
    try:
      top, left, bh, bw = (int(v) for v in spec.split(','))
    except ValueError:
      raise UserError(f'--explain_region={spec!r}: use predicted, true, all or a box '
                      'TOP,LEFT,HEIGHT,WIDTH in output pixels') from None
    if top < 0 or left < 0 or bh < 1 or bw < 1 or top + bh > h or left + bw > w:
      raise UserError(f'--explain_region box {spec} does not fit the {h}x{w} output')
    region = np.zeros((n, h, w), bool)
    region[:, top:top + bh, left:left + bw] = True
  empty = [i for i in range(n) if not region[i].any()]
  region[empty] = True
  note = (f'images {empty}: the {spec} region of their class is empty; their maps explain the '
          'class summed over all pixels') if empty else ''
  return region.astype(np.float32), note


def default_layer(net, variables, shape) -> str:
  """Grad-CAM's layer: the last of the conv layers with the coarsest grid (FCN: the backbone's
  last conv; U-Net: the bottleneck), where class evidence is most semantic."""
  convs = visualize.conv_layers(net, variables, shape)
  spatial = [(n, s) for n, s in convs if len(s) == 3]
  if not spatial:
    raise UserError('Grad-CAM needs a 2-D conv layer; this model has none')
  coarsest = min(s[0] * s[1] for _, s in spatial)
  return [n for n, s in spatial if s[0] * s[1] == coarsest][-1]


def run_explain(workdir: str, o: options.Explain) -> dict:
  """Maps of the chosen methods on `o.num_images` test images; `W/explain/` gets maps.png and
  results.json/.md (per method: the share of |attribution| inside the region; integrated
  gradients' completeness error)."""
  progress = util.Progress('explain', {'maps': 1.0})
  run = runs.load_run(workdir, o.step)
  tasks.check_mode(run.config, 'explain')
  out_dir = common.output_dir(workdir, 'explain')
  notes = {}
  skipped = [m for m in o.methods if m not in DENSE_METHODS]
  if skipped:
    notes['methods'] = (f'{", ".join(skipped)} not run: on a segmentation run the maps are '
                        f'{", ".join(DENSE_METHODS)}')
  methods = [m for m in o.methods if m in DENSE_METHODS]
  if not methods:
    raise UserError(f'--explain_methods: a segmentation run takes {", ".join(DENSE_METHODS)}')
  other_parts = [p for p in o.parts if p != 'maps']
  if other_parts:
    notes['parts'] = f'{", ".join(other_parts)}: classification runs only; ran maps'
  images, truth, idx = common.test_examples(run, o.num_images, o.seed)
  net, variables = run.net, run.variables
  x = jnp.asarray(images, jnp.float32)
  dense = np.asarray(jax.jit(net.logits)(variables, x))
  pred = dense.argmax(-1)
  truth = np.asarray(segmentation.align(jnp.asarray(truth), dense))
  classes = choose_class(o.explain_class, truth, pred, dense.shape[-1])
  region, note = choose_region(o.region, classes, truth, pred)
  if note:
    notes['region'] = note
  wrapped = RegionScores(net, jnp.asarray(region))
  cls = jnp.asarray(classes)
  layer = o.layer or default_layer(net, variables, images.shape[1:])
  maps, measures = {}, []
  key = jax.random.key(o.seed)
  progress.part('maps', len(methods))
  for m in methods:
    t = time.time()
    delta = None
    if m == 'gradient':
      attr = visualize.gradient(wrapped, variables, x, cls)
    elif m == 'grad_x_input':
      attr = visualize.grad_x_input(wrapped, variables, x, cls)
    elif m == 'smoothgrad':
      noise = visualize.smoothgrad_noise(key, x, o.smoothgrad_samples, o.noise_level)
      attr = visualize.smoothgrad(wrapped, variables, x, cls, noise)
    elif m == 'integrated_gradients':
      base = visualize.baseline(o.ig_baseline, x, run.preprocess.mean, key)
      attr, delta = visualize.integrated_gradients(wrapped, variables, x, cls, base, o.ig_steps)
    else:
      attr = visualize.gradcam(wrapped, variables, x, cls, layer, plus_plus=m == 'gradcam_pp')
    heat = np.asarray(attr if attr.ndim == 3 else visualize.to_map(attr))
    maps[m] = heat
    inside = segmentation_share(heat, region, images.shape[1:3])
    row = {'method': m, 'region_share': float(np.mean(inside)),
           'region_area': float(region.mean()), 'seconds': round(time.time() - t, 2)}
    if delta is not None:  # relative to the score's change along the path
      scores = lambda z: np.asarray(wrapped.logits(variables, z))[np.arange(len(x)), classes]
      gap = np.abs(scores(x) - scores(base))
      row['ig_completeness_error'] = float(np.mean(np.abs(np.asarray(delta)) /
                                                   np.maximum(gap, 1e-6)))
    measures.append(row)
    progress.advance()
  names = list(run.info.class_names) or [str(c) for c in range(dense.shape[-1])]
  _maps_png(images, truth, pred, region, classes, maps, names, dense.shape[-1],
            os.path.join(out_dir, 'maps.png'))
  results = {'task': 'segmentation', 'step': run.step, 'images': idx.tolist(),
             'classes': classes.tolist(), 'class_names': [names[c] for c in classes],
             'explain_class': o.explain_class, 'region': o.region, 'layer': layer,
             'methods': measures, 'notes': notes, 'maps': 'explain/maps.png'}
  common.stamp(results, progress)
  common.write_outputs(out_dir, results, measures, title='Attribution maps of a segmentation run'
                       f' (class logit summed over the {o.region} region)')
  return results


def segmentation_share(heat: np.ndarray, region: np.ndarray, input_hw) -> np.ndarray:
  """Per image, the share of the map's mass inside the region (the region centred in the input
  grid when the output is smaller, as a valid-padding U-Net's is)."""
  h, w = region.shape[1:]
  top, left = (input_hw[0] - h) // 2, (input_hw[1] - w) // 2
  mass = np.abs(heat)
  inside = (mass[:, top:top + h, left:left + w] * region).sum(axis=(1, 2))
  return inside / np.maximum(mass.sum(axis=(1, 2)), 1e-12)


def _maps_png(images, truth, pred, region, classes, maps, names, num_classes, path) -> None:
  plt = common.pyplot()
  cols = ['image + region', 'ground truth', 'prediction', *maps]
  n = len(images)
  fig, axes = plt.subplots(n, len(cols), figsize=(1.7 * len(cols), 1.8 * n + 0.3), squeeze=False)
  for i in range(n):
    img = images[i, ..., 0] if images.shape[-1] == 1 else images[i]
    axes[i, 0].imshow(img, cmap='gray')
    axes[i, 0].contour(region[i], levels=[0.5], colors='cyan', linewidths=0.8)
    axes[i, 0].set_ylabel(names[classes[i]], fontsize=7)
    axes[i, 1].imshow(segmentation.colour(truth[i], num_classes), interpolation='nearest')
    axes[i, 2].imshow(segmentation.colour(pred[i], num_classes), interpolation='nearest')
    for j, m in enumerate(maps):
      heat = maps[m][i]
      signed = heat.min() < 0  # Grad-CAM and |attribution| maps are >= 0: one-sided scale
      bound = np.abs(heat).max() or 1.0
      axes[i, 3 + j].imshow(heat, cmap='RdBu_r' if signed else 'inferno',
                            vmin=-bound if signed else 0, vmax=bound)
  for j, c in enumerate(cols):
    axes[0, j].set_title(c.replace('_', ' '), fontsize=7)
  for ax in axes.ravel():
    ax.set_xticks([])
    ax.set_yticks([])
  fig.tight_layout()
  common.save_figure(fig, path)


# ----------------------------------------------------------------------------- attack


def _mean_pixel_ce(logits, labels):
  """Per image, the mean cross-entropy of its labelled pixels."""
  labels = segmentation.align(labels, logits)
  valid = labels != IGNORE
  ce = segmentation.pixel_losses(logits, labels)
  return jnp.sum(jnp.where(valid, ce, 0), axis=(1, 2)) / jnp.maximum(valid.sum(axis=(1, 2)), 1)


def pgd_dense(f, x, masks, eps: float, norm: str, steps: int, key, target: int | None = None):
  """PGD on the mean per-pixel cross-entropy of each image's labelled pixels: untargeted
  (ascend it against `masks`) or towards `target` for every labelled pixel (descend it)."""
  step_size = attacks.pgd_step_size(eps, steps, None)
  start = attacks.project(x, x + (jax.random.uniform(key, x.shape, minval=-eps, maxval=eps)
                                  if norm == 'linf' else 0.0), eps, norm)
  if target is None:
    objective = lambda xa: _mean_pixel_ce(f(xa), masks)
  else:
    goal = jnp.where(masks == IGNORE, IGNORE, target).astype(masks.dtype)
    objective = lambda xa: -_mean_pixel_ce(f(xa), goal)
  return attacks.ascend(objective, x, start, eps, norm, steps, step_size)


def run_attack(workdir: str, o: options.Attack) -> dict:
  """Untargeted and targeted PGD per eps on `o.examples` test images; `W/attack/` gets
  results.json/.md and examples.png."""
  progress = util.Progress('attack', {'whitebox': 1.0})
  run = runs.load_run(workdir, o.step)
  tasks.check_mode(run.config, 'attack')
  num_classes, target_class = run.info.num_classes, o.target_class
  if not 0 <= target_class < num_classes:
    raise UserError(f'--attack_target_class={target_class}: use a class 0-{num_classes - 1}')
  attack_lib.check_options(o, workdir)
  notes = {}
  other = [p for p in o.parts if p != 'whitebox']
  if other:
    notes['parts'] = f'{", ".join(other)}: classification runs only; ran whitebox (PGD)'
  out_dir = common.output_dir(workdir, 'attack')
  images, masks, idx = common.test_examples(run, o.examples, o.seed)
  eps_list = tuple(o.eps) or attack_lib.default_eps(o.norm, images.shape[-1])
  f = run.net.logits01(run.variables)

  @jax.jit
  def predict(xa, yb):  # the predictions and the task's confusion matrix of one batch
    logits = f(xa)
    conf = segmentation.ConfusionMatrix.from_model_output(logits=logits, labels=yb).matrix
    return jnp.argmax(logits, -1), conf
  x_all = images.astype(np.float32) / 255.0
  key = jax.random.key(o.seed)

  def measure(adv_fn):
    conf, hits, objects, preds = None, 0, 0, []
    for s in range(0, len(x_all), o.batch):
      xb, yb = jnp.asarray(x_all[s:s + o.batch]), jnp.asarray(masks[s:s + o.batch])
      xa = adv_fn(xb, yb, jax.random.fold_in(key, s))
      p, c = (np.asarray(a) for a in predict(xa, yb))
      conf = c if conf is None else conf + c
      y = np.asarray(segmentation.align(yb, p[..., None]))
      obj = (y != IGNORE) & (y != target_class)
      hits += int((p[obj] == target_class).sum())
      objects += int(obj.sum())
      preds.append((np.asarray(xa), p))
      progress.advance(len(xb) / len(x_all))
    return segmentation.scores(conf), hits / max(objects, 1), preds

  t = time.time()
  progress.part('whitebox', 1 + 2 * len(eps_list))  # clean, then PGD and targeted PGD per eps
  clean, clean_rate, clean_preds = measure(lambda xb, yb, k: xb)
  rows = [{'attack': 'none', 'eps': 0.0, 'norm': o.norm, 'miou': clean['miou'],
           'pixel_accuracy': clean['pixel_accuracy'], 'robust_accuracy': clean['pixel_accuracy'],
           'target_rate': clean_rate, 'seconds': round(time.time() - t, 2)}]
  shown = {'clean': clean_preds[0]}
  for eps in eps_list:
    for name, target in (('pgd', None), ('pgd_targeted', target_class)):
      fn = jax.jit(lambda xb, yb, k, e=eps, tg=target: pgd_dense(f, xb, yb, e, o.norm,
                                                                 o.pgd_steps, k, tg))
      t = time.time()
      s, rate, preds = measure(fn)
      rows.append({'attack': name, 'eps': float(eps), 'norm': o.norm, 'miou': s['miou'],
                   'pixel_accuracy': s['pixel_accuracy'], 'robust_accuracy': s['pixel_accuracy'],
                   'target_rate': rate, 'seconds': round(time.time() - t, 2)})
      if eps == eps_list[-1]:
        shown[name] = preds[0]
  names = list(run.info.class_names) or [str(c) for c in range(num_classes)]
  _attack_png(images, masks, shown, eps_list[-1], target_class, names, num_classes,
              os.path.join(out_dir, 'examples.png'))
  results = {'task': 'segmentation', 'step': run.step, 'num_examples': len(images),
             'norm': o.norm, 'steps': o.pgd_steps, 'target_class': target_class,
             'target_name': names[target_class], 'clean_miou': clean['miou'],
             'clean_accuracy': clean['pixel_accuracy'], 'attacks': rows[1:], 'notes': notes,
             'figure': 'attack/examples.png'}
  common.stamp(results, progress)
  common.write_outputs(out_dir, results, rows, title=f'PGD on a segmentation run ({o.norm}, '
                       f'{o.pgd_steps} steps, {len(images)} test images; target_rate: share of '
                       f'object pixels predicted as {names[target_class]})')
  return results


def _attack_png(images, masks, shown, eps, target, names, num_classes, path, n: int = 4) -> None:
  plt = common.pyplot()
  n = min(n, len(images))
  cols = [('clean', 'prediction'), ('pgd', f'untargeted eps {eps:.3g}'),
          ('pgd_targeted', f'to {names[target]}, eps {eps:.3g}')]
  fig, axes = plt.subplots(n, 3 + 2 * (len(cols) - 1), figsize=(11, 1.9 * n + 0.3), squeeze=False)
  for i in range(n):
    axes[i, 0].imshow(images[i, ..., 0] if images.shape[-1] == 1 else images[i], cmap='gray')
    axes[i, 1].imshow(segmentation.colour(masks[i], num_classes), interpolation='nearest')
    j = 2
    for key, _ in cols:
      xa, p = shown[key]
      if key != 'clean':
        axes[i, j].imshow(xa[i, ..., 0] if xa.shape[-1] == 1 else xa[i], cmap='gray', vmin=0,
                          vmax=1)
        j += 1
      axes[i, j].imshow(segmentation.colour(p[i], num_classes), interpolation='nearest')
      j += 1
  titles = ['image', 'ground truth', 'clean prediction', 'untargeted PGD image',
            f'its prediction (eps {eps:.3g})', f'PGD to {names[target]}', 'its prediction']
  for j, tt in enumerate(titles[:axes.shape[1]]):
    axes[0, j].set_title(tt, fontsize=7)
  for ax in axes.ravel():
    ax.set_xticks([])
    ax.set_yticks([])
  fig.tight_layout()
  common.save_figure(fig, path)
