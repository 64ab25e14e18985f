"""Accuracy against eps of several attacked runs in one figure, from their
`W/attack/results.json` (written by `python main.py --mode=attack --workdir=W`).

  .venv/bin/python bench/robustness_curves.py OUT.png NAME=W [NAME=W ...]

One panel; per run a solid line for the worst case over every attack the run was given
(white-box, and Square when it ran) and a dashed one for PGD alone.
"""

import json
import os
import sys

import matplotlib

matplotlib.use('Agg')
from matplotlib import pyplot as plt  # noqa: E402


def main(out: str, runs: list[str]) -> None:
  fig, ax = plt.subplots(figsize=(5.5, 3.8))
  for spec in runs:
    name, _, workdir = spec.partition('=')
    with open(os.path.join(workdir, 'attack', 'results.json')) as f:
      r = json.load(f)
    names = {row['attack'] for row in r['attacks']}
    worst = 'worst_case' if 'worst_case' in names else 'worst_case_whitebox'
    for attack, style in ((worst, '-'), ('pgd', '--')):
      pts = sorted((row['eps'], row['robust_accuracy']) for row in r['attacks']
                   if row['attack'] == attack)
      ax.plot([0] + [p[0] for p in pts], [100 * r['clean_accuracy']] +
                      [100 * p[1] for p in pts], style, marker='o', ms=3,
                      label=f'{name}: {"PGD-20" if attack == "pgd" else attack.replace("_", " ")}',
                      color=None if attack != 'pgd' else ax.lines[-1].get_color())
  ax.set(xlabel=f'eps ({r["norm"]}, pixels in [0, 1])', ylabel='test accuracy (%)', ylim=(0, 100))
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(out, dpi=110)
  print(f'wrote {out}')


if __name__ == '__main__':
  if len(sys.argv) < 3:
    sys.exit(__doc__)
  main(sys.argv[1], sys.argv[2:])
