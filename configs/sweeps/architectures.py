"""Study 4 (SimpleNet paper's comparison table): slim SimpleNet against deeper and bigger nets
under one recipe and one budget of epochs, on Fashion-MNIST (configs/sweeps/__init__.py's
protocol, 3 seeds).

The reference is `simplenet_cifar_310k`. The others: ResNet-20 and -56 (He et al., CIFAR
option A), DenseNet-BC-100 k=12, All-CNN-C and NiN (both with batch norm added: see below), and
VGG-11-BN's conv stack with its width solved to SimpleNet's parameter count. The SimpleNet
README's CIFAR-10 numbers (../../shared/REFERENCES.md): slim 310K 91.98, ResNet-110 1.7M 93.57,
NiN 1M 91.19, All-CNN 1.3M 92.75.

  python main.py --mode=sweep --config=configs/sweeps/architectures.py --workdir=runs/architectures
  python main.py --mode=report --workdir=runs/architectures --reference=simplenet_cifar_310k
"""

import ml_collections

from configs import default
from configs.sweeps import SEEDS, architecture_protocol
from configs.declare import axis, product

REFERENCE = 'simplenet_cifar_310k'
VGG11_28 = '64,p,128,p,256,256,p,512,512,p,512,512'
SIMPLENET_PARAMS = 311_210  # simplenet_cifar_310k at 28x28x1
# The reference, then the others in order of MACs per image, so a sweep cut short (a session,
# a SLURM limit) has the cheap comparisons finished first.
MODELS = ('simplenet_cifar_310k', 'vgg11_bn', 'resnet20', 'resnet56', 'nin', 'allconv_c',
          'densenet_bc_100_k12')
UNNORMALIZED = ('allconv_c', 'nin')


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  return architecture_protocol(default.get_config(arg))


def get_sweep() -> list[dict]:
  nets = []
  for n in MODELS:
    if n == 'vgg11_bn':
      # VGG-11-BN at 9.8M parameters would compare sizes, not designs, and its two 4096-wide
      # dense layers would take most of a 311K budget. So: VGG-11's eight BN convs (fifth pool
      # dropped: 28x28 has only four halvings) with SimpleNet's global-pool linear head, as
      # CIFAR ports of VGG do, widths solved to SimpleNet's parameter count.
      nets.append({'sweep.name': 'vgg11_bn_311k', 'model.name': 'simplenet',
                   'model.layers': VGG11_28, 'sweep.budget_params': SIMPLENET_PARAMS,
                   'sweep.budget_tolerance': 0.02})
    elif n in UNNORMALIZED:
      # As published these have no normalization, and the recipe's peak lr of 0.2 breaks them
      # (measured at width 0.5: All-CNN-C's loss is non-finite by step 40, NiN sits at 10%).
      # They get batch norm after every conv, as every other net here has; the recipe stays.
      nets.append({'sweep.name': f'{n}_bn', 'model.name': n, 'model.norm': 'batch'})
    else:
      nets.append({'sweep.name': n, 'model.name': n})
  return product(nets, axis('seed', list(SEEDS)))
