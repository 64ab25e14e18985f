"""The layout language of the plain conv stacks (SimpleNet, SimpNet, VGG) and the knobs that
rewrite a layout.

A layout is a comma-separated string read left to right:
  `64`       a conv with 64 filters (3x3 unless `kernel_size` says otherwise)
  `2048k1`   a conv with kernel 1 (any `k<n>` suffix sets that layer's kernel)
  `128s2`    a conv with stride 2 (any `s<n>` suffix; downsamples like a pool)
  `96n`      a conv without a normalization layer (the `n` suffix, last)
  `p`        a 2x2 stride-2 downsampling (max pool by default; see the `pool` knob)
Suffixes combine in this order: `256k1s2n`.

The architectural knobs rewrite a layout in Python, in this order, so sweeps over depth,
width and 1x1 placement never need a new class:
  `layers`            an explicit layout replacing the variant's
  `depth`             resample the conv sequence to this many convs (widths, kernels, pool and
                      stride positions keep their relative place)
  `one_by_one`        'default' keeps the layout's 1x1s; 'none' makes every conv 3x3;
                      'early' | 'middle' | 'end' puts `num_one_by_one` 1x1 convs there;
                      '3,7' makes exactly those conv indices (0-based) 1x1
  `widths`            explicit per-conv widths ('64,32,...', one per conv)
  `width_multiplier`  scales every conv width (rounded, at least 1)
"""

from __future__ import annotations

import dataclasses
import re
from typing import Sequence

from errors import UserError
import util

POOL = 'p'
_TOKEN = re.compile(r'^(\d+)(?:k(\d+))?(?:s(\d+))?(n?)$')


@dataclasses.dataclass(frozen=True)
class Conv:
  width: int
  kernel: int = 3
  stride: int = 1
  norm: bool = True


Layout = list  # of Conv | 'p'


def parse_layout(spec: str | Sequence) -> Layout:
  """'64,128s2,p,2048k1' -> [Conv(64), Conv(128, stride=2), 'p', Conv(2048, 1)]."""
  tokens = spec.split(',') if isinstance(spec, str) else list(spec)
  out: Layout = []
  for tok in tokens:
    tok = str(tok).strip().lower()
    if not tok:
      continue
    if tok == POOL:
      out.append(POOL)
      continue
    m = _TOKEN.match(tok)
    if not m:
      raise UserError(f'bad layout token {tok!r}; use e.g. 64 (3x3 conv), 256k1 (1x1 conv), '
                      '128s2 (stride 2), 96n (no norm) or p (pool)')
    width, kernel, stride, no_norm = m.groups()
    conv = Conv(int(width), int(kernel) if kernel else 3, int(stride) if stride else 1, not no_norm)
    if conv.width < 1 or conv.kernel < 1 or conv.stride < 1:
      raise UserError(f'layout token {tok!r}: width, kernel and stride must be positive')
    out.append(conv)
  if not any(isinstance(t, Conv) for t in out):
    raise UserError(f'layout {spec!r} has no conv layer')
  return out


def format_layout(layout: Layout) -> str:
  def token(c: Conv) -> str:
    return (f'{c.width}' + (f'k{c.kernel}' if c.kernel != 3 else '')
            + (f's{c.stride}' if c.stride != 1 else '') + ('' if c.norm else 'n'))
  return ','.join(t if t == POOL else token(t) for t in layout)


def split(layout: Layout) -> tuple[list[Conv], list[int]]:
  """Conv list and, for each pool, the number of convs before it."""
  convs, pools = [], []
  for t in layout:
    if t == POOL:
      pools.append(len(convs))
    else:
      convs.append(t)
  return convs, pools


def join(convs: list[Conv], pools: list[int]) -> Layout:
  out: Layout = []
  for i, c in enumerate(convs):
    out.extend([POOL] * pools.count(i))
    out.append(c)
  out.extend([POOL] * pools.count(len(convs)))
  return out


def resize_depth(layout: Layout, depth: int) -> Layout:
  """Resamples the conv sequence to `depth` convs; pools and strided convs keep their
  relative positions (so the total downsampling never changes)."""
  convs, pools = split(layout)
  n = len(convs)
  if depth == n:
    return layout
  new_convs = [dataclasses.replace(convs[min(n - 1, (i * n) // depth)], stride=1)
               for i in range(depth)]
  for i, c in enumerate(convs):
    if c.stride > 1:
      j = min(depth - 1, round(i * depth / n))
      new_convs[j] = dataclasses.replace(new_convs[j], stride=new_convs[j].stride * c.stride)
  new_pools = [max(1, min(depth, round(p * depth / n))) for p in pools]
  return join(new_convs, new_pools)


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
  convs, pools = split(layout)
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
  convs = [dataclasses.replace(c, kernel=1 if i in idx else kernel) for i, c in enumerate(convs)]
  return join(convs, pools)


def set_widths(layout: Layout, widths: str, multiplier: float) -> Layout:
  convs, pools = split(layout)
  if widths:
    ws = util.parse_list('widths', widths, int, positive=True)
    if len(ws) != len(convs):
      raise UserError(f'widths lists {len(ws)} values but the layout has {len(convs)} convs')
    convs = [dataclasses.replace(c, width=w) for w, c in zip(ws, convs)]
  if multiplier <= 0:
    raise UserError(f'width_multiplier must be positive, got {multiplier}')
  convs = [dataclasses.replace(c, width=max(1, int(round(c.width * multiplier)))) for c in convs]
  if any(c.width < 1 for c in convs):
    raise UserError('every conv width must be positive')
  return join(convs, pools)


def resolve_layout(base: str, knobs: dict, width_scale: float = 1.0) -> Layout:
  """Applies the architectural knobs (see module docstring) to a variant's base layout.

  `width_scale` is the variant's own width factor (e.g. 0.5 for SimpleNet's small ImageNet
  models); the user's `width_multiplier` multiplies it.
  """
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
  multiplier = knobs.get('width_multiplier', 1.0)
  multiplier = 1.0 if multiplier is None else multiplier
  if multiplier <= 0:
    raise UserError(f'width_multiplier must be positive, got {multiplier}')
  return set_widths(layout, knobs.get('widths') or '', multiplier * width_scale)
