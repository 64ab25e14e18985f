"""Small helpers every package shares: atomic JSON files, comma-separated user lists, workdir
checks."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import tempfile
from typing import Any, Callable

from absl import logging

from errors import UserError


def write_text(path: str, text: str) -> None:
  """Writes `text` to `path` atomically (a reader never sees half a file)."""
  tmp = f'{path}.tmp{os.getpid()}'
  with open(tmp, 'w') as f:
    f.write(text)
  os.replace(tmp, path)


def write_json(path: str, obj: Any) -> None:
  """Writes `obj` to `path` atomically, as JSON."""
  write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str))


def read_json(path: str) -> dict | None:
  """The JSON object in `path`, or None when it is missing or unreadable."""
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):  # missing, or caught half-written by a concurrent reader
    return None


def source_version() -> str | None:
  """The git commit of this code ('+dirty' when it has uncommitted changes), or None outside
  a git checkout: a result names the code that produced it."""
  repo = os.path.dirname(os.path.abspath(__file__))
  try:
    commit = subprocess.run(['git', '-C', repo, 'rev-parse', '--short=12', 'HEAD'],
                            capture_output=True, text=True, timeout=10)
    dirty = subprocess.run(['git', '-C', repo, 'status', '--porcelain', '--untracked-files=no'],
                           capture_output=True, text=True, timeout=10)
  except (OSError, subprocess.SubprocessError):
    return None
  if commit.returncode:
    return None
  return commit.stdout.strip() + ('+dirty' if dirty.stdout.strip() else '')


def parse_list(name: str, text: Any, kind: Callable = int, positive: bool = False,
               example: str = '') -> list:
  """'3,4,6,3' -> [3, 4, 6, 3]; a UserError naming the setting `name` when an item does not
  parse as `kind` or (with `positive`) is not positive. Empty items are skipped."""
  try:
    values = [kind(s) for s in str(text).split(',') if s.strip()]
  except ValueError:
    hint = f' like {example!r}' if example else ''
    raise UserError(f'{name} must be comma-separated {kind.__name__}s{hint}, got {text!r}') from None
  if positive and any(v <= 0 for v in values):
    raise UserError(f'every value of {name} must be positive, got {text!r}')
  return values


def trained_run_mode(mode: str, verb: str, config, workdir: str) -> None:
  """The arguments of a mode that works on a trained run: --workdir names it, and a --config
  is ignored (the run's own config.json is what it trained with)."""
  if not workdir:
    raise UserError(f'--workdir is required: the trained run to {verb}')
  if config is not None:
    logging.warning('--mode=%s uses the run\'s own %s; --config is ignored', mode,
                    os.path.join(workdir, 'config.json'))


def check_workdir(workdir: str) -> None:
  """The workdir exists (made if needed) and is writable; a UserError saying so otherwise."""
  try:
    os.makedirs(workdir, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=workdir, prefix='.write_test'):
      pass
  except OSError as e:
    raise UserError(f'workdir {workdir} is not writable ({e.strerror}); pass a --workdir you can '
                    'write to') from None


# A run's own folders: a mode's outputs never go there (they would mix with, or overwrite,
# what training wrote).
RUN_FOLDERS = ('checkpoints', 'tensorboard')


def check_output_folder(flag: str, name: str) -> None:
  """A mode's output folder option: a new folder name inside the workdir, not the workdir
  itself, not above it, not inside the run's checkpoints/ or tensorboard/."""
  parts = os.path.normpath(name or '.').split(os.sep)
  if os.path.isabs(name or '') or parts[0] in ('.', '..') or '..' in parts or \
      parts[0] in RUN_FOLDERS:
    raise UserError(f'{flag} must name a new folder inside the workdir (not the workdir itself, '
                    f'not {" or ".join(f + "/" for f in RUN_FOLDERS)}), got {name!r}')


# ----------------------------------------------------------------------------- mode options
# A mode's options are a dataclass (e.g. analysis/options.py) whose fields carry their default
# and help; `define_flags` declares the absl flags from it and `from_flags` reads them back,
# so each default is written once.


def option(default: Any, help: str, flag: str | None = None, parse: Callable | None = None):
  """A field of a mode's options: `flag` is its absl flag (None: the mode's prefix + the field
  name; '': no flag), `parse` turns a list flag's items into the field's values."""
  return dataclasses.field(default=default,
                           metadata={'help': help, 'flag': flag, 'parse': parse})


def _flag_name(field, prefix: str) -> str:
  name = field.metadata.get('flag')
  return prefix + field.name if name is None else name


def check_positive(options, names, prefix: str, minimum: int = 1) -> None:
  """A UserError naming the absl flag (not the field) of the first of `names` below
  `minimum` in a mode's options dataclass."""
  fields = {f.name: f for f in dataclasses.fields(options)}
  for name in names:
    if getattr(options, name) < minimum:
      flag = _flag_name(fields[name], prefix)
      what = 'positive' if minimum == 1 else f'at least {minimum}'
      raise UserError(f'--{flag} must be {what}, got {getattr(options, name)}')


def define_flags(cls, mode: str, prefix: str) -> None:
  """Declares one absl flag per field of the options dataclass `cls`: a list flag (empty =
  the field's default) for tuples, else the field's type with its default."""
  from absl import flags
  for f in dataclasses.fields(cls):
    name = _flag_name(f, prefix)
    if not name:
      continue
    help_text = f'--mode={mode}: {f.metadata["help"]}'
    kind = str(f.type)
    if kind.startswith('tuple'):
      flags.DEFINE_list(name, [], help_text)
    elif kind == 'bool':
      flags.DEFINE_bool(name, f.default, help_text)
    elif kind.startswith('int'):
      flags.DEFINE_integer(name, f.default, help_text)
    elif kind == 'float':
      flags.DEFINE_float(name, f.default, help_text)
    else:
      flags.DEFINE_string(name, f.default, help_text)


def from_flags(cls, values, prefix: str):
  """The options dataclass `cls` from parsed flag `values` (absl's FLAGS): list flags become
  tuples (their `parse`, else int or str items by the field's type), empty ones the default."""
  kwargs = {}
  for f in dataclasses.fields(cls):
    name = _flag_name(f, prefix)
    if not name:
      continue
    value = getattr(values, name)
    if str(f.type).startswith('tuple'):
      if not value:
        continue
      parse = f.metadata.get('parse') or (int if 'int' in str(f.type) else str)
      value = tuple(parse_list(f'--{name}', ','.join(value), parse))
    kwargs[f.name] = value
  return cls(**kwargs)


def format_seconds(seconds: float) -> str:
  """1h02m, 3m05s, 12s: durations as a person reads them."""
  s = int(round(max(seconds, 0)))
  return f'{s // 3600}h{s % 3600 // 60:02d}m' if s >= 3600 else (
      f'{s // 60}m{s % 60:02d}s' if s >= 60 else f'{s}s')


class Progress:
  """How far a long mode has got, with ETAs per part and overall, on the console.

  A mode declares its parts with their expected shares of its time (`parts`: name -> weight;
  the overall ETA is only as good as these shares); `part(name, units)` starts one, `advance`
  counts units done (fractions allowed). Where stderr is a terminal one line is redrawn in place
  (a bar); elsewhere (logs, SLURM) a log line is written at each tenth of a part, at most one
  per `min_interval` seconds, plus one when a part ends. `total_seconds()` is the mode's time.
  """

  def __init__(self, mode: str, parts: dict[str, float], stream=None, min_interval: float = 5.0,
               clock: Callable[[], float] | None = None):
    import sys
    import time
    self.mode, self.stream = mode, stream or sys.stderr
    self.clock = clock or time.monotonic
    self.weights = {k: float(v) for k, v in parts.items() if v > 0} or {'all': 1.0}
    self.tty = bool(getattr(self.stream, 'isatty', lambda: False)())
    self.min_interval = min_interval
    self.t0 = self.clock()
    self.done_weight = 0.0
    self.name, self.units, self.count, self.t_part = None, 1.0, 0.0, self.t0
    self.last_line, self.last_tenth = -1e9, 0

  def part(self, name: str, units: float = 1) -> 'Progress':
    """Starts part `name` (closing the one before) with `units` to do."""
    self.end_part()
    self.name, self.units, self.count = name, max(float(units), 1e-9), 0.0
    self.t_part, self.last_tenth = self.clock(), 0
    self.weights.setdefault(name, 1.0)
    return self

  def advance(self, n: float = 1.0) -> None:
    if self.name is None:
      return
    self.count = min(self.count + n, self.units)
    tenth = int(10 * self.count / self.units + 1e-9)
    now = self.clock()
    if self.tty:
      if now - self.last_line >= 0.2 or self.count >= self.units:
        self.stream.write('\r' + self._line(now, bar=True) + '\x1b[K')
        self.stream.flush()
        self.last_line = now
    elif (tenth > self.last_tenth and self.count < self.units
          and now - self.last_line >= self.min_interval):
      logging.info('%s', self._line(now))
      self.last_line = now
    self.last_tenth = max(self.last_tenth, tenth)

  def advance_to(self, count: float) -> None:
    """Counts up to `count` units done (work that ended early skips its remaining units)."""
    self.advance(max(count - self.count, 0.0))

  def end_part(self) -> None:
    """Closes the current part (a part that finished early counts as done)."""
    if self.name is None:
      return
    now = self.clock()
    name, self.name = self.name, None
    self.done_weight += self.weights.get(name, 1.0)
    if self.tty:
      self.stream.write('\r\x1b[K')
    logging.info('%s: %s done in %s (%s so far%s)', self.mode, name,
                 format_seconds(now - self.t_part), format_seconds(now - self.t0),
                 self._eta(now, overall=True))
    self.last_line = now

  def total_seconds(self) -> float:
    """Ends the last part; the seconds since the mode started."""
    self.end_part()
    return round(self.clock() - self.t0, 1)

  def fraction(self) -> float:
    """The share of the whole mode done (by the declared weights)."""
    current = self.weights.get(self.name, 0.0) * self.count / self.units if self.name else 0.0
    return min((self.done_weight + current) / sum(self.weights.values()), 1.0)

  def _eta(self, now: float, overall: bool) -> str:
    if overall:
      done, elapsed = self.fraction(), now - self.t0
    else:
      done, elapsed = self.count / self.units, now - self.t_part
    if done <= 0 or done >= 1:
      return ''
    return f', ETA {format_seconds(elapsed * (1 - done) / done)}'

  def _line(self, now: float, bar: bool = False) -> str:
    frac = self.count / self.units
    units = f'{self.count:.0f}/{self.units:.0f}' if self.units >= 2 else f'{100 * frac:.0f}%'
    head = f'{self.mode}: {self.name} '
    if bar:
      filled = int(20 * frac)
      head += f'[{"#" * filled}{"." * (20 - filled)}] '
    return (f'{head}{units}{self._eta(now, overall=False)} | overall '
            f'{100 * self.fraction():.0f}%{self._eta(now, overall=True)}')
