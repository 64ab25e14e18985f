"""VGG (Simonyan & Zisserman 2014) with torchvision parity: 3x3 convs with bias, 2x2 max pools,
adaptive average pooling to 7x7, two 4096-wide dense layers with dropout 0.5. The `_bn`
variants put batch norm after every conv. Parameters at 224x224, 1000 classes: VGG-11
132,863,336; VGG-16 138,357,544; VGG-19 143,667,240 (torchvision).

The conv part is a layout of models/layout.py, so every layout knob applies: `layers` (an
explicit layout, '64,p,128,p,...'), `widths`, `width_multiplier` (which also scales the dense
layers), `kernel_size`, `one_by_one` (e.g. 'end' with `num_one_by_one=3` is close to the
paper's configuration C). `depth` counts weight layers as the paper does (convs + 3 dense):
11, 13, 16 and 19 pick the paper's configurations A, B, D, E; any other depth resamples the
variant's convs to `depth - 3`. `global_pool=avg|max` replaces the 7x7 adaptive pooling with
global pooling (the usual choice for 32x32 inputs).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax

from errors import UserError
from models import layers
from models.layout import POOL, resolve_layout
from models.registry import register

CONFIGS = {
    11: '64,p,128,p,256,256,p,512,512,p,512,512,p',
    13: '64,64,p,128,128,p,256,256,p,512,512,p,512,512,p',
    16: '64,64,p,128,128,p,256,256,256,p,512,512,512,p,512,512,512,p',
    19: '64,64,p,128,128,p,256,256,256,256,p,512,512,512,512,p,512,512,512,512,p',
}


class VGG(nn.Module):
  """Conv layout -> layers.MLPHead."""
  layout: tuple
  k: layers.Knobs
  num_classes: int
  global_pool: str = ''

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    k = self.k
    x = x.astype(k.dtype)
    for t in self.layout:
      if t == POOL:
        x = k.downsample(x, train)
      else:
        x = k.conv(t.width, kernel=t.kernel, stride=t.stride,
                   norm=k.norm if t.norm else 'none')(x, train)
    return layers.MLPHead(k, self.num_classes, hidden=(k.width(4096),) * 2, pool_to=7,
                          global_pool=self.global_pool)(x, train)


def build(knobs: dict, num_classes: int, dtype: Any, *, depth: int, norm: str) -> VGG:
  """Registry builder; `depth` and `norm` name the variant (e.g. 16 and 'batch' = vgg16_bn)."""
  k = layers.resolve_knobs(knobs, dtype, norm=norm, act='relu', init='he', pool='max',
                           dropout=0.5, one_by_one=None,
                           uses=('depth', 'widths', 'layers', 'one_by_one', 'num_one_by_one'))
  knobs = dict(knobs)
  if k.depth in CONFIGS:
    depth, knobs['depth'] = k.depth, None
  elif k.depth is not None:
    if k.depth < 4:
      raise UserError(f'VGG depth counts convs plus 3 dense layers: use at least 4, got {k.depth}')
    knobs['depth'] = k.depth - 3
  layout = resolve_layout(CONFIGS[depth], knobs)
  return VGG(layout=tuple(layout), k=k, num_classes=num_classes,
             global_pool=knobs.get('global_pool') or '')


for _depth in CONFIGS:
  register(f'vgg{_depth}', build, depth=_depth, norm='none')
  register(f'vgg{_depth}_bn', build, depth=_depth, norm='batch')
