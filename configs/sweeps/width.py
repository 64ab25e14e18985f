"""Study 3: width multiplier 0.25 to 2 at a fixed depth of 13, with SimpleNet's two 1x1
layers (`one_by_one=default`) and with them made 3x3 (`none`), on Fashion-MNIST.

SimpleNet's claim is that a well-designed narrow net is competitive with far larger ones
(slim 310K: 91.98 vs the 5.48M net's 95.51 on CIFAR-10, ../../shared/REFERENCES.md), and
SimpNet's that 1x1s at the end save parameters at little cost. Training is
configs/sweeps/__init__.py's protocol, 3 seeds.

  python main.py --mode=sweep --config=configs/sweeps/width.py --workdir=runs/width

Results and reading: docs/architecture_studies.md (24 trials, about 3.6 hours on 2 CPU cores,
most of it in the x2 trials: MACs grow with the square of the multiplier).
"""

import ml_collections

from configs import default
from configs.sweeps import SEEDS, architecture_protocol
from configs.declare import axis, product

# The report's reference: slim SimpleNet as published (x1, its two 1x1s).
REFERENCE = 'one_by_one=default_width_multiplier=1.0'


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  return architecture_protocol(default.get_config(arg))


def get_sweep() -> list[dict]:
  return product(axis('model.one_by_one', ['default', 'none']),
                 axis('model.width_multiplier', [0.25, 0.5, 1.0, 2.0]), axis('seed', list(SEEDS)))
