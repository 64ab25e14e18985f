"""Draws a run's curves.png (test accuracy and training loss per epoch) from its results.json,
e.g. for runs finished before runs wrote it themselves.

  python scripts/plot_run.py runs/x [OUT.png]     (default OUT: runs/x/curves.png)
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from train import loop  # noqa: E402

if __name__ == '__main__':
  if len(sys.argv) not in (2, 3):
    sys.exit('usage: python scripts/plot_run.py WORKDIR [OUT.png]')
  with open(os.path.join(sys.argv[1], 'results.json')) as f:
    results = json.load(f)
  loop.plot_curves(results, sys.argv[2] if len(sys.argv) == 3 else
                   os.path.join(sys.argv[1], 'curves.png'))
