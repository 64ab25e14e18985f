"""Trial lists -> concrete trials: each one's config flags, budget-solved widths, parameter
count, MACs and resolved layout.

A trial's config is built exactly the way its process will build it: the sweep's
`--config=FILE[:arg]` and `--config.*` flags plus one `--config.KEY=VALUE` per override, parsed
by ml_collections' own flag parser. So what a dry run prints is what the trial trains.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import re
from typing import Any, Sequence

import ml_collections
from absl import flags
from ml_collections import config_flags

import models
from data import datasets
from errors import UserError
from models import layout as layout_lib
from models import summary
from configs import declare

WIDTH_KEY = 'model.width_multiplier'
MAX_NAME = 60


@dataclasses.dataclass
class Trial:
  """One point of a sweep, ready to run."""
  name: str
  overrides: dict[str, str]   # declared config overrides, as command-line values
  solved: dict[str, str]      # overrides derived from directives (the budget's width multiplier)
  config_args: list[str]      # the --config flags that build this trial's config
  config: dict                # that config as plain data (what results.json will record)
  params: int
  macs: int
  depth: int | None           # convs of the resolved layout (SimpleNet family), else model.depth
  layout: str                 # resolved layout ('' for models without one)
  budget: int | None = None   # the parameter target the widths were solved for

  def to_json(self) -> dict:
    return dataclasses.asdict(self)


def to_arg(value: Any) -> str:
  """A Python override value as the command-line text ml_collections parses back to it."""
  if isinstance(value, bool):
    return 'true' if value else 'false'
  if value is None:
    raise UserError('a sweep value is None; config fields cannot be set to None from flags')
  return repr(value) if isinstance(value, float) else str(value)


def base_config_args(config_flag: flags.Flag) -> list[str]:
  """The sweep command's own --config flags, with an absolute file path so trials can run
  from any directory (SLURM tasks, `command.sh` by hand)."""
  path, sep, arg = config_flag.config_filename.partition(':')
  args = [f'--config={os.path.abspath(path)}{sep}{arg}']
  args += [f'--config.{k}={to_arg(v)}' for k, v in config_flag.override_values.items()]
  return args


def config_path(config_args: Sequence[str]) -> str:
  return config_args[0].split('=', 1)[1].partition(':')[0]


def load_config(config_args: Sequence[str]) -> ml_collections.ConfigDict:
  """Parses --config flags the way main.py does, in a private flag registry."""
  argv = ['main.py', *config_args]
  registry = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, 'config file', flag_values=registry,
                                  lock_config=True, sys_argv=argv)
  try:
    registry(argv)
    config = registry.config
    config.get('seed')  # a config file that failed to load raises only when first read
  except (flags.Error, OSError, ValueError, TypeError, AttributeError, KeyError) as e:
    raise UserError(str(e).splitlines()[0]) from None
  return config


def load_sweep_file(path: str) -> Any:
  """The config file as a module, for its optional `get_sweep()` and `get_slurm()`."""
  spec = importlib.util.spec_from_file_location('sweep_file', path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except FileNotFoundError:
    raise UserError(f'config file {path} not found') from None
  return module


# ----------------------------------------------------------------------------- model size


def count_params(config: ml_collections.ConfigDict) -> int:
  """Parameters of config's model from shapes alone (no compilation): cheap enough to call
  a few dozen times while solving a budget."""
  info = datasets.info(config.dataset)
  return summary.param_count(models.create(config.model, info.num_classes), info.shape)


# Model sizes by (model config, dataset config): trials that differ in seed or recipe share
# one model, so a sweep with several seeds sizes and solves each model once.
_SIZES: dict[tuple, Any] = {}


def _model_key(config: ml_collections.ConfigDict, *extra) -> tuple:
  return (config.model.to_json(sort_keys=True), config.dataset.to_json(sort_keys=True), *extra)


def model_stats(config: ml_collections.ConfigDict) -> tuple[int, int, int | None, str]:
  """(params, MACs, depth, layout) of config's model on its dataset's input shape."""
  key = _model_key(config, 'stats')
  if key not in _SIZES:
    _SIZES[key] = _model_stats(config)
  return _SIZES[key]


def _model_stats(config: ml_collections.ConfigDict) -> tuple[int, int, int | None, str]:
  info = datasets.info(config.dataset)
  model = models.create(config.model, info.num_classes)
  params, macs = summary.params_and_macs(model, info.shape)
  layout = getattr(model, 'layout', None)  # the layout-driven families (SimpleNet, ...)
  if layout:
    depth = sum(t != layout_lib.POOL for t in layout)
    return params, macs, depth, layout_lib.format_layout(list(layout))
  return params, macs, config.model.get('depth'), ''


def solve_width_multiplier(config: ml_collections.ConfigDict, target: int,
                           tolerance: float) -> float:
  """The width multiplier (4 decimals) whose model is closest to `target` parameters.

  Parameters grow monotonically with the multiplier (every width is round(w * m)), so a
  bracket-and-bisect search finds the crossing; widths are integers, so a layout may be
  unable to land within `tolerance`, which is an error naming the nearest count.
  """
  key = _model_key(config, 'solve', target, tolerance)
  if key not in _SIZES:
    _SIZES[key] = _solve(config, target, tolerance)
  return _SIZES[key]


def _solve(config: ml_collections.ConfigDict, target: int, tolerance: float) -> float:
  cache: dict[float, int] = {}

  def params_at(m: float) -> int:
    m = round(m, 4)
    if m not in cache:
      with config.unlocked():
        config.model.width_multiplier = m
      cache[m] = count_params(config)
    return cache[m]

  lo, hi = 1.0, 1.0
  while params_at(hi) < target and hi < 64:
    lo, hi = hi, hi * 2
  while params_at(lo) > target and lo > 1e-3:
    lo, hi = lo / 2, lo
  for _ in range(30):
    mid = round((lo + hi) / 2, 4)
    if mid in (round(lo, 4), round(hi, 4)):
      break
    if params_at(mid) < target:
      lo = mid
    else:
      hi = mid
  best = min(cache, key=lambda m: (abs(cache[m] - target), m))
  if abs(cache[best] - target) > tolerance * target:
    raise UserError(f'cannot reach {target:,} parameters within {tolerance:.1%}: the nearest '
                    f'is {cache[best]:,} at width_multiplier={best}; widen the tolerance or '
                    'change the layout')
  return best


# ----------------------------------------------------------------------------- expansion


def _parse_count(value: Any) -> int:
  """300000, '300000', '3e5', '300K', '1.5M' -> int."""
  text = str(value).strip().upper()
  scale = {'K': 1e3, 'M': 1e6}.get(text[-1:], 1)
  try:
    return int(round(float(text.rstrip('KM')) * scale))
  except ValueError:
    raise UserError(f'sweep.budget_params={value!r} is not a parameter count') from None


def _slug(text: str) -> str:
  return re.sub(r'[^A-Za-z0-9._+=-]+', '-', text).strip('-') or 'x'


def _varying(specs: Sequence[dict[str, str]]) -> list[str]:
  keys = dict.fromkeys(k for s in specs for k in s)
  return [k for k in keys if len({s.get(k) for s in specs}) > 1]


def trial_names(specs: Sequence[dict[str, str]], labels: Sequence[str | None]) -> list[str]:
  """Directory names like 'width_multiplier=0.5_seed=1', from the overrides that vary across
  trials, so extending an axis keeps the existing trials' names (and finished results).

  A trial with a `sweep.name` label is named by it, plus the keys that vary among the trials
  sharing that label ('depth8_seed=1' when seeds are swept on top of labelled layouts).
  """
  names = []
  for s, label in zip(specs, labels):
    group = [o for o, l in zip(specs, labels) if l == label] if label else specs
    keys = _varying(group) if len(specs) > 1 else list(s)
    leaves = [k.rsplit('.', 1)[-1] for k in keys]
    short = {k: (leaf if leaves.count(leaf) == 1 else k) for k, leaf in zip(keys, leaves)}
    parts = ([_slug(str(label))] if label else []) + [
        f'{short[k]}={_slug(s[k])}' for k in keys if k in s]
    name = '_'.join(parts) or 'base'
    if len(name) > MAX_NAME:
      digest = hashlib.sha1(json.dumps(s, sort_keys=True).encode()).hexdigest()[:8]
      name = f'{name[:MAX_NAME - 9]}-{digest}'
    names.append(name)
  return names


def _split_directives(spec: dict[str, Any]) -> tuple[dict[str, str], dict[str, Any]]:
  overrides = {k: to_arg(v) for k, v in spec.items() if not k.startswith('sweep.')}
  directives = {k: v for k, v in spec.items() if k.startswith('sweep.')}
  unknown = sorted(set(directives) - set(declare.DIRECTIVES))
  if unknown:
    raise UserError(f'unknown sweep directive {unknown[0]!r}; known: {", ".join(declare.DIRECTIVES)}')
  return overrides, directives


def specs_for(config_args: Sequence[str], sweep_flags: Sequence[str]) -> list[dict[str, Any]]:
  """The sweep file's `get_sweep()` trials times the `--sweep` flags' product."""
  path = config_path(config_args)
  module = load_sweep_file(path)
  from_file = list(module.get_sweep()) if hasattr(module, 'get_sweep') else []
  from_cli = declare.from_flags(sweep_flags)
  if not from_file and not from_cli:
    raise UserError(f'nothing to sweep: {path} has no get_sweep() and no --sweep=KEY=V1,V2 '
                    'flag was given')
  return declare.product(from_file or [{}], from_cli or [{}])


def expand(config_args: Sequence[str], sweep_flags: Sequence[str] = ()) -> list[Trial]:
  """Concrete trials of a sweep, in declaration order; any bad trial fails the whole sweep
  before anything runs (a typo should cost seconds, not a cluster allocation)."""
  specs = specs_for(config_args, sweep_flags)
  split = [_split_directives(s) for s in specs]
  names = trial_names([o for o, _ in split], [d.get('sweep.name') for _, d in split])
  dupes = sorted({n for n in names if names.count(n) > 1})
  if dupes:
    raise UserError(f'several trials are named {dupes[0]!r}: the sweep repeats a trial, or '
                    'sweep.name gives two trials one name')
  base = load_config(config_args)
  trials = []
  for name, (overrides, directives) in zip(names, split):
    try:
      check_keys(base, overrides)
      trials.append(_make_trial(name, list(config_args), overrides, directives))
    except UserError as e:
      raise UserError(f'trial {name}: {e}') from None
  return trials


def check_keys(config: ml_collections.ConfigDict, keys) -> None:
  """Unknown dotted keys fail with the key's full name (the flag parser names only the leaf)."""
  for key in keys:
    node = config
    for part in key.split('.'):
      if not isinstance(node, ml_collections.ConfigDict) or part not in node:
        raise UserError(f'unknown config key {key!r}')
      node = node[part]


def _make_trial(name: str, base_args: list[str], overrides: dict[str, str],
                directives: dict[str, Any]) -> Trial:
  args = base_args + [f'--config.{k}={v}' for k, v in overrides.items()]
  config = load_config(args)
  solved: dict[str, str] = {}
  target = None
  if 'sweep.budget_params' in directives:
    if WIDTH_KEY in overrides:
      raise UserError(f'{WIDTH_KEY} is both swept and solved for the parameter budget; '
                      'sweep one or the other')
    target = _parse_count(directives['sweep.budget_params'])
    tolerance = float(directives.get('sweep.budget_tolerance', declare.DEFAULT_TOLERANCE))
    solved[WIDTH_KEY] = to_arg(solve_width_multiplier(config, target, tolerance))
    args = args + [f'--config.{WIDTH_KEY}={solved[WIDTH_KEY]}']
    config = load_config(args)
  params, macs, depth, layout = model_stats(config)
  return Trial(name=name, overrides=overrides, solved=solved, config_args=args,
               config=json.loads(config.to_json()), params=params, macs=macs, depth=depth,
               layout=layout, budget=target)
