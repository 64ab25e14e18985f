"""Study 3: width multiplier 0.25 to 2 at a fixed depth of 13, with SimpleNet's two 1x1
layers (`one_by_one=default`) and with them made 3x3 (`none`), on Fashion-MNIST.

SimpleNet's claim is that a well-designed narrow net is competitive with far larger ones
(slim 310K: 91.98 vs the 5.48M net's 95.51 on CIFAR-10, ../../shared/REFERENCES.md), and
SimpNet's that 1x1s at the end save parameters at little cost. Training is
configs/default.py's recipe.

  python main.py --mode=sweep --config=configs/sweeps/width.py --workdir=runs/width

Cost on 2 CPU cores: MACs grow with the square of the multiplier; the eight trials together
need about 11x the MACs of slim SimpleNet (about 160 s per epoch), roughly 30 minutes per
epoch for the study, most of it in the two x2 trials.
"""

import ml_collections

from configs import default
from configs.sweeps import SEEDS, architecture_protocol
from sweeps import axis, product

# The report's reference: slim SimpleNet as published (x1, its two 1x1s).
REFERENCE = 'one_by_one=default_width_multiplier=1.0'


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  return architecture_protocol(default.get_config(arg))


def get_sweep() -> list[dict]:
  return product(axis('model.one_by_one', ['default', 'none']),
                 axis('model.width_multiplier', [0.25, 0.5, 1.0, 2.0]), axis('seed', list(SEEDS)))
