"""`--mode=report`: every trial of a sweep directory in tables and plots.

Writes into the sweep's workdir:
  summary.json                     per configuration (trials that differ only in `seed`):
                                   seeds, mean, sd and 95% CI of the final test accuracy; with
                                   a reference configuration, each difference from it with its
                                   95% CI (Welch's t and a bootstrap over seeds), Welch's p,
                                   Holm's p over the sweep's comparisons, and significance
  results.csv, results.md          one row per trial: overrides, params, MACs, depth, train
                                   time, final and best test accuracy, status and error; the
                                   Markdown starts with the per-configuration table
  accuracy_by_configuration.png    mean and 95% CI per configuration, seeds as dots
  curves.png                       test accuracy at each evaluation, mean over seeds
  accuracy_vs_params.png           one curve per 1x1 placement (points joined only when the
                                   sweep varies the width; other points are separate designs)
  accuracy_vs_macs.png             as accuracy_vs_params.png, against multiply-accumulates
  accuracy_vs_depth.png            one curve per width (multiplier, or parameter budget); only
                                   when every trial is a layout net and depths differ
  one_by_one_placement.png         bars per placement, grouped by width and depth; only when
                                   the sweep sets model.one_by_one / num_one_by_one
A plot that does not apply is not drawn (and an earlier report's copy is removed): a depth
axis for ResNets, or 1x1 bars for designs that differ in everything else, would mislead.
Failed and unfinished trials are rows too (status, error), and are listed again under the
table; statistics and plots use finished trials. The accuracy compared is the final one: the
best-over-evaluations accuracy picks its epoch on the test set and is biased upwards.
The reference is --reference, else the sweep file's REFERENCE (recorded in sweep.json).
"""

from __future__ import annotations

import csv
import math
import os
import re
from typing import Any, Callable, Sequence

import numpy as np
from scipy import stats

from errors import UserError
import util
from sweeps import runner

PLOTS = ('accuracy_by_configuration.png', 'curves.png', 'accuracy_vs_params.png',
         'accuracy_vs_macs.png', 'accuracy_vs_depth.png', 'one_by_one_placement.png')
ALWAYS_PLOTTED = PLOTS[:4]
BOOTSTRAP_RESAMPLES = 10_000
PLACEMENT_ORDER = ('none (all 3x3)', 'early', 'middle', 'end')


def trial_dirs(workdir: str) -> list[str]:
  """Trial directories in declaration order (sweep.json), then any others (trials of an
  earlier version of the sweep are still reported, never silently dropped)."""
  root = os.path.join(workdir, 'trials')
  if not os.path.isdir(root):
    raise UserError(f'{workdir} has no trials/ directory; run --mode=sweep with this --workdir first')
  on_disk = sorted(n for n in os.listdir(root)
                   if os.path.exists(os.path.join(root, n, runner.TRIAL)))
  declared = (util.read_json(os.path.join(workdir, 'sweep.json')) or {}).get('trials', [])
  names = [n for n in declared if n in on_disk] + [n for n in on_disk if n not in declared]
  return [os.path.join(root, n) for n in names]


def placement(trial: dict) -> str:
  """Where the 1x1 convs are: the swept `model.one_by_one`, or read off the layout."""
  knob = trial['config'].get('model', {}).get('one_by_one', 'default')
  if knob == 'none' or (knob == 'default' and trial['layout'] and 'k1' not in trial['layout']):
    return 'none (all 3x3)'
  return 'layout default' if knob == 'default' else str(knob)


def width_label(trial: dict) -> str:
  if trial.get('budget'):
    return f'{trial["budget"] / 1000:g}K-param budget'
  return f'width x{trial["config"].get("model", {}).get("width_multiplier", 1.0):g}'


# The field a sweep over runs of each task compares (results.json), and its name in reports.
METRICS = {'classification': ('test_accuracy', 'test accuracy'),
           'segmentation': ('test_miou', 'test mIoU')}


def task_metric(config: dict) -> str:
  return METRICS.get(config.get('task', 'classification'), METRICS['classification'])[0]


def metric_label(rows: Sequence[dict]) -> str:
  """'test accuracy', or the other task's metric when every trial reports that one."""
  names = {r.get('metric', 'test_accuracy') for r in rows}
  return next((label for field, label in METRICS.values() if {field} == names), 'test accuracy')


def gather(workdir: str) -> list[dict[str, Any]]:
  """One row per trial directory, finished or not."""
  rows = []
  for d in trial_dirs(workdir):
    trial = util.read_json(os.path.join(d, runner.TRIAL))
    status = util.read_json(os.path.join(d, runner.STATUS)) or {}
    state = runner.state(d)
    results = util.read_json(os.path.join(d, runner.RESULTS)) if state == 'done' else None
    results = results or {}
    rows.append({
        'trial': trial['name'], 'status': state, 'overrides': trial['overrides'],
        'width_multiplier': trial['config'].get('model', {}).get('width_multiplier'),
        'budget': trial.get('budget') or '', 'params': trial['params'], 'macs': trial['macs'],
        'depth': trial['depth'], 'one_by_one': placement(trial), 'width': width_label(trial),
        'seed': trial['config'].get('seed'), 'epochs': results.get('epochs'),
        'steps': results.get('steps'), 'train_time_s': results.get('train_time_s'),
        'images_per_sec': results.get('images_per_sec'),
        'test_accuracy': results.get('test_accuracy'),
        'best_test_accuracy': results.get('best_test_accuracy'),
        # What the statistics and plots compare: the task's headline metric (task_metric).
        'metric': task_metric(trial['config']),
        'score': results.get(task_metric(trial['config'])),
        'best_score': results.get('best_' + task_metric(trial['config'])),
        'layout': trial['layout'],
        'history': [(h['epoch'], h[task_metric(trial['config'])])
                    for h in results.get('history', [])
                    if h.get(task_metric(trial['config'])) is not None],
        'error': status.get('error', '') if state != 'done' else '',
        # Relative to the sweep directory: reports are committed and moved between machines.
        'log': os.path.relpath(os.path.join(d, runner.LOG), workdir)})
  return rows


def _override_keys(rows: Sequence[dict]) -> list[str]:
  return list(dict.fromkeys(k for r in rows for k in r['overrides']))


def write_csv(rows: Sequence[dict], path: str) -> None:
  keys = _override_keys(rows)
  fields = ['trial', 'status', *keys, 'width_multiplier', 'budget', 'params', 'macs', 'depth',
            'one_by_one', 'epochs', 'steps', 'train_time_s', 'images_per_sec', 'test_accuracy',
            'best_test_accuracy', 'metric', 'score', 'layout', 'error']
  with open(path, 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=fields, extrasaction='ignore')
    writer.writeheader()
    for r in rows:
      writer.writerow({**r, **{k: r['overrides'].get(k, '') for k in keys}})


# ----------------------------------------------------------------------------- over seeds


def configuration_of(row: dict) -> str:
  """The trial's name without its seed: trials that share it differ only in `seed`."""
  label = re.sub(r'(^|_)seed=?\d+(?=_|$)', '', row['trial']).strip('_')
  return label or 'base'


def mean_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float] | None:
  """Student-t interval of the mean; None with fewer than two values."""
  v = np.asarray(values, float)
  if len(v) < 2:
    return None
  half = stats.t.ppf(0.5 + level / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v))
  return float(v.mean() - half), float(v.mean() + half)


def welch(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> dict[str, Any] | None:
  """mean(a) - mean(b), its Welch-Satterthwaite t interval and two-sided p; None when either
  side has fewer than two values. Equal constant samples give p = 1, distinct ones p = 0."""
  a, b = np.asarray(a, float), np.asarray(b, float)
  if len(a) < 2 or len(b) < 2:
    return None
  diff = float(a.mean() - b.mean())
  va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
  se = math.sqrt(va + vb)
  if se == 0:
    return {'diff': diff, 'ci95': (diff, diff), 'p': 1.0 if diff == 0 else 0.0, 'df': None}
  df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
  half = stats.t.ppf(0.5 + level / 2, df) * se
  p = float(2 * stats.t.sf(abs(diff) / se, df))
  return {'diff': diff, 'ci95': (diff - half, diff + half), 'p': p, 'df': float(df)}


def bootstrap_interval(a: Sequence[float], b: Sequence[float], level: float = 0.95,
                       resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> tuple[float, float]:
  """Percentile bootstrap interval of mean(a) - mean(b), each side resampled with
  replacement. With 3 seeds a side has only 10 distinct resampled means, so this interval
  is coarse and narrower than Welch's; both are reported."""
  rng = np.random.default_rng(seed)
  a, b = np.asarray(a, float), np.asarray(b, float)
  ma = a[rng.integers(0, len(a), (resamples, len(a)))].mean(axis=1)
  mb = b[rng.integers(0, len(b), (resamples, len(b)))].mean(axis=1)
  lo, hi = np.quantile(ma - mb, [0.5 - level / 2, 0.5 + level / 2])
  return float(lo), float(hi)


def holm(pvalues: Sequence[float]) -> list[float]:
  """Holm's step-down adjustment: controls the chance of any false positive across the
  sweep's comparisons with its reference."""
  order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
  adjusted, running = [0.0] * len(pvalues), 0.0
  for rank, i in enumerate(order):
    running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[i]))
    adjusted[i] = running
  return adjusted


def aggregate(rows: Sequence[dict], reference: str = '') -> list[dict[str, Any]]:
  """One entry per configuration (declaration order) over its finished trials, accuracies in
  percent; with `reference`, each other configuration's difference from it."""
  groups: dict[str, list[dict]] = {}
  for r in rows:
    groups.setdefault(configuration_of(r), []).append(r)
  if reference and reference not in groups:
    raise UserError(f'--reference={reference!r} is not a configuration of this sweep; use one '
                    f'of: {", ".join(groups)}')
  out = []
  for label, members in groups.items():
    done = [r for r in members if r['status'] == 'done' and r.get('score') is not None]
    values = [100 * r['score'] for r in done]
    first = members[0]
    entry = {'configuration': label, 'trials': len(members), 'seeds': [r['seed'] for r in done],
             'values': [round(v, 4) for v in values], 'params': first['params'],
             'macs': first['macs'], 'depth': first['depth'],
             'mean': float(np.mean(values)) if values else None,
             'sd': float(np.std(values, ddof=1)) if len(values) > 1 else None,
             'ci95': mean_interval(values),
             'train_time_s': (float(np.mean([r['train_time_s'] for r in done]))
                              if done and all(r['train_time_s'] for r in done) else None),
             'reference': label == reference}
    out.append(entry)
  if reference:
    ref = next(e for e in out if e['reference'])
    compared = []
    for e in out:
      test = None if e['reference'] else welch(e['values'], ref['values'])
      if test:
        e.update(diff=test['diff'], diff_ci95_welch=test['ci95'], p_welch=test['p'],
                 diff_ci95_bootstrap=bootstrap_interval(e['values'], ref['values']))
        compared.append(e)
    for e, p in zip(compared, holm([e['p_welch'] for e in compared])):
      e['p_holm'] = p
      e['significant'] = e['p_welch'] < 0.05
      e['significant_holm'] = p < 0.05
  return out


def _interval(ci: Sequence[float] | None) -> str:
  return f'[{ci[0]:+.2f}, {ci[1]:+.2f}]' if ci else '-'


def _p(p: float | None) -> str:
  return '-' if p is None else ('< 0.001' if p < 0.001 else f'{p:.3f}')


def seeds_markdown(stats: Sequence[dict], reference: str, label: str = 'test accuracy') -> list[str]:
  """The per-configuration table of results.md."""
  short = 'acc' if label == 'test accuracy' else label.split()[-1]
  head = ['configuration', 'seeds', 'params', 'MACs', f'final {short} % (mean ± sd)', '95% CI']
  if reference:
    head += [f'Δ vs {reference}', '95% CI of Δ (Welch)', 'p (Welch)', 'p (Holm)',
             '95% CI of Δ (bootstrap)', 'significant']
  lines = ['| ' + ' | '.join(head) + ' |', '|---|' + '---:|' * (len(head) - 1)]
  for e in stats:
    acc = ('-' if e['mean'] is None else f'{e["mean"]:.2f}' +
           (f' ± {e["sd"]:.2f}' if e['sd'] is not None else ''))
    ci = f'[{e["ci95"][0]:.2f}, {e["ci95"][1]:.2f}]' if e['ci95'] else '-'
    cells = [e['configuration'] + (' (reference)' if e['reference'] else ''),
             str(len(e['values'])) + (f'/{e["trials"]}' if len(e['values']) < e['trials'] else ''),
             f'{e["params"]:,}', f'{e["macs"] / 1e6:.1f}M', acc, ci]
    if reference:
      if 'diff' in e:
        sig = ('yes, also after Holm' if e['significant_holm'] else 'yes' if e['significant']
               else 'no')
        cells += [f'{e["diff"]:+.2f}', _interval(e['diff_ci95_welch']), _p(e['p_welch']),
                  _p(e['p_holm']), _interval(e['diff_ci95_bootstrap']), sig]
      else:
        cells += ['-'] * 6
    lines.append('| ' + ' | '.join(c.replace('|', '\\|') for c in cells) + ' |')
  lines += ['', f'Final {label} over seeds (trials that differ only in `seed`); 95% CI = '
            "Student-t interval of the mean."]
  if reference:
    lines[-1] += (f' Δ = mean minus the reference {reference}\'s, in points; significant = '
                  "Welch's two-sided p < 0.05 (its interval excludes 0); Holm's p corrects for "
                  'the comparisons made in this sweep.')
  return lines


def _pct(x: float | None) -> str:
  return f'{100 * x:.2f}' if x is not None else '-'


def markdown(rows: Sequence[dict], title: str, stats: Sequence[dict] = (),
             reference: str = '') -> str:
  """The per-configuration table, the per-trial table, the unfinished trials, the plots."""
  keys = _override_keys(rows)
  solved = any(r['budget'] for r in rows)  # show the width each budget was solved to
  label = metric_label(rows)
  short = 'acc' if label == 'test accuracy' else label.split()[-1]
  head = ['trial', *keys, *(['width x (solved)'] if solved else []), 'params', 'MACs', 'depth',
          'train time', f'final {short} %', f'best {short} %', 'status']
  lines = [f'# {title}', '', f'{sum(r["status"] == "done" for r in rows)} of {len(rows)} '
           'trials finished.', '']
  if stats:
    lines += ['## Over seeds', '', *seeds_markdown(stats, reference, label), '', '## Trials', '']
  lines += ['| ' + ' | '.join(head) + ' |',
           '|' + '|'.join('---:' if h in ('params', 'MACs', 'depth') or h.endswith('%') else '---'
                          for h in head) + '|']
  for r in rows:
    time_s = f'{r["train_time_s"] / 60:.1f} min' if r['train_time_s'] else '-'
    cells = [r['trial'], *[r['overrides'].get(k, '') for k in keys],
             *([f'{r["width_multiplier"]:g}' if r['budget'] else ''] if solved else []),
             f'{r["params"]:,}',
             f'{r["macs"] / 1e6:.1f}M', str(r['depth'] if r['depth'] is not None else '-'), time_s,
             _pct(r.get('score')), _pct(r.get('best_score')), r['status']]
    lines.append('| ' + ' | '.join(c.replace('|', '\\|') for c in cells) + ' |')
  unfinished = [r for r in rows if r['status'] != 'done']
  if unfinished:
    lines += ['', '## Not finished', '']
    lines += [f'- `{r["trial"]}`: {r["status"]}' + (f': {r["error"]}' if r['error'] else '') +
              f' (log: `{r["log"]}`)' for r in unfinished]
  lines += ['', '## Plots', ''] + [f'![{p}]({p})' for p in plots_for(rows)]
  return '\n'.join(lines) + '\n'


# ----------------------------------------------------------------------------- plots


def _series(rows: Sequence[dict], x_of: Callable[[dict], Any],
            series_of: Callable[[dict], str]) -> dict[str, list[tuple[Any, float, list[float]]]]:
  """{series: [(x, mean accuracy %, individual accuracies %)]} over finished trials, sorted by x;
  trials that share a series and an x (seeds) are averaged."""
  cells: dict[str, dict[Any, list[float]]] = {}
  for r in rows:
    if r['status'] == 'done' and r.get('score') is not None and x_of(r) is not None:
      cells.setdefault(series_of(r), {}).setdefault(x_of(r), []).append(100 * r['score'])
  return {s: [(x, sum(v) / len(v), v) for x, v in sorted(pts.items())] for s, pts in cells.items()}


def _sd(values: Sequence[float]) -> float:
  """Sample standard deviation over seeds; 0 for a single seed (an error bar of nothing)."""
  return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def _natural(label: str) -> list:
  """Sort key that orders 'depth 8' before 'depth 10'."""
  return [int(p) if p.isdigit() else p for p in re.split(r'(\d+)', label)]


def _plot_lines(ax, data, xlabel: str, names: dict | None = None, join: bool = True,
                label: str = 'test accuracy') -> None:
  """One line per series; with `names` ({(series, x): label}) the points are labelled and,
  where x barely varies (a parameter budget) or `join` is off, not joined: such a line would
  mean nothing."""
  for label in sorted(data, key=_natural):
    pts = data[label]
    xs = [p[0] for p in pts]
    joined = names is None or (join and max(xs) > 1.1 * min(xs))
    sds = [_sd(p[2]) for p in pts]
    line, *_ = ax.errorbar(xs, [p[1] for p in pts], yerr=sds, marker='o', label=label,
                           linestyle='-' if joined else 'none', capsize=3)
    for x, mean, values in pts:
      if len(values) > 1:  # individual seeds, faint, around the mean +- sd
        ax.scatter([x] * len(values), values, color=line.get_color(), alpha=0.3, s=12)
      if names:
        ax.annotate(names.get((label, x), ''), (x, mean), fontsize=7, xytext=(4, 4),
                    textcoords='offset points')
  if names:
    ax.margins(x=0.15)  # room for the last point's label
  ax.set_xlabel(xlabel)
  ax.set_ylabel(f'final {label} (%, mean ± sd over seeds)')
  ax.grid(alpha=0.3)
  if data:
    ax.legend(fontsize=8)
  else:
    ax.text(0.5, 0.5, 'no finished trials yet', ha='center', transform=ax.transAxes)


def _point_label(row: dict, with_1x1: bool) -> str:
  """A point's name on a plot: its configuration (trial name without the seed), less the
  line's own 1x1 key (full trial names overrun the axes)."""
  label = configuration_of(row)
  if with_1x1:
    label = re.sub(r'(^|_)one_by_one=[^_]+', '', label).strip('_')
  return label


def _swept(rows: Sequence[dict], key: str) -> bool:
  """True when the sweep itself varies `key` (a derived difference, like the 1x1s a depth
  study's layouts happen to have, does not split a plot's lines)."""
  return len({r['overrides'].get(key) for r in rows}) > 1


def depth_applies(rows: Sequence[dict]) -> bool:
  """Depth is a comparable axis only when every trial is a layout net (a ResNet's `depth`
  is not one) and the trials differ in it."""
  depths = {r['depth'] for r in rows}
  return None not in depths and len(depths) > 1


def placement_applies(rows: Sequence[dict]) -> bool:
  """1x1 bars compare like with like only when the sweep itself moves the 1x1s."""
  return _swept(rows, 'model.one_by_one') or _swept(rows, 'model.num_one_by_one')


def _plot_configurations(plt, stats: Sequence[dict], path: str, title: str,
                         label: str = 'test accuracy') -> None:
  """Mean and 95% CI per configuration (seeds as dots), the reference's mean as a line."""
  shown = [e for e in stats if e['values']]
  fig, ax = plt.subplots(figsize=(7, 1.2 + 0.35 * max(1, len(shown))))
  for i, e in enumerate(shown):
    y = len(shown) - 1 - i
    lo, hi = e['ci95'] or (e['mean'], e['mean'])
    ax.errorbar([e['mean']], [y], xerr=[[e['mean'] - lo], [hi - e['mean']]], fmt='o',
                color='C3' if e['reference'] else 'C0', capsize=4)
    ax.scatter(e['values'], [y] * len(e['values']), color='gray', alpha=0.5, s=10, zorder=3)
    if e['reference']:
      ax.axvline(e['mean'], color='C3', linestyle='--', alpha=0.6)
  ax.set_yticks(range(len(shown)), [e['configuration'] + (' (ref)' if e['reference'] else '')
                                    for e in reversed(shown)], fontsize=8)
  ax.set_xlabel(f'final {label} (%): mean, 95% CI, seeds')
  ax.grid(alpha=0.3, axis='x')
  if not shown:
    ax.text(0.5, 0.5, 'no finished trials yet', ha='center', transform=ax.transAxes)
  ax.set_title(f'{title}: {label} per configuration', fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _plot_curves(plt, rows: Sequence[dict], path: str, title: str) -> None:
  """Test accuracy at each evaluation, mean over a configuration's finished seeds (shaded:
  min to max): whether the schedule was long enough for the ranking to settle."""
  curves: dict[str, list[list[tuple[float, float]]]] = {}
  for r in rows:
    if r['status'] == 'done' and r['history']:
      curves.setdefault(configuration_of(r), []).append(r['history'])
  fig, ax = plt.subplots(figsize=(6, 4))
  for label, runs in curves.items():
    epochs = sorted(set.intersection(*[{e for e, _ in h} for h in runs]))
    acc = np.array([[100 * dict(h)[e] for e in epochs] for h in runs])
    line, = ax.plot(epochs, acc.mean(axis=0), marker='.', label=f'{label} ({len(runs)})')
    if len(runs) > 1:
      ax.fill_between(epochs, acc.min(axis=0), acc.max(axis=0), color=line.get_color(), alpha=0.15)
  ax.set_xlabel('epoch')
  ax.set_ylabel(f'{metric_label(rows)} (%, mean over seeds)')
  ax.grid(alpha=0.3)
  if curves:
    accs = [100 * a for h in (h for runs in curves.values() for h in runs) for _, a in h]
    ax.set_ylim(max(0, np.percentile(accs, 10) - 5), min(100, max(accs) + 1))
    ax.legend(fontsize=7)
  else:
    ax.text(0.5, 0.5, 'no finished trials yet', ha='center', transform=ax.transAxes)
  ax.set_title(f'{title}: {metric_label(rows)} during training', fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plots_for(rows: Sequence[dict]) -> list[str]:
  """The plot files that apply to these trials, in PLOTS order."""
  return [*ALWAYS_PLOTTED, *(['accuracy_vs_depth.png'] if depth_applies(rows) else []),
          *(['one_by_one_placement.png'] if placement_applies(rows) else [])]


def write_plots(rows: Sequence[dict], workdir: str, title: str,
                stats: Sequence[dict] | None = None) -> list[str]:
  """Writes plots_for(rows) and removes the other PLOTS left by an earlier report."""
  import matplotlib  # heavy (~1 s): loaded only when a figure is drawn
  matplotlib.use('Agg')  # files only; no display on compute nodes
  from matplotlib import pyplot as plt

  wanted = plots_for(rows)
  for p in PLOTS:
    if p not in wanted and os.path.exists(os.path.join(workdir, p)):
      os.remove(os.path.join(workdir, p))
  path = {p: os.path.join(workdir, p) for p in PLOTS}
  _plot_configurations(plt, aggregate(rows) if stats is None else stats,
                       path['accuracy_by_configuration.png'], title, metric_label(rows))
  _plot_curves(plt, rows, path['curves.png'], title)
  with_1x1 = _swept(rows, 'model.one_by_one')
  placement_of = lambda r: r['one_by_one'] if with_1x1 else 'all trials'
  # A line through points means one knob turned; different designs stay separate points.
  join = _swept(rows, 'model.width_multiplier')
  for key, xlabel in (('params', 'parameters'), ('macs', 'multiply-accumulates per image')):
    names = {(placement_of(r), r[key]): _point_label(r, with_1x1) for r in rows}
    fig, ax = plt.subplots(figsize=(6, 4))
    _plot_lines(ax, _series(rows, lambda r: r[key], placement_of), xlabel, names, join,
                metric_label(rows))
    xs = [r[key] for r in rows if r[key]]
    if xs and max(xs) > 4 * min(xs):
      ax.set_xscale('log')
    ax.set_title(f'{title}: accuracy vs {xlabel.split()[0]}', fontsize=10)
    fig.tight_layout()
    fig.savefig(path[f'accuracy_vs_{key}.png'], dpi=110)
    plt.close(fig)

  if 'accuracy_vs_depth.png' in wanted:
    _plot_depth(plt, rows, path['accuracy_vs_depth.png'], title, with_1x1)
  if 'one_by_one_placement.png' in wanted:
    _plot_placement(plt, rows, path['one_by_one_placement.png'], title)
  return [path[p] for p in wanted]


def _plot_depth(plt, rows: Sequence[dict], path: str, title: str, with_1x1: bool) -> None:
  fig, ax = plt.subplots(figsize=(6, 4))
  _plot_lines(ax, _series(rows, lambda r: r['depth'],
                          lambda r: r['width'] + (f', 1x1 {r["one_by_one"]}' if with_1x1 else '')),
              'depth (conv layers)')
  ax.set_title(f'{title}: accuracy vs depth', fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _plot_placement(plt, rows: Sequence[dict], path: str, title: str) -> None:
  with_depth = len({r['depth'] for r in rows}) > 1
  groups = _series(rows, lambda r: r['one_by_one'],
                   lambda r: r['width'] + (f', depth {r["depth"]}' if with_depth else ''))
  order = [p for p in PLACEMENT_ORDER if any(p == x for pts in groups.values() for x, *_ in pts)]
  order += sorted({x for pts in groups.values() for x, *_ in pts} - set(order))
  fig, ax = plt.subplots(figsize=(6, 4))
  bar = 0.8 / max(1, len(groups))
  for i, label in enumerate(sorted(groups, key=_natural)):
    pts = groups[label]
    cell = {x: (m, v) for x, m, v in pts}
    xs = [j + i * bar for j, p in enumerate(order) if p in cell]
    shown = [cell[p] for p in order if p in cell]
    sds = [_sd(v) for _, v in shown]
    ax.bar(xs, [m for m, _ in shown], width=bar, yerr=sds, capsize=3, label=label)
    for x, (_, values) in zip(xs, shown):  # the seeds, as dots on their bar
      if len(values) > 1:
        ax.scatter([x] * len(values), values, color='black', alpha=0.4, s=10, zorder=3)
  ax.set_xticks([j + bar * (len(groups) - 1) / 2 for j in range(len(order))], order)
  accs = [m for pts in groups.values() for _, m, _ in pts]
  if accs:
    ax.set_ylim(max(0, min(accs) - 5), min(100, max(accs) + 2))
    ax.legend(fontsize=8)
  else:
    ax.text(0.5, 0.5, 'no finished trials yet', ha='center', transform=ax.transAxes)
  ax.set_xlabel('1x1 convolutions')
  ax.set_ylabel('final test accuracy (%, mean ± sd, seeds as dots)')
  ax.set_title(f'{title}: 1x1 placement', fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def write_report(workdir: str, reference: str = '') -> dict[str, Any]:
  """Gathers the trials of `workdir` and writes the summary, CSV, Markdown and plots; returns
  paths. `reference` '' = the one sweep.json records (the sweep file's REFERENCE), if any."""
  if not workdir:
    raise UserError('--workdir is required: the sweep directory to report on')
  rows = gather(workdir)
  reference = reference or (util.read_json(os.path.join(workdir, 'sweep.json')) or {}).get(
      'reference', '')
  stats = aggregate(rows, reference)
  title = os.path.basename(os.path.abspath(workdir))
  csv_path, md_path = os.path.join(workdir, 'results.csv'), os.path.join(workdir, 'results.md')
  summary_path = os.path.join(workdir, 'summary.json')
  metric = next((f for f, label in METRICS.values() if label == metric_label(rows)), 'test_accuracy')
  util.write_json(summary_path, {'reference': reference or None, 'metric': f'{metric} (%)',
                                 'configurations': stats})
  write_csv(rows, csv_path)
  with open(md_path, 'w') as f:
    f.write(markdown(rows, title, stats, reference))
  return {'csv': csv_path, 'md': md_path, 'summary': summary_path, 'stats': stats,
          'plots': write_plots(rows, workdir, title, stats), 'rows': rows}


def main(workdir: str, reference: str = '') -> None:
  """`--mode=report`: write everything and print where it went, with the trials' states and
  the per-configuration means."""
  paths = write_report(workdir, reference)
  states: dict[str, int] = {}
  for r in paths['rows']:
    states[r['status']] = states.get(r['status'], 0) + 1
  print(f'{len(paths["rows"])} trials (' + ', '.join(f'{n} {s}' for s, n in sorted(states.items())) +
        f')\n{paths["md"]}\n{paths["csv"]}\n{paths["summary"]}\n' + '\n'.join(paths['plots']))
  for e in paths['stats']:
    if e['mean'] is not None:
      line = f'  {e["configuration"]:<40} {e["mean"]:6.2f}'
      line += f' ± {e["sd"]:.2f}' if e['sd'] is not None else ''
      line += f'  (n={len(e["values"])})' + ('  reference' if e['reference'] else '')
      if 'diff' in e:
        line += (f'  Δ {e["diff"]:+.2f} {_interval(e["diff_ci95_welch"])} p={_p(e["p_welch"])}'
                 + (' *' if e['significant'] else ''))
      print(line)
