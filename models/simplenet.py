"""SimpleNet (Hasanpour et al. 2016, arXiv 1608.06037) as a layout-driven plain conv stack.

A layout is a comma-separated string read left to right:
  `64`      a 3x3 conv with 64 filters (3x3 unless `kernel_size` says otherwise)
  `2048k1`  a conv with kernel 1 (any `k<n>` suffix sets that layer's kernel)
  `p`       a 2x2 stride-2 downsampling (max pool by default; see the `pool` knob)
followed by global pooling and one dense classifier. Each conv is Conv -> BatchNorm -> act
(the official PyTorch block), dropout follows each downsampling and the global pool.

The architectural knobs rewrite the layout in Python, in this order, so sweeps over depth,
width and 1x1 placement never need a new class:
  `layers`            an explicit layout replacing the variant's
  `depth`             resample the conv sequence to this many convs (widths, kernels and
                      pool positions keep their relative place)
  `one_by_one`        'default' keeps the layout's 1x1s; 'none' makes every conv 3x3;
                      'early' | 'middle' | 'end' puts `num_one_by_one` 1x1 convs there;
                      '3,7' makes exactly those conv indices (0-based) 1x1
  `widths`            explicit per-conv widths ('64,32,...', one per conv)
  `width_multiplier`  scales every conv width (rounded, at least 1)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from errors import UserError
from models import layers
from models.registry import register

POOL = 'p'


@dataclasses.dataclass(frozen=True)
class Conv:
  width: int
  kernel: int = 3


Layout = list  # of Conv | 'p'


def parse_layout(spec: str | Sequence) -> Layout:
  """'64,128,p,2048k1' -> [Conv(64), Conv(128), 'p', Conv(2048, 1)]."""
  tokens = spec.split(',') if isinstance(spec, str) else list(spec)
  out: Layout = []
  for tok in tokens:
    tok = str(tok).strip().lower()
    if not tok:
      continue
    if tok == POOL:
      out.append(POOL)
      continue
    width, _, kernel = tok.partition('k')
    try:
      conv = Conv(int(width), int(kernel) if kernel else 3)
    except ValueError:
      raise UserError(f'bad layout token {tok!r}; use e.g. 64 (3x3 conv), 256k1 (1x1 conv) or p (pool)') from None
    if conv.width < 1 or conv.kernel < 1:
      raise UserError(f'layout token {tok!r}: width and kernel must be positive')
    out.append(conv)
  if not any(isinstance(t, Conv) for t in out):
    raise UserError(f'layout {spec!r} has no conv layer')
  return out


def format_layout(layout: Layout) -> str:
  return ','.join(t if t == POOL else (f'{t.width}' if t.kernel == 3 else f'{t.width}k{t.kernel}')
                  for t in layout)


def _split(layout: Layout) -> tuple[list[Conv], list[int]]:
  """Conv list and, for each pool, the number of convs before it."""
  convs, pools = [], []
  for t in layout:
    if t == POOL:
      pools.append(len(convs))
    else:
      convs.append(t)
  return convs, pools


def _join(convs: list[Conv], pools: list[int]) -> Layout:
  out: Layout = []
  for i, c in enumerate(convs):
    out.extend([POOL] * pools.count(i))
    out.append(c)
  out.extend([POOL] * pools.count(len(convs)))
  return out


def resize_depth(layout: Layout, depth: int) -> Layout:
  """Resamples the conv sequence to `depth` convs; pools keep their relative positions."""
  convs, pools = _split(layout)
  n = len(convs)
  if depth == n:
    return layout
  new_convs = [convs[min(n - 1, (i * n) // depth)] for i in range(depth)]
  new_pools = [max(1, min(depth, round(p * depth / n))) for p in pools]
  return _join(new_convs, new_pools)


def one_by_one_indices(num_convs: int, placement: str, count: int) -> list[int]:
  """Conv indices made 1x1 for a placement. The first conv (raw pixels) and the last
  (the features the classifier reads) always stay spatial, as in SimpNet's study."""
  inner = list(range(1, num_convs - 1))
  if count > len(inner):
    raise UserError(f'num_one_by_one={count} does not fit in {num_convs} convs '
                    f'(at most {len(inner)}: the first and last conv stay spatial)')
  if placement == 'early':
    return inner[:count]
  if placement == 'end':
    return inner[len(inner) - count:]
  start = (len(inner) - count) // 2  # middle
  return inner[start:start + count]


def place_one_by_one(layout: Layout, one_by_one: str, count: int | None, kernel: int) -> Layout:
  convs, pools = _split(layout)
  default_count = sum(c.kernel == 1 for c in convs) or 2
  if one_by_one == 'default':
    idx = [i for i, c in enumerate(convs) if c.kernel == 1]
  elif one_by_one == 'none':
    idx = []
  elif one_by_one in ('early', 'middle', 'end'):
    idx = one_by_one_indices(len(convs), one_by_one, default_count if count is None else count)
  else:
    try:
      idx = [int(s) for s in one_by_one.split(',') if s.strip()]
    except ValueError:
      raise UserError(f"unknown one_by_one {one_by_one!r}; use default, none, early, middle, end "
                      "or conv indices like '10,11'") from None
    bad = [i for i in idx if not 0 <= i < len(convs)]
    if bad:
      raise UserError(f'one_by_one indices {bad} out of range for {len(convs)} convs')
  convs = [Conv(c.width, 1 if i in idx else kernel) for i, c in enumerate(convs)]
  return _join(convs, pools)


def set_widths(layout: Layout, widths: str, multiplier: float) -> Layout:
  convs, pools = _split(layout)
  if widths:
    try:
      ws = [int(w) for w in widths.split(',') if w.strip()]
    except ValueError:
      raise UserError(f'widths must be comma-separated integers, got {widths!r}') from None
    if len(ws) != len(convs):
      raise UserError(f'widths lists {len(ws)} values but the layout has {len(convs)} convs')
    convs = [Conv(w, c.kernel) for w, c in zip(ws, convs)]
  if multiplier <= 0:
    raise UserError(f'width_multiplier must be positive, got {multiplier}')
  convs = [Conv(max(1, int(round(c.width * multiplier))), c.kernel) for c in convs]
  if any(c.width < 1 for c in convs):
    raise UserError('every conv width must be positive')
  return _join(convs, pools)


def resolve_layout(base: str, knobs: dict) -> Layout:
  """Applies the architectural knobs (see module docstring) to a variant's base layout."""
  layout = parse_layout(knobs.get('layers') or base)
  depth = knobs.get('depth')
  if depth is not None:
    if depth < 1:
      raise UserError(f'depth must be positive, got {depth}')
    layout = resize_depth(layout, depth)
  kernel = knobs.get('kernel_size') or 3
  if kernel < 1:
    raise UserError(f'kernel_size must be positive, got {kernel}')
  one_by_one = knobs.get('one_by_one') or 'default'
  if one_by_one != 'default' or knobs.get('kernel_size'):
    layout = place_one_by_one(layout, one_by_one, knobs.get('num_one_by_one'), kernel)
  return set_widths(layout, knobs.get('widths') or '', knobs.get('width_multiplier', 1.0))


class SimpleNet(nn.Module):
  """Plain conv stack from a resolved layout; see the module docstring."""
  layout: tuple
  num_classes: int
  dropout: float = 0.0
  norm: str = 'batch'
  act: str = 'relu'
  kernel_init: str = 'xavier_relu'
  pool: str = 'max'
  global_pool: str = 'max'
  conv_bias: bool = True
  bn_momentum: float = 0.95  # PyTorch momentum 0.05
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = x.astype(self.dtype)
    for t in self.layout:
      if t == POOL:
        x = layers.Downsample(self.pool, norm=self.norm, act=self.act, kernel_init=self.kernel_init,
                              dtype=self.dtype)(x, train)
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
      else:
        x = layers.ConvNormAct(t.width, kernel=t.kernel, use_bias=self.conv_bias,
                               norm=self.norm, act=self.act, kernel_init=self.kernel_init,
                               bn_momentum=self.bn_momentum, dtype=self.dtype)(x, train)
    x = layers.global_pool(x, self.global_pool)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = nn.Dense(self.num_classes, kernel_init=layers.initializer(self.kernel_init), dtype=self.dtype)(x)
    return x.astype(jnp.float32)


def build(knobs: dict, num_classes: int, dtype: Any, *, layout: str) -> SimpleNet:
  """Registry builder: knob dict -> SimpleNet (knobs left empty take the reference values)."""
  norm, act = knobs.get('norm') or 'batch', knobs.get('activation') or 'relu'
  init, pool = knobs.get('init') or 'xavier_relu', knobs.get('pool') or 'max'
  gpool = knobs.get('global_pool') or 'max'
  layers.check_knobs(norm=norm, pool=pool, global_pool=gpool, act=act, init=init)
  dropout = knobs.get('dropout')
  dropout = 0.0 if dropout is None else float(dropout)
  if not 0.0 <= dropout < 1.0:
    raise UserError(f'dropout must be in [0, 1), got {dropout}')
  conv_bias = knobs.get('conv_bias')
  return SimpleNet(layout=tuple(resolve_layout(layout, knobs)), num_classes=num_classes,
                   dropout=dropout, norm=norm, act=act, kernel_init=init, pool=pool, global_pool=gpool,
                   conv_bias=True if conv_bias is None else bool(conv_bias),
                   dtype=jnp.dtype(dtype))


# Layouts of the official SimpleNet repositories (see ../shared/REFERENCES.md).
CIFAR_LAYOUTS = {
    'simplenet_cifar_5m': '64,128,128,128,p,128,128,256,p,256,256,p,512,2048k1,256k1,p,256',
    'simplenet_cifar_310k': '64,32,32,32,p,32,32,64,p,64,64,p,128,256k1,64k1,p,64',
    'simplenet_cifar_460k': '32,32,32,64,p,64,64,64,p,64,64,p,96,96k1,96k1,p,100',
}

for _name, _layout in CIFAR_LAYOUTS.items():
  register(_name, build, layout=_layout)
# A generic name for layout-only use (`--config.model.layers=...`); defaults to the 5M layout.
register('simplenet', build, layout=CIFAR_LAYOUTS['simplenet_cifar_5m'])
