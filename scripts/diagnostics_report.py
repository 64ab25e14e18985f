"""The table and plot of the initialization / activation / normalization study
(configs/sweeps/init_activation_norm.py) from its sweep directory: per configuration (trials
named `<net>_<norm>_<init>_<activation>_seed=N`), the final test accuracy over seeds (mean ±
sd, diverged runs counted), and from the runs' diagnostics at a fixed step the dead-unit
fraction (mean over conv layers) and the gradient norm of the first layer
and of the head. Writes W/study.json, W/study.md and W/study.png (per init x activation, a
column per net and normalization: accuracy, and the first layer's gradient norm).

  python scripts/diagnostics_report.py --workdir=runs/init_activation_norm --step=100
"""

from __future__ import annotations

import argparse
import os
import re
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

NAME = re.compile(r'(?P<net>[a-z0-9]+)_(?P<norm>none|batch)_(?P<init>.+?)_(?P<act>leaky_relu|relu|'
                  r'elu|gelu|sigmoid|tanh)_seed=(?P<seed>\d+)$')


def at_step(diag: dict, stat: str, layer: str, step: int):
  """The statistic of `layer` at the last diagnostics step <= `step`."""
  idx = [i for i, s in enumerate(diag['steps']) if s <= step]
  values = diag[stat].get(layer) or []
  return values[idx[-1]] if idx and idx[-1] < len(values) else None


def _geomean(values: list) -> float | None:
  """Geometric mean over seeds (gradient norms span orders of magnitude); an exactly zero
  gradient (a net with no live path) makes it 0."""
  v = [x for x in values if x is not None]
  if not v:
    return None
  return 0.0 if min(v) == 0 else float(np.exp(np.mean(np.log(v))))


def _order(net: str, norm: str, init: str, act: str) -> tuple:
  """The study's own order (configs/sweeps/init_activation_norm.py), unknown names last."""
  from configs.sweeps import init_activation_norm as study
  rank = lambda seq, v: seq.index(v) if v in seq else len(seq)  # noqa: E731
  return (rank(list(study.NETS), net), norm != 'none', rank(study.INITS, init),
          rank(study.ACTIVATIONS, act), net, init, act)


def gather(workdir: str, step: int) -> list[dict]:
  import util
  from sweeps import runner
  groups: dict[tuple, list[dict]] = {}
  root = os.path.join(workdir, 'trials')
  for name in sorted(os.listdir(root)):
    m = NAME.match(name)
    if not m:
      continue
    d = os.path.join(root, name)
    state = runner.state(d)
    if state not in ('done', 'failed'):
      continue
    status = util.read_json(os.path.join(d, runner.STATUS)) or {}
    diverged = state == 'failed' and 'non-finite' in status.get('error', '')
    if state == 'failed' and not diverged:
      continue
    r = util.read_json(os.path.join(d, runner.RESULTS)) if state == 'done' else None
    key = (m['net'], m['norm'], m['init'], m['act'])
    groups.setdefault(key, []).append({'diverged': diverged, 'results': r, 'seed': int(m['seed'])})
  rows = []
  for (net, norm, init, act), runs in sorted(groups.items(), key=lambda kv: _order(*kv[0])):
    accs = [100 * r['results']['test_accuracy'] for r in runs if r['results']]
    dead, g_first, g_head = [], [], []
    for r in runs:
      diag = (r['results'] or {}).get('diagnostics')
      if not diag:
        continue
      convs = diag['layers'][:-1]
      d = [at_step(diag, 'dead_fraction', n, step) for n in convs]
      if d and all(v is not None for v in d):
        dead.append(100 * float(np.mean(d)))
      g_first.append(at_step(diag, 'grad_norm', diag['layers'][0], step))
      g_head.append(at_step(diag, 'grad_norm', diag['layers'][-1], step))
    rows.append({
        'net': net, 'norm': norm, 'init': init, 'activation': act, 'runs': len(runs),
        'diverged': sum(r['diverged'] for r in runs), 'accuracies': [round(a, 2) for a in accs],
        'mean': float(np.mean(accs)) if accs else None,
        'sd': float(np.std(accs, ddof=1)) if len(accs) > 1 else None,
        'dead_percent': float(np.mean(dead)) if dead else None,
        'grad_norm_first': _geomean(g_first), 'grad_norm_head': _geomean(g_head),
    })
  return rows


def markdown(rows: list[dict], step: int) -> str:
  lines = [f'| net | norm | init | activation | final test acc % (mean ± sd) | diverged | '
           f'dead units % (step {step}) | grad norm, first layer (step {step}) | '
           f'grad norm, head | first / head |', '|---|---|---|---|---:|---:|---:|---:|---:|---:|']
  for r in rows:
    acc = '-' if r['mean'] is None else f"{r['mean']:.2f}" + (f" ± {r['sd']:.2f}" if r['sd'] is not None else '')
    ratio = (f"{r['grad_norm_first'] / r['grad_norm_head']:.3g}"
             if r['grad_norm_first'] and r['grad_norm_head'] else '-')
    fmt = lambda v: '-' if v is None else f'{v:.3g}'  # noqa: E731
    lines.append(f"| {r['net']} | {r['norm']} | {r['init']} | {r['activation']} | {acc} | "
                 f"{r['diverged']}/{r['runs']} | {fmt(r['dead_percent'])} | "
                 f"{fmt(r['grad_norm_first'])} | {fmt(r['grad_norm_head'])} | {ratio} |")
  lines += ['', 'Gradient norms: geometric mean over seeds. Dead units: channels exactly 0 on '
            'the whole batch (no gradient reaches them), mean over conv layers and seeds.']
  return '\n'.join(lines) + '\n'


def plot(rows: list[dict], path: str, step: int) -> None:
  """Two rows of heatmaps (init x activation), a column per net and normalization: the final
  test accuracy, and log10 of the first layer's gradient norm at `step`."""
  from analysis import common
  plt = common.pyplot()
  panels = list(dict.fromkeys((r['net'], r['norm']) for r in rows))
  fig, axes = plt.subplots(2, len(panels), figsize=(3.4 * len(panels), 6.4), squeeze=False)
  stats = (('mean', 'test accuracy (%)', (10, 95), lambda v: f'{v:.0f}'),
           ('grad_norm_first', f'log10 first-layer grad norm, step {step}', (-10, 0),
            lambda v: f'{v:.1f}'))
  for row, (key, label, (lo, hi), fmt) in enumerate(stats):
    for ax, (net, norm) in zip(axes[row], panels):
      sub = [r for r in rows if r['net'] == net and r['norm'] == norm]
      inits = list(dict.fromkeys(r['init'] for r in sub))
      acts = list(dict.fromkeys(r['activation'] for r in sub))
      grid = np.full((len(inits), len(acts)), np.nan)
      for r in sub:
        v = r[key]
        if v is not None and key == 'grad_norm_first':
          v = np.log10(v) if v > 0 else -np.inf
        grid[inits.index(r['init']), acts.index(r['activation'])] = np.nan if v is None else v
      im = ax.imshow(np.clip(grid, lo, hi), vmin=lo, vmax=hi, cmap='viridis')
      for i in range(len(inits)):
        for j in range(len(acts)):
          v = grid[i, j]
          text = '-' if np.isnan(v) else ('0 grad' if np.isneginf(v) else fmt(v))
          dark = np.isnan(v) or np.clip(v, lo, hi) < lo + 0.55 * (hi - lo)
          ax.text(j, i, text, ha='center', va='center', fontsize=7, color='w' if dark else 'k')
      ax.set_xticks(range(len(acts)), acts, rotation=45, fontsize=7)
      ax.set_yticks(range(len(inits)), inits, fontsize=7)
      ax.set_title(f'{net}, norm {norm}', fontsize=9)
    fig.colorbar(im, ax=axes[row].tolist(), shrink=0.8, label=label)
  common.save_figure(fig, path, dpi=110)


def main() -> None:
  p = argparse.ArgumentParser()
  p.add_argument('--workdir', required=True)
  p.add_argument('--step', type=int, default=100, help='diagnostics step the table reads')
  a = p.parse_args()
  import util
  rows = gather(a.workdir, a.step)
  util.write_json(os.path.join(a.workdir, 'study.json'), {'step': a.step, 'rows': rows})
  with open(os.path.join(a.workdir, 'study.md'), 'w') as f:
    f.write(markdown(rows, a.step))
  plot(rows, os.path.join(a.workdir, 'study.png'), a.step)
  print(markdown(rows, a.step))


if __name__ == '__main__':
  main()
