"""`--mode=report`: every trial of a sweep directory in one table and three plots.

Writes into the sweep's workdir:
  results.csv, results.md          one row per trial: overrides, params, MACs, depth, train
                                   time, final and best test accuracy, status and error
  accuracy_vs_params.png           one curve per 1x1 placement
  accuracy_vs_depth.png            one curve per width (multiplier, or parameter budget)
  one_by_one_placement.png         bars per placement, grouped by width and depth
Failed and unfinished trials are rows too (status, error), and are listed again under the
table; plots show finished trials, averaged over trials that differ only in seed.
"""

from __future__ import annotations

import csv
import os
import re
from typing import Any, Callable, Sequence

from errors import UserError
import util
from sweeps import runner

PLOTS = ('accuracy_vs_params.png', 'accuracy_vs_depth.png', 'one_by_one_placement.png')
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
        'layout': trial['layout'],
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
            'best_test_accuracy', 'layout', 'error']
  with open(path, 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=fields, extrasaction='ignore')
    writer.writeheader()
    for r in rows:
      writer.writerow({**r, **{k: r['overrides'].get(k, '') for k in keys}})


def _pct(x: float | None) -> str:
  return f'{100 * x:.2f}' if x is not None else '-'


def markdown(rows: Sequence[dict], title: str) -> str:
  """The results table, then the trials that did not finish, then the plots."""
  keys = _override_keys(rows)
  solved = any(r['budget'] for r in rows)  # show the width each budget was solved to
  head = ['trial', *keys, *(['width x (solved)'] if solved else []), 'params', 'MACs', 'depth',
          'train time', 'final acc %', 'best acc %', 'status']
  lines = [f'# {title}', '', f'{sum(r["status"] == "done" for r in rows)} of {len(rows)} '
           'trials finished.', '', '| ' + ' | '.join(head) + ' |',
           '|' + '|'.join('---:' if h in ('params', 'MACs', 'depth') or 'acc' in h else '---'
                          for h in head) + '|']
  for r in rows:
    time_s = f'{r["train_time_s"] / 60:.1f} min' if r['train_time_s'] else '-'
    cells = [r['trial'], *[r['overrides'].get(k, '') for k in keys],
             *([f'{r["width_multiplier"]:g}' if r['budget'] else ''] if solved else []),
             f'{r["params"]:,}',
             f'{r["macs"] / 1e6:.1f}M', str(r['depth'] if r['depth'] is not None else '-'), time_s,
             _pct(r['test_accuracy']), _pct(r['best_test_accuracy']), r['status']]
    lines.append('| ' + ' | '.join(c.replace('|', '\\|') for c in cells) + ' |')
  unfinished = [r for r in rows if r['status'] != 'done']
  if unfinished:
    lines += ['', '## Not finished', '']
    lines += [f'- `{r["trial"]}`: {r["status"]}' + (f': {r["error"]}' if r['error'] else '') +
              f' (log: `{r["log"]}`)' for r in unfinished]
  lines += ['', '## Plots', ''] + [f'![{p}]({p})' for p in PLOTS]
  return '\n'.join(lines) + '\n'


# ----------------------------------------------------------------------------- plots


def _series(rows: Sequence[dict], x_of: Callable[[dict], Any],
            series_of: Callable[[dict], str]) -> dict[str, list[tuple[Any, float, list[float]]]]:
  """{series: [(x, mean accuracy %, individual accuracies %)]} over finished trials, sorted by x;
  trials that share a series and an x (seeds) are averaged."""
  cells: dict[str, dict[Any, list[float]]] = {}
  for r in rows:
    if r['status'] == 'done' and r['test_accuracy'] is not None and x_of(r) is not None:
      cells.setdefault(series_of(r), {}).setdefault(x_of(r), []).append(100 * r['test_accuracy'])
  return {s: [(x, sum(v) / len(v), v) for x, v in sorted(pts.items())] for s, pts in cells.items()}


def _natural(label: str) -> list:
  """Sort key that orders 'depth 8' before 'depth 10'."""
  return [int(p) if p.isdigit() else p for p in re.split(r'(\d+)', label)]


def _plot_lines(ax, data, xlabel: str, names: dict | None = None) -> None:
  """One line per series; with `names` ({(series, x): label}) the points are labelled and,
  where x barely varies (a parameter budget), not joined: such a line would mean nothing."""
  for label in sorted(data, key=_natural):
    pts = data[label]
    xs = [p[0] for p in pts]
    joined = names is None or max(xs) > 1.1 * min(xs)
    line, = ax.plot(xs, [p[1] for p in pts], marker='o', label=label,
                    linestyle='-' if joined else 'none')
    for x, mean, values in pts:
      if len(values) > 1:  # individual seeds, faint, around the mean
        ax.scatter([x] * len(values), values, color=line.get_color(), alpha=0.3, s=12)
      if names:
        ax.annotate(names.get((label, x), ''), (x, mean), fontsize=7, xytext=(4, 4),
                    textcoords='offset points')
  ax.set_xlabel(xlabel)
  ax.set_ylabel('final test accuracy (%)')
  ax.grid(alpha=0.3)
  if data:
    ax.legend(fontsize=8)
  else:
    ax.text(0.5, 0.5, 'no finished trials yet', ha='center', transform=ax.transAxes)


def _swept(rows: Sequence[dict], key: str) -> bool:
  """True when the sweep itself varies `key` (a derived difference, like the 1x1s a depth
  study's layouts happen to have, does not split a plot's lines)."""
  return len({r['overrides'].get(key) for r in rows}) > 1


def write_plots(rows: Sequence[dict], workdir: str, title: str) -> list[str]:
  import matplotlib
  matplotlib.use('Agg')  # files only; no display on compute nodes
  from matplotlib import pyplot as plt

  paths = [os.path.join(workdir, p) for p in PLOTS]
  with_1x1 = _swept(rows, 'model.one_by_one')
  placement_of = lambda r: r['one_by_one'] if with_1x1 else 'all trials'
  names = {(placement_of(r), r['params']): r['trial'] for r in rows}
  fig, ax = plt.subplots(figsize=(6, 4))
  _plot_lines(ax, _series(rows, lambda r: r['params'], placement_of), 'parameters', names)
  if len({r['params'] for r in rows}) > 1 and max(r['params'] for r in rows) > 4 * min(r['params'] for r in rows):
    ax.set_xscale('log')
  ax.set_title(f'{title}: accuracy vs parameters', fontsize=10)
  fig.tight_layout()
  fig.savefig(paths[0], dpi=110)
  plt.close(fig)

  fig, ax = plt.subplots(figsize=(6, 4))
  _plot_lines(ax, _series(rows, lambda r: r['depth'],
                          lambda r: r['width'] + (f', 1x1 {r["one_by_one"]}' if with_1x1 else '')),
              'depth (conv layers)')
  ax.set_title(f'{title}: accuracy vs depth', fontsize=10)
  fig.tight_layout()
  fig.savefig(paths[1], dpi=110)
  plt.close(fig)

  with_depth = len({r['depth'] for r in rows}) > 1
  groups = _series(rows, lambda r: r['one_by_one'],
                   lambda r: r['width'] + (f', depth {r["depth"]}' if with_depth else ''))
  order = [p for p in PLACEMENT_ORDER if any(p == x for pts in groups.values() for x, *_ in pts)]
  order += sorted({x for pts in groups.values() for x, *_ in pts} - set(order))
  fig, ax = plt.subplots(figsize=(6, 4))
  bar = 0.8 / max(1, len(groups))
  for i, label in enumerate(sorted(groups, key=_natural)):
    pts = groups[label]
    means = dict((x, m) for x, m, _ in pts)
    xs = [j + i * bar for j, p in enumerate(order) if p in means]
    ax.bar(xs, [means[p] for p in order if p in means], width=bar, label=label)
  ax.set_xticks([j + bar * (len(groups) - 1) / 2 for j in range(len(order))], order)
  accs = [m for pts in groups.values() for _, m, _ in pts]
  if accs:
    ax.set_ylim(max(0, min(accs) - 5), min(100, max(accs) + 2))
    ax.legend(fontsize=8)
  else:
    ax.text(0.5, 0.5, 'no finished trials yet', ha='center', transform=ax.transAxes)
  ax.set_xlabel('1x1 convolutions')
  ax.set_ylabel('final test accuracy (%)')
  ax.set_title(f'{title}: 1x1 placement', fontsize=10)
  fig.tight_layout()
  fig.savefig(paths[2], dpi=110)
  plt.close(fig)
  return paths


def write_report(workdir: str) -> dict[str, Any]:
  """Gathers the trials of `workdir` and writes the CSV, Markdown and plots; returns paths."""
  if not workdir:
    raise UserError('--workdir is required: the sweep directory to report on')
  rows = gather(workdir)
  title = os.path.basename(os.path.abspath(workdir))
  csv_path, md_path = os.path.join(workdir, 'results.csv'), os.path.join(workdir, 'results.md')
  write_csv(rows, csv_path)
  with open(md_path, 'w') as f:
    f.write(markdown(rows, title))
  return {'csv': csv_path, 'md': md_path, 'plots': write_plots(rows, workdir, title), 'rows': rows}


def main(workdir: str) -> None:
  """`--mode=report`: write everything and print where it went, with the trials' states."""
  paths = write_report(workdir)
  states: dict[str, int] = {}
  for r in paths['rows']:
    states[r['status']] = states.get(r['status'], 0) + 1
  print(f'{len(paths["rows"])} trials (' + ', '.join(f'{n} {s}' for s, n in sorted(states.items())) +
        f')\n{paths["md"]}\n{paths["csv"]}\n' + '\n'.join(paths['plots']))
