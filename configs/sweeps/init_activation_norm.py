"""Why deep plain nets fail to train: initialization x activation x normalization, measured
with the per-layer diagnostics (train/diagnostics.py), on Fashion-MNIST.

Two plain stacks: slim SimpleNet's 13-conv layout at half width, and a deeper VGG-style stack
of 16 3x3 convs (4 per stage, widths 16-32-64-64), both with a global-pool linear head.
  - without normalization: init {he, xavier, lecun, orthogonal, small_normal} x activation
    {relu, leaky_relu, elu, sigmoid, tanh} (25 per net)
  - with batch norm: init {he, small_normal} x the same activations (10 per net): whether
    batch norm rescues the bad init and the saturating activations
3 seeds each (210 trials). A short schedule: 300 steps of 128 from the first 1,000 training
images per class, SGD-Nesterov one-cycle to lr 0.05 after a 0.2-epoch warmup, evaluated once
on the first 2,000 test images; diagnostics every 20 steps. (120 steps with a full-epoch
warmup left even He-initialized ReLU without normalization at chance: too short to rank.)
The table (scripts/diagnostics_report.py) reads the dead units and the gradient norms at
step 100.

  python main.py --mode=sweep --config=configs/sweeps/init_activation_norm.py \\
      --workdir=runs/init_activation_norm --parallel=2
  python scripts/diagnostics_report.py --workdir=runs/init_activation_norm
"""

import ml_collections

from configs import default
from configs.sweeps import SEEDS
from configs.declare import axis, product

NETS = {
    'simplenet13': '64,32,32,32,p,32,32,64,p,64,64,p,128,256k1,64k1,p,64',
    'vgg16plain': '16,16,16,16,p,32,32,32,32,p,64,64,64,64,p,64,64,64,64',
}
WIDTH = {'simplenet13': 0.5, 'vgg16plain': 1.0}
INITS = ('he', 'xavier', 'lecun', 'orthogonal', 'small_normal')
ACTIVATIONS = ('relu', 'leaky_relu', 'elu', 'sigmoid', 'tanh')


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = default.get_config(arg)
  c.model.name = 'simplenet'
  c.dataset.per_class = 1000
  c.dataset.test_size = 2000
  c.num_train_steps = 300
  c.schedule.warmup_epochs = 0.2
  c.eval_every_epochs = 1000  # once, at the end
  c.log_every_steps = 20
  c.optimizer.learning_rate = 0.05
  c.diagnostics.enabled = True
  c.diagnostics.every_steps = 20
  return c


def get_sweep() -> list[dict]:
  designs = ([('none', i, a) for i in INITS for a in ACTIVATIONS] +
             [('batch', i, a) for i in ('he', 'small_normal') for a in ACTIVATIONS])
  trials = [{'sweep.name': f'{net}_{norm}_{init}_{act}', 'model.layers': layout,
             'model.width_multiplier': WIDTH[net], 'model.norm': norm, 'model.init': init,
             'model.activation': act}
            for net, layout in NETS.items() for norm, init, act in designs]
  return product(trials, axis('seed', list(SEEDS)))
