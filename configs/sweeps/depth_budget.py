"""Study 1 (SimpNet Table II): depth at a fixed ~300K-parameter budget, on Fashion-MNIST.

SimpNet's 8-, 9-, 10- and 13-layer CIFAR-10 layouts (the 13-layer one is slim SimpleNet), each
rescaled by a solved width multiplier to 300K parameters +-2% for 28x28x1 inputs. The paper's
CIFAR-10 accuracies (about 60 epochs, Adadelta): 8L 90.21, 9L 90.55, 10L 90.61, 13L 89.78
(../../shared/REFERENCES.md). Training: configs/sweeps/__init__.py's protocol, 3 seeds.

  python main.py --mode=sweep --config=configs/sweeps/depth_budget.py --workdir=runs/depth_budget

Results and reading: docs/architecture_studies.md (12 trials, about an hour on 2 CPU cores).
"""

import ml_collections

from configs import default
from configs.sweeps import SEEDS, architecture_protocol
from configs.declare import axis, budget, product, zipped

# Conv widths per layer, 'p' = 2x2 max pool; from the SimpNet paper / Coderx7/SimpNet.
# The report's reference: SimpleNet's own 13-layer layout.
REFERENCE = 'depth13'

LAYOUTS = {
    'depth8': '41,43,70,p,70,70,70,85,p,90',
    'depth9': '44,44,57,p,57,57,57,75,p,85,96',
    'depth10': '40,40,40,55,p,55,55,55,75,p,85,95',
    'depth13': '64,32,32,32,p,32,32,64,p,64,64,p,128,256k1,64k1,p,64',
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  return architecture_protocol(default.get_config(arg))


def get_sweep() -> list[dict]:
  """Four labelled layouts, each solved to the 300K budget."""
  return product(zipped(axis('sweep.name', list(LAYOUTS)), axis('model.layers', list(LAYOUTS.values()))),
                 budget(300_000, tolerance=0.02), axis('seed', list(SEEDS)))
