"""AlexNet (Krizhevsky et al. 2012) in torchvision's layout, and ZFNet (Zeiler & Fergus 2013).

AlexNet (`alexnet`): torchvision's single-tower version, 64-192-384-256-256 filters, 11x11
stride-4 first layer; 61,100,840 parameters at 224x224 with 1000 classes.
ZFNet (`zfnet`): the paper's 7x7 stride-2 first layer with 96 filters, a 5x5 stride-2
second layer with 256, then 384-384-256; 3x3 stride-2 pools that round up (Caffe's default),
which gives the paper's map sizes 110-55-26-13-13-13-6 at 224x224.
Both end in adaptive average pooling to 6x6 and two 4096-wide dense layers with dropout 0.5.
Local response normalization is left out, as in torchvision (`norm=batch` adds batch norm).

Knobs: `width_multiplier` scales every conv and dense width; `kernel_size` replaces the 3x3
kernels; `pool` is the kind of the three pools (max, avg, conv); `global_pool=avg|max` swaps
the 6x6 adaptive pooling for global pooling (a much smaller classifier).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax

from models import layers
from models.registry import register

# ('conv', width, kernel, stride, padding) or ('pool', window, stride, round_up).
ALEXNET = (('conv', 64, 11, 4, 2), ('pool', 3, 2, False), ('conv', 192, 5, 1, 2),
           ('pool', 3, 2, False), ('conv', 384, 3, 1, 1), ('conv', 256, 3, 1, 1),
           ('conv', 256, 3, 1, 1), ('pool', 3, 2, False))
ZFNET = (('conv', 96, 7, 2, 1), ('pool', 3, 2, True), ('conv', 256, 5, 2, 0),
         ('pool', 3, 2, True), ('conv', 384, 3, 1, 1), ('conv', 384, 3, 1, 1),
         ('conv', 256, 3, 1, 1), ('pool', 3, 2, True))


class AlexNet(nn.Module):
  """A conv/pool spec (see ALEXNET) followed by layers.MLPHead."""
  spec: tuple
  k: layers.Knobs
  num_classes: int
  global_pool: str = ''

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    k = self.k
    x = x.astype(k.dtype)
    for kind, *args in self.spec:
      if kind == 'pool':
        window, stride, ceil = args
        x = k.downsample(x, train, window, stride, ceil=ceil)
      else:
        width, kernel, stride, pad = args
        kernel, pad = (kernel, pad) if kernel != 3 else (k.kernel(3), k.kernel(3) // 2)
        x = k.conv(k.width(width), kernel=kernel, stride=stride, padding=pad)(x, train)
    return layers.MLPHead(k, self.num_classes, hidden=(k.width(4096),) * 2, pool_to=6,
                          global_pool=self.global_pool)(x, train)


def build(knobs: dict, num_classes: int, dtype: Any, *, spec: tuple) -> AlexNet:
  """Registry builder (reference: ReLU, no normalization, max pools, dropout 0.5)."""
  k = layers.resolve_knobs(knobs, dtype, norm='none', act='relu', init='he', pool='max',
                           dropout=0.5, one_by_one=('default',))
  return AlexNet(spec=spec, k=k, num_classes=num_classes,
                 global_pool=knobs.get('global_pool') or '')


register('alexnet', build, spec=ALEXNET)
register('zfnet', build, spec=ZFNET)
