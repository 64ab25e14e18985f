"""`--mode=explain`: the attribution maps of a trained run with their faithfulness, sanity and
fragility, feature-map projections, activation maximization and feature inversion, into
`W/explain/` (the methods themselves are analysis/visualize.py). The mode is a table of parts
over a shared Context; its options are analysis/options.py's `Explain`.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

import util
from analysis import common, options
from analysis import visualize as vis
from errors import UserError
from kernels import convolutions
from store import runs
from train import tasks

METHODS = options.METHODS
PARTS = options.EXPLAIN_PARTS
Options = options.Explain  # the mode's options and their defaults (analysis/options.py)
# Methods whose map is a smooth function of the input once ReLU is made smooth, so the
# targeted fragility attack can follow its gradient; the others are too costly or piecewise.
ATTACKABLE = ('gradient', 'grad_x_input', 'smoothgrad', 'integrated_gradients', 'gradcam')


def check_options(o: Options) -> None:
  bad = [m for m in o.methods if m not in METHODS]
  if bad:
    raise UserError(f'unknown explain method {bad[0]!r}; choose from {", ".join(METHODS)}')
  bad = [p for p in o.parts if p not in PARTS]
  if bad:
    raise UserError(f'unknown explain part {bad[0]!r}; choose from {", ".join(PARTS)}')
  util.check_positive(o, ('num_images', 'ig_steps', 'smoothgrad_samples', 'occlusion_size',
                          'occlusion_stride', 'maximize_steps', 'invert_steps', 'invert_images'),
                      'explain_')
  util.check_positive(o, ('ig_steps',), 'explain_', minimum=2)


def _method_fns(o: Options, mean, layer: str | None, noise):
  """name -> f(net, variables, x, classes) -> (N, H, W) map: sensitivities (gradients) as
  absolute values summed over channels, contributions (grad x input, IG) with their sign."""
  base = lambda x: vis.baseline(o.ig_baseline, x, mean, jax.random.key(o.seed))
  fns = {
      'gradient': lambda n, v, x, c: vis.to_map(vis.gradient(n, v, x, c)),
      'grad_x_input': lambda n, v, x, c: vis.grad_x_input(n, v, x, c).sum(-1),
      'smoothgrad': lambda n, v, x, c: vis.to_map(vis.smoothgrad(n, v, x, c, noise)),
      'integrated_gradients': lambda n, v, x, c: vis.integrated_gradients(
          n, v, x, c, base(x), o.ig_steps)[0].sum(-1),
      'occlusion': lambda n, v, x, c: vis.occlusion(n, v, x, c, o.occlusion_size,
                                                o.occlusion_stride, o.occlusion_fill),
      'guided_backprop': lambda n, v, x, c: vis.to_map(vis.relu_rule_gradient(n, v, x, c, 'guided')),
      'deconvnet': lambda n, v, x, c: vis.to_map(vis.relu_rule_gradient(n, v, x, c, 'deconvnet')),
  }
  if layer:
    fns['gradcam'] = lambda n, v, x, c: vis.gradcam(n, v, x, c, layer)
    fns['gradcam_pp'] = lambda n, v, x, c: vis.gradcam(n, v, x, c, layer, plus_plus=True)
  return fns


# Maps that keep their sign (evidence for the class > 0, against < 0): a diverging colormap.
SIGNED = ('grad_x_input', 'integrated_gradients', 'occlusion')


def _overlay_grid(plt, images, maps: dict, titles: list[str], path: str) -> None:
  """maps.png: a row per image (true and predicted class with its confidence), a column per
  method, each map over its image scaled by its largest magnitude, a colorbar per column."""
  names = list(maps)
  n = len(images)
  fig, axes = plt.subplots(n, len(names) + 1, figsize=(1.6 * (len(names) + 1), 1.6 * n + 0.6),
                           squeeze=False)
  for i in range(n):
    common.show_image(axes[i, 0], images[i])
    axes[i, 0].set_title(titles[i], fontsize=6)
    for j, name in enumerate(names):
      art = common.show_map(axes[i, j + 1], maps[name][i], name in SIGNED, under=images[i])
      if i == 0:
        axes[i, j + 1].set_title(name.replace('_', ' '), fontsize=7)
      if i == n - 1:
        common.colorbar(fig, art, axes[i, j + 1], 'contribution / its max |value|'
                        if name in SIGNED else 'sensitivity / its max')
  fig.suptitle('Attribution of the explained class: red = evidence for it, blue = against '
               '(signed maps); bright = sensitive (the others)', fontsize=8)
  common.save_figure(fig, path)


def _targets(net, o: Options, class_names: list[str], convs) -> list[tuple[str, Callable]]:
  """(label, score(variables, x)) of each activation-maximization target."""
  out = []
  names = [name for name, _ in convs]
  for spec in o.maximize_targets or ('classes',):
    if spec == 'classes':
      out += [(f'logit of {name}', lambda v, x, c=c: net.logits(v, x)[:, c])
              for c, name in enumerate(class_names)]
      continue
    layer, _, channel = spec.rpartition(':')
    if layer not in names or not channel.isdigit():
      raise UserError(f"maximize target {spec!r} is not 'classes' or LAYER:CHANNEL with a conv "
                      f'layer of this model ({", ".join(names)})')
    ch = int(channel)
    out.append((spec, lambda v, x, layer=layer, ch=ch: net.with_layer(v, x, layer)[1][..., ch].mean(
        axis=tuple(range(1, x.ndim - 1)))))
  return out


def list_layers(workdir: str) -> list[tuple[str, tuple[int, ...]]]:
  """The conv layers of a trained run's model, with their output shapes."""
  run = runs.load_run(workdir)
  return vis.conv_layers(run.net, run.variables, run.info.shape)


@dataclasses.dataclass
class Context:
  """What every part of `--mode=explain` shares: the run, its network (and an XLA copy for
  second derivatives), the picked images and the classes each map explains, and the outputs."""
  workdir: str
  run: runs.Run
  o: Options
  t_start: float
  model: Any
  net: runs.Net
  smooth_net: runs.Net
  device: Any
  variables: dict
  shape: tuple
  convs: list            # (conv layer, output shape) in forward order
  spatial: list
  image_model: bool
  layer: str             # the layer of Grad-CAM and the projections
  out: str               # W/explain
  plt: Any
  images: np.ndarray
  labels: np.ndarray
  idx: np.ndarray
  x: jax.Array
  classes: jax.Array
  notes: dict
  results: dict
  key: jax.Array
  progress: util.Progress


def _maps(ctx: Context) -> None:
  """Attribution maps of every method with their faithfulness (deletion / insertion AUC),
  sanity (cascading randomization) and fragility (random and targeted perturbations)."""
  (workdir, run, o, t_start, model, net, smooth_net, device, variables, shape, image_model,
   layer, out, plt, images, labels, x, classes, notes, results, key) = (
      ctx.workdir, ctx.run, ctx.o, ctx.t_start, ctx.model, ctx.net, ctx.smooth_net, ctx.device,
      ctx.variables, ctx.shape, ctx.image_model, ctx.layer, ctx.out, ctx.plt, ctx.images,
      ctx.labels, ctx.x, ctx.classes, ctx.notes, ctx.results, ctx.key)
  noise = vis.smoothgrad_noise(key, x, o.smoothgrad_samples, o.noise_level)
  fns = _method_fns(o, run.preprocess.mean, layer if image_model else None, noise)
  cheap = dataclasses.replace(o, ig_steps=min(o.ig_steps, 16))
  attack_fns = _method_fns(cheap, run.preprocess.mean, layer if image_model else None,
                           noise[:8])
  methods = []
  for m in o.methods:
    if m not in fns or (not image_model and m in ('occlusion', 'gradcam', 'gradcam_pp')):
      notes[m] = ('needs 2-D images' if not image_model else
                  'needs a conv layer with spatial extent; this model has none')
      continue
    methods.append(m)
  random_vars = jax.device_put(model.init(jax.random.key(o.seed + 1), x[:1] * 0, train=False),
                               device)
  cascade = vis.cascading_randomization(variables, random_vars,
                                    vis.module_order(net, variables, shape))
  rng = np.random.default_rng(o.seed)
  small = jnp.asarray(rng.uniform(-2, 2, x.shape), jnp.float32)  # +-2 of 255 levels
  x_noisy = jnp.clip(x + small, 0, vis.PIXEL_MAX)
  same = np.asarray(jnp.argmax(net.logits(variables, x_noisy), 1) ==
                    jnp.argmax(net.logits(variables, x), 1))
  maps, rows = {}, []
  ctx.progress.part('maps', len(methods) + 1)
  for i, m in enumerate(methods + ['random']):
    # A method's share of the part: its map, the sanity cascade (a map per layer), two more.
    tick = functools.partial(ctx.progress.advance, 1 / (len(cascade) + 3))
    if m == 'random':
      maps[m] = np.asarray(jax.random.uniform(key, x.shape[:-1]))
      elapsed = 0.0
    else:
      fn = jax.jit(functools.partial(fns[m], net))
      jax.block_until_ready(fn(variables, x, classes))  # compile
      t = time.perf_counter()
      maps[m] = np.asarray(jax.block_until_ready(fn(variables, x, classes)))
      elapsed = (time.perf_counter() - t) / len(x)
    row = {'method': m, 'seconds_per_image': round(elapsed, 5)}
    if image_model:
      _, _, d_auc, i_auc = jax.jit(functools.partial(vis.deletion_insertion, net))(
          variables, x, classes, jnp.asarray(maps[m]))
      row['deletion_auc'] = float(np.mean(d_auc))
      row['insertion_auc'] = float(np.mean(i_auc))
    tick()
    if m != 'random':
      per_layer = []
      for name, v in cascade:
        per_layer.append((name, vis.spearman(maps[m], np.asarray(fn(v, x, classes)))))
        tick()
      row['sanity_rank_corr'] = per_layer[-1][1]
      row['sanity_cascade'] = [[name, round(r, 4)] for name, r in per_layer]  # top first
      noisy = np.asarray(fn(variables, x_noisy, classes))
      row['fragility_random_topk'] = vis.topk_intersection(maps[m][same], noisy[same])
      row['fragility_random_rank_corr'] = vis.spearman(maps[m][same], noisy[same])
      if m in ATTACKABLE and image_model:
        def smooth_map(v, xp, m=m):  # a cheaper surrogate of the map guides the attack
          with vis.relu_rule('softplus'):
            return attack_fns[m](smooth_net, v, xp, classes)
        xp = vis.targeted_perturbation(net, variables, x, classes, smooth_map)
        attacked = np.asarray(fn(variables, xp, classes))
        row['fragility_topk'] = vis.topk_intersection(maps[m], attacked)
        row['fragility_rank_corr'] = vis.spearman(maps[m], attacked)
        tick()
      else:
        row['fragility_topk'] = None
        notes.setdefault(f'{m}: fragility_topk', 'no targeted attack: ' + (
            'the map is not a smooth function of the input (or too costly to differentiate)'
            if image_model else 'it is implemented for 2-D images'))
    rows.append(row)
    ctx.progress.advance_to(i + 1)
    fmt = lambda v: 'n/a' if v is None else f'{v:.3f}'
    logging.info('explain: %s: deletion AUC %s, insertion AUC %s, sanity %s (%.0f s so far)',
                 m, fmt(row.get('deletion_auc')), fmt(row.get('insertion_auc')),
                 fmt(row.get('sanity_rank_corr')), time.time() - t_start)
  if image_model:
    probs = np.asarray(jax.nn.softmax(net.logits(variables, x)))
    names = common.class_names(run.info)
    titles = [common.example_title(names, int(t), int(p.argmax()), float(p.max()))
              for t, p in zip(labels, probs)]
    if o.explain_class != 'predicted':
      explained = np.asarray(classes)
      titles = [t + (f'\nmaps of {names[c]}' if c != int(p.argmax()) else '')
                for t, c, p in zip(titles, explained, probs)]
    _overlay_grid(plt, images, {m: maps[m] for m in methods}, titles, f'{out}/maps.png')
  results['methods'] = rows
  results['fraction_prediction_unchanged_by_noise'] = float(same.mean())
  columns = ['method', 'deletion_auc', 'insertion_auc', 'sanity_rank_corr', 'fragility_topk',
             'fragility_random_topk', 'seconds_per_image']
  common.write_outputs(out, results, rows, f'Attribution maps of {workdir}', columns,
                       name='metrics')


def _projections(ctx: Context) -> None:
  """Deconvnet projections of the top-activating test images of 4 channels of `layer`."""
  (run, net, variables, layer, out, plt, results) = (
      ctx.run, ctx.net, ctx.variables, ctx.layer, ctx.out, ctx.plt, ctx.results)
  if not layer:
    return
  test = run.test_split()
  pool = test.images[:2000].astype(np.float32)
  rows_img, row_labels = [], []
  ctx.progress.part('projections', 4)
  for channel in range(4):
    top, peaks = vis.top_activating(net, variables, pool, layer, channel)
    proj = np.asarray(vis.project(net, variables, jnp.asarray(pool[top]), layer, channel))
    proj = np.abs(proj).sum(-1, keepdims=True)
    proj = proj / (proj.max(axis=(1, 2, 3), keepdims=True) + 1e-8) * vis.PIXEL_MAX
    rows_img += [pool[top], proj]
    row_labels += [f'{layer} ch {channel}: top 9', 'deconvnet projections']
    results.setdefault('projections', []).append(
        {'layer': layer, 'channel': channel, 'top_images': top.tolist(),
         'peak_activations': [round(float(p), 4) for p in peaks]})
    ctx.progress.advance()
  common.image_grid(plt, rows_img, row_labels, f'{out}/projections.png')


def _maximize(ctx: Context) -> None:
  """Activation maximization of classes or channels (`--explain_maximize_targets`)."""
  (run, o, net, variables, shape, convs, image_model, out, plt, results) = (
      ctx.run, ctx.o, ctx.net, ctx.variables, ctx.shape, ctx.convs, ctx.image_model, ctx.out,
      ctx.plt, ctx.results)
  if not image_model:
    return
  rows_img, row_labels, maxi = [], [], []
  targets = _targets(net, o, common.class_names(run.info), convs)
  ctx.progress.part('maximize', len(targets))
  for i, (target, score) in enumerate(targets):
    imgs, start, end = vis.maximize(net, variables, shape, score, starts=3,
                                steps=o.maximize_steps, jitter=o.jitter,
                                blur_every=o.blur_every, fourier=o.fourier, seed=o.seed + i)
    rows_img.append(imgs)
    row_labels.append(target)
    maxi.append({'target': target, 'start': [round(float(s), 3) for s in start],
                 'end': [round(float(e), 3) for e in end]})
    ctx.progress.advance()
  results['maximization'] = maxi
  common.image_grid(plt, rows_img, row_labels, f'{out}/maximization.png')
  util.write_json(f'{out}/maximization.json', maxi)


def _invert(ctx: Context) -> None:
  """Feature inversion from every conv layer, with PSNR and SSIM per layer."""
  (o, net, variables, convs, image_model, out, plt, images, idx, x, results) = (
      ctx.o, ctx.net, ctx.variables, ctx.convs, ctx.image_model, ctx.out, ctx.plt, ctx.images,
      ctx.idx, ctx.x, ctx.results)
  if not image_model:
    return
  xi = x[:o.invert_images]
  inv_rows, grid, labels_ = [], [images[:o.invert_images]], ['originals']
  ctx.progress.part('invert', len(convs))
  for name, s in convs:
    rec = vis.invert(net, variables, xi, name, steps=o.invert_steps, seed=o.seed)
    p, q = vis.psnr_ssim(rec, xi)
    inv_rows.append({'layer': name, 'shape': list(s), 'psnr': float(np.mean(p)),
                     'ssim': float(np.mean(q))})
    grid.append(np.asarray(rec))
    labels_.append(f'{name}: {np.mean(p):.1f} dB')
    ctx.progress.advance()
  util.write_json(f'{out}/inversion.json', {'images': idx[:o.invert_images].tolist(),
                                            'layers': inv_rows})
  fig, axes = plt.subplots(1, 2, figsize=(9, 3))
  axes[0].plot(range(len(inv_rows)), [r['psnr'] for r in inv_rows], 'o-')
  axes[0].set(xlabel='conv layer (input to output)', ylabel='PSNR (dB)')
  axes[1].plot(range(len(inv_rows)), [r['ssim'] for r in inv_rows], 'o-')
  axes[1].set(xlabel='conv layer (input to output)', ylabel='SSIM')
  common.save_figure(fig, f'{out}/inversion_quality.png')
  common.image_grid(plt, grid, labels_, f'{out}/inversion.png')
  results['inversion'] = inv_rows


# The parts of --mode=explain (`--explain_parts`), in the order they run, and their rough
# shares of its time (the default run, docs/explain.md), which weight the overall ETA.
PART_SHARES = {'maps': 6.0, 'projections': 0.5, 'maximize': 1.5, 'invert': 2.0}
PART_FUNCTIONS = (('maps', _maps), ('projections', _projections), ('maximize', _maximize),
                  ('invert', _invert))


def context(workdir: str, o: Options) -> Context:
  """The shared context of the parts: the run loaded and checked, images and classes picked."""
  check_options(o)
  t_start = time.time()
  progress = util.Progress('explain', {p: PART_SHARES[p] for p in o.parts})
  run = runs.load_run(workdir, o.step)
  tasks.check_mode(run.config, 'explain')
  # The run's own convolutions (oneDNN's on AVX-512 CPUs: 20x faster input gradients here than
  # XLA's, whose stem backward is slow); the targeted attack needs second derivatives, which
  # oneDNN's first-order VJP does not give, so it differentiates a copy on XLA's.
  model = run.model
  net = run.net
  smooth_net = runs.Net(runs.build(run.config, run.info.num_classes, run.config.dtype,
                                   convolutions=convolutions.XLA), run.preprocess)
  # Every array on one device, committed alike: jit caches by placement, and a mix of restored
  # and freshly initialized arrays would recompile at every randomization step.
  device = jax.local_devices()[0]
  variables = jax.device_put(run.variables, device)
  shape = run.info.shape
  convs = vis.conv_layers(net, variables, shape)
  spatial = [name for name, s in convs if len(s) == 3 and s[0] * s[1] > 1]
  image_model = len(shape) == 3
  layer = o.layer or (spatial[-1] if spatial else '')
  if o.layer and o.layer not in [name for name, _ in convs]:
    raise UserError(f'layer {o.layer!r} is not a conv layer of {run.config.model.name}; its '
                    f'layers: {", ".join(name for name, _ in convs)}')
  out = common.output_dir(workdir, 'explain')
  plt = common.pyplot()
  images, labels, idx = common.test_examples(run, o.num_images, o.seed, per_class=True)
  x = jax.device_put(jnp.asarray(images, jnp.float32), device)
  if o.explain_class == 'true':
    classes = jnp.asarray(labels, jnp.int32)
  elif o.explain_class == 'predicted':
    classes = jnp.argmax(net.logits(variables, x), axis=1).astype(jnp.int32)
  elif o.explain_class.isdigit() and int(o.explain_class) < run.info.num_classes:
    classes = jnp.full((len(x),), int(o.explain_class), jnp.int32)
  else:
    raise UserError(f"--explain_class must be true, predicted or a class index below "
                    f"{run.info.num_classes}, got {o.explain_class!r}")
  classes = jax.device_put(classes, device)
  notes: dict[str, str] = {}
  results: dict[str, Any] = {'workdir': '.', 'step': run.step, 'model': run.config.model.name,
                             'images': idx.tolist(), 'labels': labels.tolist(),
                             'classes': np.asarray(classes).tolist(), 'layer': layer,
                             'notes': notes}
  key = jax.random.key(o.seed)
  return Context(workdir=workdir, run=run, o=o, t_start=t_start, model=model, net=net,
                 smooth_net=smooth_net, device=device, variables=variables, shape=shape,
                 convs=convs, spatial=spatial, image_model=image_model, layer=layer, out=out,
                 plt=plt, images=images, labels=labels, idx=idx, x=x, classes=classes,
                 notes=notes, results=results, key=key, progress=progress)


def run_explain(workdir: str, o: Options) -> dict:
  """`--mode=explain`: the parts `o.parts` of this module on a trained run, into `W/explain/`."""
  ctx = context(workdir, o)
  for name, fn in PART_FUNCTIONS:
    if name in o.parts:
      fn(ctx)
  # metrics.json is the maps part's; a run of other parts alone must not overwrite it.
  util.write_json(f'{ctx.out}/metrics.json' if 'maps' in o.parts else f'{ctx.out}/parts.json',
                  common.stamp(ctx.results, ctx.progress))
  return ctx.results
