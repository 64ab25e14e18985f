"""Small helpers every package shares: atomic JSON files, comma-separated user lists, workdir
checks."""

from __future__ import annotations

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
