"""Declaring trials: lists of dicts of config overrides with dotted keys.

A sweep file (a config file that also defines `get_sweep()`) returns such a list, built with
the helpers below; `--sweep=KEY=V1,V2` flags add axes from the command line:

  def get_sweep():
    return product(axis('model.width_multiplier', [0.5, 1, 2]), axis('seed', [0, 1]))

Keys under `sweep.` are directives for the sweep machinery, not config fields:
  sweep.name              the trial's directory name (default: made from its overrides)
  sweep.budget_params     solve `model.width_multiplier` so the model has this many parameters
  sweep.budget_tolerance  ... within this relative error (default 0.02)
"""

from __future__ import annotations

import itertools
from typing import Any, Iterable, Sequence

from errors import UserError

Spec = dict[str, Any]
DIRECTIVES = ('sweep.name', 'sweep.budget_params', 'sweep.budget_tolerance')
DEFAULT_TOLERANCE = 0.02


def axis(key: str, values: Iterable[Any]) -> list[Spec]:
  """One trial per value of `key`: axis('seed', [0, 1]) -> [{'seed': 0}, {'seed': 1}]."""
  values = list(values)
  if not values:
    raise UserError(f'sweep axis {key!r} has no values')
  return [{key: v} for v in values]


def _merge(parts: Sequence[Spec], how: str) -> Spec:
  out: Spec = {}
  for part in parts:
    shared = set(out) & set(part)
    if shared:
      raise UserError(f'{how}: key {sorted(shared)[0]!r} is set by two of its factors')
    out.update(part)
  return out


def product(*factors: Sequence[Spec]) -> list[Spec]:
  """Every combination of one trial from each factor (the last factor varies fastest)."""
  return [_merge(combo, 'product') for combo in itertools.product(*factors)]


def zipped(*factors: Sequence[Spec]) -> list[Spec]:
  """Trial i of each factor merged into trial i; the factors must have the same length."""
  lengths = {len(f) for f in factors}
  if len(lengths) > 1:
    raise UserError(f'zipped: factors have different lengths {sorted(lengths)}')
  return [_merge(combo, 'zipped') for combo in zip(*factors)]


def budget(params: int, tolerance: float = DEFAULT_TOLERANCE) -> list[Spec]:
  """A one-trial factor asking for widths solved to `params` parameters (+- tolerance);
  use it in a product: product(axis('model.depth', [8, 10]), budget(300_000))."""
  if params <= 0 or not 0 < tolerance < 1:
    raise UserError(f'budget needs params > 0 and 0 < tolerance < 1, got {params}, {tolerance}')
  return [{'sweep.budget_params': params, 'sweep.budget_tolerance': tolerance}]


def parse_flag(text: str) -> list[Spec]:
  """'--sweep' value 'KEY=V1,V2,...' -> axis(KEY, [V1, V2, ...]) with string values.

  Values that contain commas themselves (layouts like '64,p,64') are separated with ';'
  instead: 'model.layers=64,p,64;32,p,32'.
  """
  key, sep, values = text.partition('=')
  key = key.strip()
  if not sep or not key or not values.strip():
    raise UserError(f'--sweep={text!r} is not KEY=V1,V2,... (e.g. --sweep=seed=0,1)')
  parts = [v.strip() for v in values.split(';' if ';' in values else ',')]
  if any(not v for v in parts):
    raise UserError(f'--sweep={text!r} has an empty value')
  return axis(key, parts)


def from_flags(flag_values: Sequence[str]) -> list[Spec]:
  """The product of every `--sweep` flag's axis; [] when there are none."""
  return product(*[parse_flag(f) for f in flag_values]) if flag_values else []
