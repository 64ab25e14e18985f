"""Plots one run's curves from its results.json: test accuracy against wall time and epoch,
and the training loss.

  python scripts/plot_run.py runs/fast docs/fast/curve.png
"""

import json
import os
import sys

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402


def main(workdir: str, out: str) -> None:
  with open(os.path.join(workdir, 'results.json')) as f:
    r = json.load(f)
  hist, log = r['history'], r['train_log']
  steps_per_epoch = r['steps'] / r['epochs']
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
  ax1.plot([h['time_s'] / 60 for h in hist], [100 * h['test_accuracy'] for h in hist], 'o-')
  for h in hist:
    ax1.annotate(f"ep {h['epoch']:g}", (h['time_s'] / 60, 100 * h['test_accuracy']),
                 textcoords='offset points', xytext=(-10, 6), fontsize=8)
  ax1.set(xlabel='wall time (min)', ylabel='test accuracy (%)',
          title=f"{r['config']['model']['name']}: {100 * r['test_accuracy']:.2f}% "
                f"in {r['train_time_s'] / 60:.1f} min")
  ax1.grid(alpha=0.3)
  ax2.plot([s / steps_per_epoch for s, _, _ in log], [l for _, l, _ in log])
  ax2.set(xlabel='epoch', ylabel='training loss (label-smoothed)', title='training loss')
  ax2.grid(alpha=0.3)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  fig.savefig(out, dpi=110)


if __name__ == '__main__':
  if len(sys.argv) != 3:
    sys.exit('usage: python scripts/plot_run.py WORKDIR OUT.png')
  main(sys.argv[1], sys.argv[2])
