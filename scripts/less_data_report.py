"""Tables and plots of the less-data studies (configs/sweeps/less_data.py, gan_data.py) from a
sweep directory: trials named `<condition>_seed<N>` are grouped by condition, with mean and
standard deviation over seeds of the test accuracy and, for fine-tuning runs, of the source
task's accuracy before and after (forgetting). Writes `W/study.json`, `W/study.md` and, when
the conditions are `<method>_<per class>`, `W/study.png` (target accuracy against labelled
examples per class, log x, one line per method, error bars = sd over seeds).

  python scripts/less_data_report.py --workdir=runs/less_data
"""

from __future__ import annotations

import argparse
import os
import re
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

ALL_PER_CLASS = 6000  # Fashion-MNIST training images per class


def _size(cond: str) -> tuple[str, int] | None:
  m = re.fullmatch(r'(.+)_(\d+|all)', cond)
  return (m.group(1), ALL_PER_CLASS if m.group(2) == 'all' else int(m.group(2))) if m else None


def _condition(trial: str) -> str:
  return re.sub(r'_seed\d+$', '', trial)


def _method(trial: str) -> str:
  size = _size(_condition(trial))
  return size[0] if size else _condition(trial)


def gather(workdir: str) -> dict[str, list[dict]]:
  """Finished trials by condition: methods in the sweep's order, sizes ascending."""
  import util
  groups: dict[str, list[dict]] = {}
  root = os.path.join(workdir, 'trials')
  declared = (util.read_json(os.path.join(workdir, 'sweep.json')) or {}).get('trials', [])
  names = sorted(os.listdir(root))
  first: dict[str, int] = {}
  for i, n in enumerate(declared + names):
    first.setdefault(_method(n), i)
  names.sort(key=lambda n: (first[_method(n)], (_size(_condition(n)) or ('', 0))[1], n))
  for name in names:
    r = util.read_json(os.path.join(root, name, 'results.json'))
    m = re.fullmatch(r'(.+)_seed(\d+)', name)
    if r and m:
      groups.setdefault(m.group(1), []).append(r)
  return groups


def stats(values) -> dict:
  v = np.asarray([x for x in values if x is not None], float) * 100
  return {'mean': float(v.mean()), 'sd': float(v.std(ddof=1)) if len(v) > 1 else 0.0,
          'n': int(len(v)), 'values': [round(float(x), 2) for x in v]} if len(v) else None


def summarize(groups: dict[str, list[dict]]) -> list[dict]:
  rows = []
  for cond, runs in groups.items():
    init = [r.get('init_from') or {} for r in runs]
    row = {'condition': cond, 'test_accuracy': stats(r['test_accuracy'] for r in runs),
           'train_examples': runs[0]['dataset']['num_train'],
           'trainable_params': (runs[0].get('finetune') or {}).get('trainable_params'),
           'num_params': runs[0]['num_params'],
           'train_time_s': float(np.mean([r['train_time_s'] for r in runs]))}
    if any('source_test_accuracy' in i for i in init):
      row['source_before'] = stats(i.get('source_test_accuracy_before') for i in init)
      row['source_after'] = stats(i.get('source_test_accuracy') for i in init)
      row['forgetting'] = stats(i.get('forgetting') for i in init)
    rows.append(row)
  return rows


def fmt(s: dict | None) -> str:
  return '' if s is None else f"{s['mean']:.2f} ± {s['sd']:.2f}"


def markdown(rows: list[dict]) -> str:
  lines = ['| condition | train images | trainable params | target test accuracy (%) | '
           'source task before -> after (%) | forgetting (points) | seeds |',
           '|---|---|---|---|---|---|---|']
  for r in rows:
    src = (f"{fmt(r['source_before'])} -> {fmt(r['source_after'])}" if 'source_after' in r
           else '')
    lines.append(f"| {r['condition']} | {r['train_examples']:,} | "
                 f"{r['trainable_params'] or r['num_params']:,} | {fmt(r['test_accuracy'])} | "
                 f"{src} | {fmt(r.get('forgetting'))} | {r['test_accuracy']['n']} |")
  return '\n'.join(lines) + '\n'


def pivot(rows: list[dict]) -> str:
  """Methods as columns, labelled examples per class as rows ('' when names do not parse)."""
  cells = {_size(r['condition']): r for r in rows}
  if None in cells:
    return ''
  methods = list(dict.fromkeys(m for m, _ in cells))
  sizes = sorted({n for _, n in cells})
  lines = ['| per class | ' + ' | '.join(methods) + ' |', '|---|' + '---|' * len(methods)]
  for n in sizes:
    lines.append(f"| {'all' if n == ALL_PER_CLASS else n} | " + ' | '.join(
        fmt(cells[(m, n)]['test_accuracy']) if (m, n) in cells else '' for m in methods) + ' |')
  return '\n'.join(lines) + '\n'


def plot(rows: list[dict], path: str) -> bool:
  curves: dict[str, list[tuple[int, dict]]] = {}
  for r in rows:
    size = _size(r['condition'])
    if not size:
      return False
    curves.setdefault(size[0], []).append((size[1], r))
  from analysis import common
  plt = common.pyplot()
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
  for i, (method, pts) in enumerate(curves.items()):
    pts.sort(key=lambda p: p[0])
    x = [p for p, _ in pts]
    style = {'marker': 'o', 'capsize': 3, 'label': method, 'color': f'C{i}'}  # same in both
    ax1.errorbar(x, [r['test_accuracy']['mean'] for _, r in pts],
                 [r['test_accuracy']['sd'] for _, r in pts], **style)
    if all('source_after' in r for _, r in pts):
      ax2.errorbar(x, [r['source_after']['mean'] for _, r in pts],
                   [r['source_after']['sd'] for _, r in pts], **style)
  before = [r['source_before']['mean'] for r in rows if r.get('source_before')]
  if before:
    ax2.axhline(np.mean(before), color='gray', ls='--', label='source net before')
  ax1.set(xscale='log', xlabel='labelled target examples per class',
          ylabel='target test accuracy (%)', title='target task (classes 5-9)')
  ax2.set(xscale='log', xlabel='labelled target examples per class',
          ylabel='source test accuracy (%)', title='source task after (classes 0-4)')
  for ax in (ax1, ax2):
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  common.save_figure(fig, path)
  return True


def main() -> None:
  p = argparse.ArgumentParser()
  p.add_argument('--workdir', required=True)
  args = p.parse_args()
  import util
  rows = summarize(gather(args.workdir))
  util.write_json(os.path.join(args.workdir, 'study.json'), {'rows': rows})
  table = markdown(rows) + ('\n' + pivot(rows) if pivot(rows) else '')
  with open(os.path.join(args.workdir, 'study.md'), 'w') as f:
    f.write(table)
  plotted = plot(rows, os.path.join(args.workdir, 'study.png'))
  print(table + (f"\n{os.path.join(args.workdir, 'study.png')}" if plotted else ''))


if __name__ == '__main__':
  main()
