"""SimpleNet (Hasanpour et al. 2016, arXiv 1608.06037) as a layout-driven plain conv stack.

The layout language and the knobs that rewrite a layout (`layers`, `depth`, `one_by_one`,
`widths`, `width_multiplier`, `kernel_size`) live in models/layout.py; each conv is
Conv -> BatchNorm -> act (the official PyTorch block), followed by global pooling and one
dense classifier.

Variants, from the official repositories (see ../shared/REFERENCES.md):
  CIFAR (`simplenet_cifar_*`, 32x32 inputs): stride-1 convs, 2x2 max pools, dropout after each
    pool and the global pool.
  ImageNet (`simplenetv1_*`, Coderx7/SimpleNet_Pytorch `simplenet.py`): the 5M or 9M layout,
    width scale 0.5 / 0.75 / 1, stride mode m1 (stride 2 on convs 0, 1, 2) or m2 (convs 0, 1,
    3). As in the official code every conv pads by one pixel, so its 1x1 convs grow the map by
    two, and dropout (rate 0 by default) may follow every conv and pool.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from models import layers
from models.layout import POOL, Conv, format_layout, join, parse_layout, resolve_layout, split
from models.registry import register

LAYOUT_KNOBS = ('depth', 'widths', 'layers', 'one_by_one', 'num_one_by_one')


class SimpleNet(nn.Module):
  """Plain conv stack from a resolved layout; see the module docstring.

  `dropout` is one rate or one per stage (stage i = the convs after the i-th pool, with the
  dropout that follows that pool); `dropout_at='all'` also puts dropout after every conv that
  no pool follows (SimpNet's Caffe nets, SimpleNet's ImageNet code). `pad_1x1` pads 1x1 convs.
  """
  layout: tuple
  k: layers.Knobs
  num_classes: int
  dropout: float | tuple = 0.0
  dropout_at: str = 'pool'
  pad_1x1: int = 0

  def _drop(self, x: jax.Array, stage: int, train: bool) -> jax.Array:
    rates = self.dropout if isinstance(self.dropout, tuple) else (self.dropout,)
    return nn.Dropout(rates[min(stage, len(rates) - 1)], deterministic=not train)(x)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    k = self.k
    x = x.astype(k.dtype)
    stage, last_conv = 0, max(i for i, t in enumerate(self.layout) if t != POOL)
    for i, t in enumerate(self.layout):
      if t == POOL:
        stage += 1
        x = self._drop(k.downsample(x, train), stage, train)
        continue
      x = k.conv(t.width, kernel=t.kernel, stride=t.stride,
                 padding=self.pad_1x1 if t.kernel == 1 and self.pad_1x1 else 'SAME',
                 norm=k.norm if t.norm else 'none')(x, train)
      pool_next = i + 1 < len(self.layout) and self.layout[i + 1] == POOL
      if self.dropout_at == 'all' and not pool_next and i != last_conv:
        x = self._drop(x, stage, train)
    x = layers.global_pool(x, k.global_pool)
    x = self._drop(x, stage, train)
    return k.dense(self.num_classes)(x).astype(jnp.float32)


def build(knobs: dict, num_classes: int, dtype: Any, *, layout: str, width_scale: float = 1.0,
          dropout: float | tuple = 0.0, dropout_at: str = 'pool', pad_1x1: int = 0) -> SimpleNet:
  """Registry builder: knob dict -> SimpleNet (knobs left empty take the reference values).

  The keyword arguments describe the named variant: its base layout, its own width factor,
  its reference dropout (one rate or one per stage), dropout placement and 1x1 padding.
  The official block's BatchNorm momentum is PyTorch's 0.05 (Flax 0.95).
  """
  k = layers.resolve_knobs(knobs, dtype, norm='batch', act='relu', init='xavier_relu',
                           pool='max', global_pool='max', one_by_one=None, uses=LAYOUT_KNOBS,
                           bn_momentum=0.95)
  if knobs.get('dropout') is not None:
    dropout = k.dropout
  return SimpleNet(layout=tuple(resolve_layout(layout, knobs, width_scale)), k=k,
                   num_classes=num_classes, dropout=dropout, dropout_at=dropout_at,
                   pad_1x1=pad_1x1)


# Layouts of the official SimpleNet repositories (see ../shared/REFERENCES.md).
CIFAR_LAYOUTS = {
    'simplenet_cifar_5m': '64,128,128,128,p,128,128,256,p,256,256,p,512,2048k1,256k1,p,256',
    'simplenet_cifar_310k': '64,32,32,32,p,32,32,64,p,64,64,p,128,256k1,64k1,p,64',
    # The Caffe network behind the paper's 460K / 92.33% result (SimpNet_V1/Logs/CIfar10/
    # Slim_version_460KParam): its last three layers carry no batch norm, the two 96-wide
    # ones are 3x3 and the 100-wide one is 1x1, then a pool. SimpleNet_Pytorch's
    # `simplenet_cifar_460k` ('...,96,96k1,96k1,p,100') has only 385,790 parameters.
    'simplenet_cifar_460k': '32,32,32,64,p,64,64,64,p,64,64,p,96,96n,96n,p,100k1n,p',
}

for _name, _layout in CIFAR_LAYOUTS.items():
  register(_name, build, layout=_layout)
# A generic name for layout-only use (`--config.model.layers=...`); defaults to the 5M layout.
register('simplenet', build, layout=CIFAR_LAYOUTS['simplenet_cifar_5m'])

# ImageNet layouts before strides: the 5M base and the wider 9M one.
IMAGENET_LAYOUTS = {
    '5m': '64,128,128,128,128,128,p,256,256,256,512,p,2048k1,256k1,256',
    '9m': '128,192,192,192,192,192,p,320,320,320,640,p,2560k1,320k1,320',
}
# Stride modes: which convs (0-based) have stride 2.
STRIDE_MODES = {'m1': (0, 1, 2), 'm2': (0, 1, 3)}


def imagenet_layout(base: str, mode: str) -> str:
  """An ImageNet layout with its stride mode applied, e.g. ('5m', 'm2') -> '64s2,128s2,...'."""
  convs, pools = split(parse_layout(IMAGENET_LAYOUTS[base]))
  convs = [Conv(c.width, c.kernel, 2 if i in STRIDE_MODES[mode] else 1) for i, c in enumerate(convs)]
  return format_layout(join(convs, pools))


for _mode in STRIDE_MODES:
  for _suffix, _base, _scale in (('small_{}_05', '5m', 0.5), ('small_{}_075', '5m', 0.75),
                                 ('5m_{}', '5m', 1.0), ('9m_{}', '9m', 1.0)):
    register('simplenetv1_' + _suffix.format(_mode), build, layout=imagenet_layout(_base, _mode),
             width_scale=_scale, dropout_at='all', pad_1x1=1)
