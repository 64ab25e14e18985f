"""Study 2 (SimpNet Table VIII): where 1x1 convolutions go, at a fixed ~128K-parameter budget.

Slim SimpleNet's 13 layers with every conv 3x3, or two of its inner convs made 1x1 early,
in the middle or at the end (on the smallest maps, as SimpleNet does); widths rescaled so
each variant has 128K parameters +-2% for 28x28x1 inputs. The paper's CIFAR-10 accuracies
(13 layers, 128K): 1x1 early 87.71, middle 88.16, end 89.45, all 3x3 89.60
(../../shared/REFERENCES.md). Training: configs/sweeps/__init__.py's protocol, 3 seeds.

  python main.py --mode=sweep --config=configs/sweeps/one_by_one_budget.py --workdir=runs/one_by_one_budget

Results and reading: docs/architecture_studies.md (12 trials, about 32 minutes on 2 CPU cores).
"""

import ml_collections

from configs import default
from configs.sweeps import SEEDS, architecture_protocol
from configs.declare import axis, budget, product

# The report's reference: every conv 3x3, the baseline of SimpNet's Table VIII.
REFERENCE = 'one_by_one=none'


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = architecture_protocol(default.get_config(arg))
  c.model.num_one_by_one = 2
  return c


def get_sweep() -> list[dict]:
  return product(axis('model.one_by_one', ['none', 'early', 'middle', 'end']),
                 budget(128_000, tolerance=0.02), axis('seed', list(SEEDS)))
