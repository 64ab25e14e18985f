"""Where the FCN skip connections pay: per-class IoU and accuracy near object boundaries versus
inside objects, per configuration of a segmentation sweep (configs/sweeps/segmentation.py),
mean and sd over its seeds. Prints Markdown (docs/segmentation.md holds the measured tables).

  python scripts/segmentation_study.py runs/segmentation [--band=2]

A pixel is a boundary pixel when a label within `band` pixels of it (a (2 band + 1)^2 square)
differs from its own, background included; interior pixels are the other labelled ones.
"""

import argparse
import glob
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data import segmentation as seg_data  # noqa: E402
from store import runs  # noqa: E402


def boundary(masks: np.ndarray, band: int) -> np.ndarray:
  """(N, H, W) bool: labelled pixels with a different label within `band` pixels."""
  padded = np.pad(masks, ((0, 0), (band, band), (band, band)), mode='edge')
  h, w = masks.shape[1:]
  near = np.zeros(masks.shape, bool)
  for dy in range(2 * band + 1):
    for dx in range(2 * band + 1):
      near |= padded[:, dy:dy + h, dx:dx + w] != masks
  return near & (masks != seg_data.IGNORE)


def measure(workdir: str, band: int) -> dict:
  run = runs.load_run(workdir)
  test = run.test_split()
  pred = run.logits(test.images, batch_size=128).argmax(-1)
  truth = test.labels
  valid = truth != seg_data.IGNORE
  edge = boundary(truth, band)
  inner = valid & ~edge
  return {'boundary_accuracy': float((pred == truth)[edge].mean()),
          'interior_accuracy': float((pred == truth)[inner].mean()),
          'boundary_share': float(edge.sum() / valid.sum())}


def main() -> None:
  p = argparse.ArgumentParser()
  p.add_argument('sweep')
  p.add_argument('--band', type=int, default=2)
  args = p.parse_args()
  groups = {}
  for d in sorted(glob.glob(os.path.join(args.sweep, 'trials', '*'))):
    path = os.path.join(d, 'results.json')
    if not os.path.exists(path):
      continue
    with open(path) as f:
      r = json.load(f)
    name = os.path.basename(d).rsplit('_seed=', 1)[0]
    row = {'miou': r['test_miou'], 'per_class': r['test_per_class_iou'], **measure(d, args.band)}
    groups.setdefault(name, []).append(row)
  fmt = lambda v: f'{100 * np.mean(v):.1f} ± {100 * np.std(v, ddof=1):.1f}' if len(v) > 1 else \
      f'{100 * np.mean(v):.1f}'
  print(f'| configuration | seeds | mIoU % | boundary acc % (±{args.band} px) | interior acc % |')
  print('|---|---|---|---|---|')
  for name, rows in groups.items():
    print(f'| {name} | {len(rows)} | {fmt([r["miou"] for r in rows])} | '
          f'{fmt([r["boundary_accuracy"] for r in rows])} | '
          f'{fmt([r["interior_accuracy"] for r in rows])} |')
  share = np.mean([r['boundary_share'] for rows in groups.values() for r in rows])
  print(f'\nBoundary pixels are {100 * share:.1f}% of the labelled test pixels.\n')
  classes = list(next(iter(groups.values()))[0]['per_class'])
  print('| class | ' + ' | '.join(groups) + ' |')
  print('|---|' + '---|' * len(groups))
  for c in classes:
    cells = [fmt([r['per_class'][c] for r in rows if r['per_class'][c] is not None])
             for rows in groups.values()]
    print(f'| {c} | ' + ' | '.join(cells) + ' |')


if __name__ == '__main__':
  main()
