"""SimpNet (Hasanpour et al. 2018, "Towards Principled Design of Deep Convolutional Networks:
Introducing SimpNet", arXiv 1802.06205): SimpleNet's successor, every conv 3x3, widths that
grow gradually, 2x2 max pools followed by dropout ("SAF-pooling"), global max pooling.

The layouts are those of the official Caffe definitions (GitHub Coderx7/SimpNet, CIFAR-10):
  simpnet_5m          `SimpNetV2/Architectures/CIFAR10/5Mil` (5.48M parameters; the README
                      says 5.4M), dropout 0.2 after every conv and pool, 0.3 from the
                      second pool on
  simpnet_8m          `SimpNetV2/Architectures/CIFAR10/8.9Mil` (8.90M), dropout 0.2
  simpnet_slim_300k   `SimpNetV2/Experiments/Slim Test/CIFAR10/300K_93.25` (301K), no dropout
Each conv is Conv(bias) -> BatchNorm -> ReLU. The networks share SimpleNet's module, so every
layout knob of models/layout.py (depth, widths, one_by_one, kernel_size, ...) applies.
"""

from __future__ import annotations

from models import simplenet
from models.registry import register

LAYOUTS = {
    'simpnet_5m': '66,128,128,128,192,p,192,192,192,192,288,p,288,355,432',
    'simpnet_8m': '128,182,182,182,182,p,182,182,182,182,430,p,430,455,600',
    'simpnet_slim_300k': '30,40,40,40,50,p,50,50,50,50,58,p,58,70,90',
}
# Reference dropout per stage (before the first pool, after it, after the second).
DROPOUT = {'simpnet_5m': (0.2, 0.2, 0.3), 'simpnet_8m': (0.2,), 'simpnet_slim_300k': (0.0,)}

for _name, _layout in LAYOUTS.items():
  register(_name, simplenet.build, layout=_layout, dropout=DROPOUT[_name], dropout_at='all')
