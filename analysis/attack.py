"""`--mode=attack`: how a trained run is fooled. White-box (FGSM, PGD, APGD-CE, APGD-T) and
black-box (Square) robust accuracy against eps, fooling images, adversarial patches, transfer
to another run, membership inference and reconstruction, into `W/attack/`. The attacks
themselves are the pure library `attacks/`; this module is the mode that runs them.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

import attacks
import util
from analysis import common, options, privacy, visualize
from data import datasets
from errors import UserError
from store import checkpoints, runs
from train import tasks

PARTS = options.ATTACK_PARTS
Options = options.Attack  # the mode's options and their defaults (analysis/options.py)
# Default eps per norm for [0, 1] images: gray (MNIST-like; the MNIST challenge uses 0.3) and
# colour (CIFAR-like; RobustBench's L-inf threat model is 8/255, its L2 one 0.5).
DEFAULT_EPS = {('linf', 'gray'): (0.05, 0.1, 0.2), ('linf', 'colour'): (2 / 255, 4 / 255, 8 / 255),
               ('l2', 'gray'): (0.5, 1.0, 2.0), ('l2', 'colour'): (0.25, 0.5, 1.0)}


def default_eps(norm: str, channels: int) -> tuple[float, ...]:
  return DEFAULT_EPS[(norm, 'gray' if channels == 1 else 'colour')]


def check_options(o: Options, workdir: str) -> None:
  """Every setting and every other workdir, checked from configs before anything compiles."""
  unknown = sorted(set(o.parts) - set(PARTS))
  if unknown:
    raise UserError(f'unknown attack part(s) {", ".join(unknown)}; use {", ".join(PARTS)}')
  for e in o.eps:
    attacks.check(e, o.norm, o.loss)
  util.check_positive(o, ('pgd_steps', 'restarts', 'examples', 'batch', 'apgd_steps',
                          'apgd_targets', 'square_queries', 'fooling_steps', 'patch_steps',
                          'membership_examples'), 'attack_')
  attacks.check(0.0, o.norm, o.loss, o.pgd_steps, o.restarts)
  cfg = checkpoints.load_config(workdir)
  info = datasets.info(cfg.dataset)
  # Radii are in pixel units of images in [0, 1]: beyond the cube's size every image is
  # reachable (L-inf 1; L2 the cube's diagonal), so a larger eps is a unit mistake (8 for 8/255).
  widest = 1.0 if o.norm == 'linf' else float(np.sqrt(np.prod(info.shape)))
  too_wide = [e for e in o.eps if e > widest]
  if too_wide:
    raise UserError(f'--attack_eps={too_wide[0]:g} is beyond {widest:g}, the widest {o.norm} '
                    'radius for images in [0, 1]; give radii in [0, 1] pixel units, e.g. 8/255')
  if not 0 <= o.patch_target < info.num_classes:
    raise UserError(f'--attack_patch_target must be a class index below {info.num_classes}, '
                    f'got {o.patch_target}')
  if o.patch_size < 0 or (len(info.shape) == 3 and o.patch_size >= min(info.shape[:2])):
    raise UserError(f'--attack_patch_size must be >= 0 and smaller than the image side '
                    f'{min(info.shape[:2])}, got {o.patch_size}')
  if o.target_workdir:
    runs.check_run(o.target_workdir, '--target_workdir', info.shape, info.num_classes,
                   what='the attacked run')
  if o.references:
    try:
      privacy.check_references(workdir, o.references)
    except UserError as e:
      raise UserError(f'--membership_reference_workdirs: {e}') from None


def _batched(fn, arrays, batch: int, key=None, tick: Callable[[float], None] | None = None):
  """fn(*chunks[, key]) over fixed-size chunks (the last padded by repetition, so one compiled
  shape serves every call); the outputs' leading axes concatenated and cut back. `tick(share)`
  is told each chunk's share of the call as it ends (progress)."""
  n = len(arrays[0])
  pad = (-n) % batch
  arrays = [np.concatenate([a, np.repeat(a[-1:], pad, 0)]) if pad else a for a in arrays]
  outs = []
  starts = range(0, n + pad, batch)
  for j, i in enumerate(starts):
    chunk = [jnp.asarray(a[i:i + batch]) for a in arrays]
    outs.append(fn(*chunk, jax.random.fold_in(key, j)) if key is not None else fn(*chunk))
    if tick:
      jax.block_until_ready(outs[-1])
      tick(1 / len(starts))
  return jax.tree_util.tree_map(lambda *o: np.concatenate([np.asarray(v) for v in o])[:n], *outs)


def _row(attack: str, eps: float, norm: str, x, x_adv, y, clean_ok, robust, queries,
         seconds: float, **extra) -> dict:
  broken = clean_ok & ~robust
  size = attacks.norms(x, x_adv)[norm][broken] if x_adv is not None else np.zeros(0)
  return {'attack': attack, 'norm': norm, 'eps': float(eps),
          'robust_accuracy': float(robust.mean()), 'attack_success_rate':
          float(broken.sum() / max(clean_ok.sum(), 1)),
          'mean_perturbation_norm': float(size.mean()) if len(size) else None,
          'queries': float(queries), 'seconds': round(seconds, 2), **extra}


@dataclasses.dataclass
class Context:
  """What every part of `--mode=attack` shares: the run, its attacked network, the picked test
  examples and their clean predictions, and the outputs the parts fill in."""
  run: runs.Run
  o: Options
  shape: tuple
  image_model: bool
  eps_list: tuple
  device: Any
  variables: dict
  net: runs.Net
  f: Callable            # images in [0, 1] -> logits
  out: str               # W/attack
  plt: Any
  images: np.ndarray
  labels: np.ndarray
  idx: np.ndarray
  x: np.ndarray
  y: np.ndarray
  n: int
  batch: int
  key: jax.Array
  logits_jit: Callable
  predict: Callable
  train_split: Callable  # the run's training split, loaded once when a part asks
  pred: Callable         # batched predictions of images in [0, 1]
  softmax: Callable      # jitted softmax of images in [0, 1]
  names: list            # class names (common.class_names)
  clean_ok: np.ndarray
  notes: dict
  warnings: list
  results: dict
  rows: list
  adversarials: dict     # eps -> PGD examples (whitebox), for transfer and the plots
  worst: dict            # eps -> robust under every white-box attack
  progress: util.Progress


def _whitebox(ctx: Context) -> None:
  """FGSM (L-inf), PGD, then AutoAttack's cascade: APGD-CE on every example and APGD-T
  on those it left (library pieces scheduled on the unbroken examples); the worst case per eps."""
  (run, o, eps_list, f, x, y, batch, key, logits_jit, pred, clean_ok, results, rows,
   adversarials, worst) = (
      ctx.run, ctx.o, ctx.eps_list, ctx.f, ctx.x, ctx.y, ctx.batch, ctx.key, ctx.logits_jit,
      ctx.pred, ctx.clean_ok, ctx.results, ctx.rows, ctx.adversarials, ctx.worst)
  t_part = time.time()
  names = ('fgsm', 'pgd', 'apgd_ce', 'apgd_t') if o.norm == 'linf' else ('pgd', 'apgd_ce', 'apgd_t')
  progress = ctx.progress.part('whitebox', len(eps_list) * len(names))
  tick = progress.advance
  for e_i, eps in enumerate(eps_list):
    robust_any = clean_ok.copy()
    if o.norm == 'linf':
      t = time.time()
      fgsm_fn = jax.jit(lambda a, b, e=eps: attacks.fgsm(f, a, b, e, loss=o.loss))
      xa = _batched(fgsm_fn, [x, y], batch, tick=tick)
      robust = clean_ok & (pred(xa) == y)
      rows.append(_row('fgsm', eps, o.norm, x, xa, y, clean_ok, robust, 1, time.time() - t))
      robust_any &= robust
    t = time.time()
    pgd_fn = jax.jit(lambda a, b, k, e=eps: attacks.pgd(f, a, b, e, o.norm, o.pgd_steps,
                                                restarts=o.restarts, loss=o.loss, key=k))
    xa = _batched(pgd_fn, [x, y], batch, key, tick=tick)
    robust = clean_ok & (pred(xa) == y)
    adversarials[eps] = xa
    rows.append(_row('pgd', eps, o.norm, x, xa, y, clean_ok, robust,
                     o.pgd_steps * o.restarts, time.time() - t, steps=o.pgd_steps,
                     restarts=o.restarts, loss=o.loss))
    robust_any &= robust
    # APGD-CE on every example, then APGD-T on those it left (AutoAttack's cascade).
    t = time.time()
    ce_fn = jax.jit(lambda a, b, k, e=eps: attacks.apgd(f, a, b, e, o.norm, o.apgd_steps, 'ce', key=k))
    xa_ce, _ = _batched(ce_fn, [x, y], batch, key, tick=tick)
    robust = clean_ok & (pred(xa_ce) == y)
    rows.append(_row('apgd_ce', eps, o.norm, x, xa_ce, y, clean_ok, robust, o.apgd_steps + 1,
                     time.time() - t, steps=o.apgd_steps))
    t = time.time()
    xa_t = xa_ce.copy()
    left = np.flatnonzero(robust)
    tgt_fn = jax.jit(lambda a, b, c, k, e=eps: attacks.apgd(f, a, b, e, o.norm, o.apgd_steps,
                                                    targets=c, key=k))
    queries = 0
    if len(left):
      clean_logits = _batched(logits_jit, [x[left]], batch)
      targets = np.asarray(attacks.apgd_target_classes(jnp.asarray(clean_logits), o.apgd_targets))
      for tc in targets:
        still = left[pred(xa_t[left]) == y[left]]
        if not len(still):
          break
        pos = np.searchsorted(left, still)
        xs, _ = _batched(tgt_fn, [x[still], y[still], tc[pos]], batch, key,
                         tick=lambda share, k=len(targets): tick(share / k))
        xa_t[still] = xs
        queries += len(still) * (o.apgd_steps + 1)
    progress.advance_to((e_i + 1) * len(names))  # APGD-T stops early once all are broken
    robust = clean_ok & (pred(xa_t) == y)
    rows.append(_row('apgd_t', eps, o.norm, x, xa_t, y, clean_ok, robust,
                     queries / max(len(left), 1), time.time() - t, steps=o.apgd_steps,
                     targets=min(o.apgd_targets, run.info.num_classes - 1),
                     after='apgd_ce'))
    robust_any &= robust
    worst[eps] = robust_any
    rows.append(_row('worst_case_whitebox', eps, o.norm, x, None, y, clean_ok, robust_any, 0,
                     0.0))
    logging.info('attack: eps %.4g: %s', eps, ', '.join(
        f'{r["attack"]} {100 * r["robust_accuracy"]:.1f}%' for r in rows if r['eps'] == eps))
  results['seconds']['whitebox'] = round(time.time() - t_part, 1)


def _blackbox(ctx: Context) -> None:
  """The score-based L-inf Square attack (attacks.square_start / square_steps) in rounds of 100
  queries on the examples still unbroken, so the budget is spent only where it is needed."""
  (o, image_model, eps_list, f, x, y, n, batch, key, pred, clean_ok, notes, warnings,
   results, rows, worst) = (
      ctx.o, ctx.image_model, ctx.eps_list, ctx.f, ctx.x, ctx.y, ctx.n, ctx.batch, ctx.key,
      ctx.pred, ctx.clean_ok, ctx.notes, ctx.warnings, ctx.results, ctx.rows, ctx.worst)
  if o.norm != 'linf' or not image_model:
    notes['blackbox'] = 'the Square attack here is the L-inf one on 2-D images'
  else:
    t_part = time.time()
    progress = ctx.progress.part('blackbox', len(eps_list))
    # Run in rounds of 100 queries on the examples still unbroken, so the budget is only
    # spent where it is needed (one compiled shape: _batched pads every call to `batch`).
    for e_i, eps in enumerate(eps_list):
      t = time.time()
      k0, k1 = jax.random.split(jax.random.fold_in(key, 21))
      start_fn = jax.jit(lambda a, b, k, e=eps: attacks.square_start(f, a, b, e, k))
      rounds = {count: jax.jit(lambda a, b, xb, m, first, k, e=eps, c=count: attacks.square_steps(
          f, a, b, e, xb, m, first, c, o.square_queries, key=k))
          for count in {100, (o.square_queries - 1) % 100} - {0}}
      xa, m = _batched(start_fn, [x, y], batch, k0)
      used = np.ones(n, np.int64)
      for first in range(0, o.square_queries - 1, 100):
        live = np.flatnonzero((m > 0) & clean_ok)
        if not len(live):
          break
        fn = rounds[min(100, o.square_queries - 1 - first)]
        xa[live], m[live], us = _batched(
            lambda a, b, xb, mm, k: fn(a, b, xb, mm, first, k),
            [x[live], y[live], xa[live], m[live]], batch, jax.random.fold_in(k1, first))
        used[live] += us
        progress.advance(100 / o.square_queries)
      progress.advance_to(e_i + 1)
      robust = clean_ok & (pred(xa) == y)
      broken = clean_ok & ~robust
      rows.append(_row('square', eps, o.norm, x, xa, y, clean_ok, robust,
                       used[clean_ok].mean() if clean_ok.any() else 0, time.time() - t,
                       query_budget=o.square_queries,
                       mean_queries_successful=float(used[broken].mean()) if broken.any()
                       else None))
      if eps in worst:
        white = worst[eps].mean()
        if robust.mean() < white:
          warnings.append(
              f'eps {eps:.4g}: the black-box Square attack ({100 * robust.mean():.1f}% robust) '
              f'beat every white-box attack ({100 * white:.1f}%): the gradients may be partly '
              'masked or the white-box attacks not converged; report worst_case')
        only = int((worst[eps] & ~robust).sum())
        if only:
          notes[f'square eps {eps:.4g}'] = f'{only} examples broken only by Square'
        rows.append(_row('worst_case', eps, o.norm, x, None, y, clean_ok, worst[eps] & robust,
                         0, 0.0, of='fgsm, pgd, apgd_ce, apgd_t, square'))
    results['seconds']['blackbox'] = round(time.time() - t_part, 1)


def _plots(ctx: Context) -> None:
  """examples.png and robustness.png, once the white-box part ran."""
  out = ctx.out
  (eps_list, plt, x, y, clean_ok, results, rows, adversarials) = (
      ctx.eps_list, ctx.plt, ctx.x, ctx.y, ctx.clean_ok, ctx.results, ctx.rows, ctx.adversarials)
  probs = lambda xa: _batched(ctx.softmax, [xa], ctx.batch)
  examples_png(plt, x, adversarials, clean_ok, y, probs, eps_list, ctx.names,
               f'{out}/examples.png')
  curve_png(plt, rows, results['clean_accuracy'], ctx.o.norm, f'{out}/robustness.png')


def _transfer(ctx: Context) -> None:
  """The white-box PGD examples evaluated on another run (--target_workdir): transfer rates."""
  (o, device, x, y, batch, pred, clean_ok, notes, results, adversarials) = (
      ctx.o, ctx.device, ctx.x, ctx.y, ctx.batch, ctx.pred, ctx.clean_ok, ctx.notes,
      ctx.results, ctx.adversarials)
  if not o.target_workdir:
    return
  ctx.progress.part('transfer')
  if not adversarials:
    notes['transfer'] = 'needs the white-box PGD examples (part whitebox)'
  else:
    t_part = time.time()
    other = runs.load_run(o.target_workdir)
    g = other.net.logits01(jax.device_put(other.variables, device))
    other_pred = jax.jit(lambda xa: jnp.argmax(g(xa), -1))
    other_ok = _batched(other_pred, [x], batch) == y
    rows_t = []
    for eps, xa in adversarials.items():
      fooled_a = clean_ok & (pred(xa) != y)
      fooled_b = _batched(other_pred, [xa], batch) != y
      both = fooled_a & other_ok
      rows_t.append({'eps': float(eps), 'source_robust_accuracy': float((clean_ok & ~fooled_a).mean()),
                     'target_accuracy_on_adversarials': float((other_ok & ~fooled_b).mean()),
                     'transfer_rate': float((both & fooled_b).sum() / max(both.sum(), 1)),
                     'num_transferable': int(both.sum())})
    results['transfer'] = {'target_workdir': os.path.abspath(o.target_workdir),
                           'target_model': other.config.model.name,
                           'target_clean_accuracy': float(other_ok.mean()),
                           'attack': 'pgd', 'by_eps': rows_t}
    results['seconds']['transfer'] = round(time.time() - t_part, 1)


def _fooling(ctx: Context) -> None:
  """Fooling images (Nguyen et al. 2015): ascent to 99% confidence from noise and from gray."""
  out = ctx.out
  (run, o, shape, image_model, f, plt, key, notes, results) = (
      ctx.run, ctx.o, ctx.shape, ctx.image_model, ctx.f, ctx.plt, ctx.key, ctx.notes,
      ctx.results)
  t_part = time.time()
  ctx.progress.part('fooling')
  c = run.info.num_classes
  classes = jnp.tile(jnp.arange(c), 2)
  noise = jax.random.uniform(jax.random.fold_in(key, 7), (c, *shape))
  start = jnp.concatenate([noise, jnp.full((c, *shape), 0.5)])
  fool = jax.jit(lambda s, k: attacks.fooling_images(f, s, k, o.fooling_steps))
  imgs, conf, reached = (np.asarray(v) for v in fool(start, classes))
  part = lambda sl: {'fraction_reached': float((reached[sl] >= 0).mean()),
                     'mean_steps_reached': float(reached[sl][reached[sl] >= 0].mean())
                     if (reached[sl] >= 0).any() else None,
                     'mean_confidence': float(conf[sl].mean())}
  results['fooling'] = {'confidence_goal': 0.99, 'max_steps': o.fooling_steps,
                        'step_size': 0.02, 'label_smoothing': run.config.label_smoothing,
                        'starts': {'uniform_noise': part(slice(0, c)),
                                                      'blank_gray': part(slice(c, 2 * c))},
                        'fraction_reached': float((reached >= 0).mean()),
                        'confidence': conf.round(4).tolist(), 'steps': reached.tolist()}
  if run.config.label_smoothing and (reached < 0).any():
    notes['fooling'] = (f'the run was trained with label smoothing {run.config.label_smoothing}'
                        ', which bounds how confident it gets; '
                        f'{int((reached < 0).sum())} of {2 * c} images stayed below 99%')
  if image_model:
    grid = [imgs[:c] * 255.0, imgs[c:] * 255.0]
    names = ctx.names
    common.image_grid(plt, grid, [f'from noise: {names[0]}\n{100 * conf[0]:.0f}%',
                                  f'from gray: {names[0]}\n{100 * conf[c]:.0f}%'],
                      f'{out}/fooling.png',
                      col_labels=[''] + [f'{names[k]}\n{100 * conf[k]:.0f}% / {100 * conf[c + k]:.0f}%'
                                         for k in range(1, c)],
                      title='Fooling images: ascent to 99% confidence of each class '
                            '(confidence reached from noise / from gray)')
  results['seconds']['fooling'] = round(time.time() - t_part, 1)


def _patch(ctx: Context) -> None:
  """An adversarial patch (Brown et al. 2017) trained on training images, placed at random."""
  out = ctx.out
  (o, shape, image_model, f, plt, x, y, batch, key, train_split, notes, results) = (
      ctx.o, ctx.shape, ctx.image_model, ctx.f, ctx.plt, ctx.x, ctx.y, ctx.batch, ctx.key,
      ctx.train_split, ctx.notes, ctx.results)
  if not image_model:
    notes['patch'] = 'adversarial patches are for 2-D images'
  else:
    t_part = time.time()
    ctx.progress.part('patch')
    side = o.patch_size or max(2, int(round(math.sqrt(0.1 * shape[0] * shape[1]))))
    train = train_split()
    pool, _, _ = common.pick_examples(train.images, train.labels, 2000, o.seed)
    patch = attacks.train_patch(f, jnp.asarray(pool, jnp.float32) / 255.0, o.patch_target, side,
                        o.patch_steps, key=jax.random.fold_in(key, 11))
    keep = y != o.patch_target
    xs = np.repeat(x[keep], 4, 0)
    r, cc = attacks.random_places(jax.random.fold_in(key, 12), len(xs), shape, side)
    place = jax.jit(lambda a, p, r, c: jnp.argmax(f(attacks.apply_patch(a, p, r, c)), -1))
    hit = lambda p: _batched(lambda a, r, c: place(a, p, r, c), [xs, np.asarray(r),
                                                               np.asarray(cc)], batch)
    success = float((hit(patch) == o.patch_target).mean())
    control = jax.random.uniform(jax.random.fold_in(key, 13), patch.shape)
    base = float((hit(control) == o.patch_target).mean())
    results['patch'] = {'target': o.patch_target, 'side': side,
                        'area_fraction': side * side / (shape[0] * shape[1]),
                        'train_images': len(pool), 'steps': o.patch_steps,
                        'test_images': int(keep.sum()), 'placements_per_image': 4,
                        'success_rate': success, 'random_patch_success_rate': base}
    patched = np.asarray(attacks.apply_patch(jnp.asarray(x[keep][:6]), patch, r[:6],
                                     cc[:6]))
    ptile = np.zeros_like(x[:1])
    ptile[0, :side, :side] = np.asarray(patch)
    pp = _batched(ctx.softmax, [patched], batch)
    titles = [common.example_title(ctx.names, int(t), int(q.argmax()), float(q.max()))
              for t, q in zip(y[keep][:6], pp)]
    common.image_grid(plt, [patched * 255.0, ptile * 255.0],
                      [f'patched:\n{titles[0]}', 'the patch'], f'{out}/patch.png',
                      col_labels=[''] + titles[1:],
                      title=f'Adversarial patch for {ctx.names[o.patch_target]}: '
                            f'{100 * success:.0f}% of placements take the prediction '
                            f'(random patch {100 * base:.0f}%)')
    results['seconds']['patch'] = round(time.time() - t_part, 1)


def _membership(ctx: Context) -> None:
  """Membership inference: loss threshold, and calibrated with reference runs."""
  out = ctx.out
  (run, o, plt, train_split, notes, results) = (
      ctx.run, ctx.o, ctx.plt, ctx.train_split, ctx.notes, ctx.results)
  t_part = time.time()
  ctx.progress.part('membership')
  refs = [runs.load_run(r) for r in o.references]
  m, scores = privacy.membership(run, o.membership_examples, o.seed, refs, train_split())
  if not refs:
    notes['membership'] = ('calibrated attack skipped: pass reference runs trained on other '
                           'examples with --membership_reference_workdirs')
  results['membership'] = m
  fig, ax = plt.subplots(figsize=(4, 4))
  for name, (sin, sout) in scores.items():
    fpr, tpr = privacy.roc_curve(sin, sout)
    ax.plot(fpr, tpr, label=f'{name} (AUC {m[name]["auc"]:.3f})')
  ax.plot([1e-4, 1], [1e-4, 1], 'k:', lw=1)
  ax.set(xscale='log', yscale='log', xlim=(1e-3, 1), ylim=(1e-3, 1),
         xlabel='false positive rate', ylabel='true positive rate',
         title=f'membership: {m["num_members"]} train vs test')
  ax.legend(fontsize=7)
  common.save_figure(fig, f'{out}/membership.png')
  results['seconds']['membership'] = round(time.time() - t_part, 1)


def _reconstruction(ctx: Context) -> None:
  """Feature inversion of test images from the first and last conv layers."""
  out = ctx.out
  (o, shape, image_model, variables, net, plt, images, notes, results) = (
      ctx.o, ctx.shape, ctx.image_model, ctx.variables, ctx.net, ctx.plt, ctx.images, ctx.notes,
      ctx.results)
  if not image_model:
    notes['reconstruction'] = 'feature inversion is for 2-D images'
  else:
    t_part = time.time()
    ctx.progress.part('reconstruction', 2)
    convs = visualize.conv_layers(net, variables, shape)
    layers = [convs[0][0], convs[-1][0]]
    xi = jnp.asarray(images[:4], jnp.float32)
    rec_rows, grid = [], [images[:4]]
    for name in layers:
      rec = visualize.invert(net, variables, xi, name, seed=o.seed)
      p, q = visualize.psnr_ssim(rec, xi)
      rec_rows.append({'layer': name, 'psnr': float(p.mean()), 'ssim': float(q.mean())})
      grid.append(np.asarray(rec))
      ctx.progress.advance()
    results['reconstruction'] = {'images': 4, 'layers': rec_rows}
    common.image_grid(plt, grid, ['originals'] + [f'from {r["layer"]}: {r["psnr"]:.1f} dB'
                                                   for r in rec_rows],
                       f'{out}/reconstruction.png')
    results['seconds']['reconstruction'] = round(time.time() - t_part, 1)


# The parts in the order they run (transfer needs whitebox's examples; the plots come last),
# and their rough shares of the mode's time with the defaults, which weight the overall ETA.
PART_SHARES = {'whitebox': 10.0, 'blackbox': 3.0, 'transfer': 0.5, 'fooling': 1.0, 'patch': 2.0,
               'membership': 1.0, 'reconstruction': 1.0}
PART_FUNCTIONS = (('whitebox', _whitebox), ('blackbox', _blackbox), ('transfer', _transfer),
                  ('fooling', _fooling), ('patch', _patch), ('membership', _membership),
                  ('reconstruction', _reconstruction))


def context(workdir: str, o: Options) -> Context:
  """The shared context of the parts: the run loaded and checked, examples picked, clean
  predictions made."""
  check_options(o, workdir)
  progress = util.Progress('attack', {p: PART_SHARES[p] for p in o.parts
                                      if p != 'transfer' or o.target_workdir})
  run = runs.load_run(workdir, o.step)
  tasks.check_mode(run.config, 'attack')
  shape = run.info.shape
  image_model = len(shape) == 3
  eps_list = tuple(o.eps) or default_eps(o.norm, shape[-1])
  device = jax.local_devices()[0]
  variables = jax.device_put(run.variables, device)
  net = run.net
  f = net.logits01(variables)
  out = common.output_dir(workdir, 'attack')
  plt = common.pyplot()
  images, labels, idx = common.test_examples(run, o.examples, o.seed, per_class=True)
  x = images.astype(np.float32) / 255.0
  y = labels.astype(np.int32)
  n = len(y)
  batch = min(o.batch, n)
  key = jax.random.key(o.seed)
  logits_jit = jax.jit(f)
  predict = jax.jit(lambda xa: jnp.argmax(f(xa), -1))
  softmax = jax.jit(lambda xa: jax.nn.softmax(f(xa), -1))
  train_split = functools.cache(lambda: datasets.load_split(run.config.dataset, 'train'))
  pred = lambda xa: _batched(predict, [xa], batch)
  clean_ok = pred(x) == y
  notes: dict[str, str] = {}
  warnings: list[str] = []
  results: dict = {'workdir': '.', 'step': run.step, 'model': run.config.model.name,
                   'dataset': run.dataset['name'], 'num_examples': n, 'examples': idx.tolist(),
                   'clean_accuracy': float(clean_ok.mean()), 'norm': o.norm,
                   'eps': [float(e) for e in eps_list], 'attacks': [], 'warnings': warnings,
                   'notes': notes, 'settings': dataclasses.asdict(o), 'seconds': {}}
  rows = results['attacks']
  logging.info('attack: %s at step %d: clean accuracy %.2f%% on %d test examples',
               run.config.model.name, run.step, 100 * results['clean_accuracy'], n)
  adversarials: dict[float, np.ndarray] = {}
  worst: dict[float, np.ndarray] = {}
  return Context(run=run, o=o, shape=shape, image_model=image_model, eps_list=eps_list,
                 device=device, variables=variables, net=net, f=f, out=out, plt=plt,
                 images=images, labels=labels, idx=idx, x=x, y=y, n=n, batch=batch, key=key,
                 logits_jit=logits_jit, predict=predict, train_split=train_split, pred=pred,
                 softmax=softmax, names=common.class_names(run.info),
                 clean_ok=clean_ok, notes=notes, warnings=warnings, results=results, rows=rows,
                 adversarials=adversarials, worst=worst, progress=progress)


def run_attack(workdir: str, o: Options) -> dict:
  """`--mode=attack`: the parts `o.parts` of this module on a trained run, into `W/attack/`."""
  ctx = context(workdir, o)
  for name, part in PART_FUNCTIONS:
    if name in o.parts:
      part(ctx)
  if ctx.worst:
    _plots(ctx)
  warnings, out, results, rows, n = ctx.warnings, ctx.out, ctx.results, ctx.rows, ctx.n
  for w in warnings:
    logging.warning('attack: %s', w)
  columns = ['attack', 'norm', 'eps', 'robust_accuracy', 'attack_success_rate',
             'mean_perturbation_norm', 'queries', 'seconds']
  common.stamp(results, ctx.progress)
  common.write_outputs(out, results, rows, f'Robustness of {workdir} (clean accuracy '
                       f'{100 * results["clean_accuracy"]:.2f}% on {n} test examples)', columns)
  return results




def examples_png(plt, x, adversarials, clean_ok, y, probs, eps_list, names, path: str) -> None:
  """Original, perturbation, adversarial for the first few examples PGD broke at the middle
  eps, each titled with the true class and the prediction with its confidence (`probs`:
  batched softmax of images in [0, 1]). The perturbation of gray images is drawn signed on the
  diverging colormap in pixel units; that of colour images magnified to the full range."""
  eps = eps_list[len(eps_list) // 2]
  xa = adversarials.get(eps)
  if xa is None:
    return
  p_adv = probs(xa)
  broken = np.flatnonzero(clean_ok & (p_adv.argmax(-1) != y))[:6]
  if not len(broken):
    return
  p_clean = probs(x[broken])
  fig, axes = plt.subplots(3, len(broken), figsize=(1.7 * len(broken), 5.6), squeeze=False)
  gray = x.shape[-1] == 1
  for j, i in enumerate(broken):
    d = xa[i] - x[i]
    common.show_image(axes[0, j], x[i], vmax=1.0)
    axes[0, j].set_title(common.example_title(names, int(y[i]), int(p_clean[j].argmax()),
                                              float(p_clean[j].max())), fontsize=6)
    if gray:
      art = axes[1, j].imshow(d[..., 0], cmap=common.SIGNED_CMAP, vmin=-eps, vmax=eps)
      axes[1, j].axis('off')
    else:
      common.show_image(axes[1, j], 0.5 + d / (2 * (np.abs(d).max() + 1e-12)), vmax=1.0)
    axes[1, j].set_title('perturbation', fontsize=6)
    common.show_image(axes[2, j], xa[i], vmax=1.0)
    axes[2, j].set_title(common.example_title(names, int(y[i]), int(p_adv[i].argmax()),
                                              float(p_adv[i].max())), fontsize=6)
  if gray:
    common.colorbar(fig, art, axes[1, -1], 'perturbation\n(pixels in [0, 1])', where='right')
  fig.suptitle(f'PGD at eps {eps:.3g}: clean (top), perturbation, adversarial (bottom)'
               + ('' if gray else '; perturbation magnified to the full range'), fontsize=8)
  common.save_figure(fig, path)


def curve_png(plt, rows, clean: float, norm: str, path: str) -> None:
  """Robust accuracy against eps, one line per attack."""
  fig, ax = plt.subplots(figsize=(5, 3.5))
  for name in dict.fromkeys(r['attack'] for r in rows):
    pts = sorted((r['eps'], r['robust_accuracy']) for r in rows if r['attack'] == name)
    ax.plot([0] + [p[0] for p in pts], [100 * clean] + [100 * p[1] for p in pts], 'o-',
            label=name, ms=3)
  ax.set(xlabel=f'eps ({"L-inf" if norm == "linf" else "L2"} radius, pixel values in [0, 1])',
         ylabel='accuracy (%)', ylim=(0, 100), title='Robust accuracy under attack')
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  common.save_figure(fig, path)
