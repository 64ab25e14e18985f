"""Small helpers every package shares: atomic JSON files, comma-separated user lists, workdir
checks."""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from typing import Any, Callable

from absl import logging

from errors import UserError


def write_json(path: str, obj: Any) -> None:
  """Writes `obj` to `path` atomically (a reader never sees half a file)."""
  tmp = f'{path}.tmp{os.getpid()}'
  with open(tmp, 'w') as f:
    json.dump(obj, f, indent=2, sort_keys=True, default=str)
  os.replace(tmp, path)


def read_json(path: str) -> dict | None:
  """The JSON object in `path`, or None when it is missing or unreadable."""
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):  # missing, or caught half-written by a concurrent reader
    return None


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
