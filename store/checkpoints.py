"""A workdir on disk: `config.json`, `checkpoints/<step>/{state,meta}` (orbax) and, once
finished, `results.json`. Paths, the checkpoint manager, and reading a run's config, state and
metadata back (trained runs as objects are store/runs.py).
"""

from __future__ import annotations

import collections
import json
import os
import zlib
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from configs import default
from errors import UserError

# Keys whose value for runs saved before the key existed differs from today's default: such a run
# loads and resumes with this value, which keeps its behaviour. Every other key missing from an
# old config.json takes configs/default.py's value (the model block excepted: its knobs depend
# on the model).
KEPT_BEHAVIOUR = {'conv_impl': 'xla'}


def _leaves(d: dict, prefix: str = '') -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_leaves(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


def added_keys() -> dict:
  """key -> value for every config key an old run may lack (see KEPT_BEHAVIOUR)."""
  defaults = _leaves(json.loads(default.get_config().to_json()))
  return {**{k: v for k, v in defaults.items() if not k.startswith('model.')}, **KEPT_BEHAVIOUR}


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), 'checkpoints')


def manager(workdir: str, keep: int) -> ocp.CheckpointManager:
  # cleanup_tmp_directories: a save cut short (kill, full disk) leaves `<step>.orbax-checkpoint-
  # tmp-*`; the next run removes it instead of tripping over it.
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=ocp.CheckpointManagerOptions(
      max_to_keep=keep, create=True, cleanup_tmp_directories=True))


def saved_steps(workdir: str) -> list[int]:
  d = checkpoint_dir(workdir)
  return sorted(int(s) for s in os.listdir(d) if s.isdigit()) if os.path.isdir(d) else []


def step_dir(workdir: str, step: int | None = None) -> tuple[int, str]:
  """(step, directory) of the latest or given checkpoint; a UserError when there is none."""
  steps = saved_steps(workdir)
  if not steps or (step is not None and step not in steps):
    which = 'no checkpoint' if step is None else f'no checkpoint of step {step}'
    raise UserError(f'{which} in {checkpoint_dir(workdir)} (saved steps: {steps or "none"}); '
                    'train the run first (--mode=train) or pick a saved step')
  step = steps[-1] if step is None else step
  return step, os.path.join(checkpoint_dir(workdir), str(step))


# ----------------------------------------------------------------------------- checksums
# Every checkpoint's meta carries a CRC-32 of each saved array, and every restore compares:
# orbax and tensorstore check their own metadata, not the values, so a flipped byte in the
# parameters would otherwise load silently (and evaluate to chance).


def _host(leaf) -> np.ndarray | None:
  if isinstance(leaf, jax.Array):
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
      leaf = jax.random.key_data(leaf)
    if not leaf.is_fully_replicated:  # a shard's bytes depend on the topology: not comparable
      return None
    leaf = leaf.addressable_data(0)
  return np.ascontiguousarray(np.asarray(leaf))


def _crc(a: np.ndarray) -> str:
  return f'{zlib.crc32(a.tobytes(), zlib.crc32(f"{a.dtype}{a.shape}".encode())):08x}'


def _leaf_name(path) -> str:
  return '/'.join(str(getattr(k, 'key', getattr(k, 'name', getattr(k, 'idx', k)))) for k in path)


def checksums(tree) -> dict[str, str]:
  """{leaf path: CRC-32 of its dtype, shape and bytes} of a state about to be saved."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    a = _host(leaf)
    if a is not None:
      out[_leaf_name(path)] = _crc(a)
  return out


def verify(tree, meta: dict) -> None:
  """Raises ValueError naming the saved arrays whose bytes changed since they were saved.

  Compared as a multiset of checksums, so the restored tree may be the saved dataclass or the
  nested dicts orbax's metadata gives (whose paths differ). Checkpoints saved before checksums
  existed have none in their meta and pass."""
  saved = meta.get('checksums') if isinstance(meta, dict) else None
  if not saved:
    return
  restored = collections.Counter(_crc(a) for a in map(_host, jax.tree_util.tree_leaves(tree))
                                 if a is not None)
  expected = collections.Counter(saved.values())
  if restored != expected:
    changed = sorted(n for n, c in saved.items() if c in expected - restored)
    raise ValueError(f'checksum mismatch in {len(changed)} array(s) ({", ".join(changed[:3])}'
                     f'{", ..." if len(changed) > 3 else ""}): the files changed after saving')


def _reason(e: Exception) -> str:
  text = str(e).strip().splitlines()
  return f'{type(e).__name__}: {text[0][:200] if text else ""}'


def restore_newest(directory: str, steps, restore: Callable[[int], Any],
                   mngr: ocp.CheckpointManager | None = None) -> tuple[int | None, Any]:
  """(step, restored) of the newest of `steps` that `restore(step)` reads and verifies (it
  raises otherwise); (None, None) when there is none. Each one that fails is named in one
  log line. Given the run's manager `mngr` (a run about to resume and save), the failed ones
  are renamed `<step>.corrupt` (kept for inspection, out of orbax's way) once a good one is
  found. If every checkpoint fails: a UserError."""
  failed = []
  for step in sorted(steps, reverse=True):
    try:
      restored = restore(step)
    except Exception as e:  # noqa: BLE001  (any failure to read or verify means: unusable)
      logging.warning('checkpoint %s/%d is unusable (%s); trying the one before it',
                      directory, step, _reason(e))
      failed.append(step)
      continue
    if failed and mngr is not None:
      if jax.process_index() == 0:
        for bad in failed:
          src = os.path.join(directory, str(bad))
          os.replace(src, f'{src}.corrupt')
        logging.warning('resuming from step %d; the unusable checkpoint(s) %s were renamed '
                        '<step>.corrupt in %s', step, failed, directory)
      if jax.process_count() > 1:
        multihost_utils.sync_global_devices('checkpoints set aside')
      mngr.reload()
    return step, restored
  if failed:
    raise UserError(f'no checkpoint in {directory} restores (steps {failed} are unreadable or '
                    'fail their checksums; see the lines above); move that folder away to start '
                    'the run again')
  return None, None


def _load(workdir: str, step: int) -> tuple[dict, dict]:
  path = os.path.join(checkpoint_dir(workdir), str(step))
  meta = ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(os.path.join(path, 'meta'))
  checkpointer = ocp.StandardCheckpointer()
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree_util.tree_map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
      checkpointer.metadata(os.path.join(path, 'state')).item_metadata.tree)
  state = checkpointer.restore(os.path.join(path, 'state'), target)
  verify(state, meta)
  return state, meta


def restore_run(workdir: str, step: int | None = None) -> tuple[int, dict, dict]:
  """(step, state, meta) of the latest checkpoint that reads and verifies (unusable newer ones
  are skipped with a line naming them; nothing is renamed), or of the given step."""
  if step is not None:
    step, _ = step_dir(workdir, step)
    try:
      return (step, *_load(workdir, step))
    except Exception as e:  # noqa: BLE001
      raise UserError(f'checkpoint {checkpoint_dir(workdir)}/{step} is unusable ({_reason(e)}); '
                      'pick another saved step') from None
  step_dir(workdir)  # a UserError when there is no checkpoint at all
  step, loaded = restore_newest(checkpoint_dir(workdir), saved_steps(workdir),
                                lambda s: _load(workdir, s))
  return step, *loaded


def load_checkpoint(workdir: str, step: int | None = None) -> dict:
  """The saved train state (step, params, batch_stats, opt_state, ema_params, ...) of the
  latest usable or given checkpoint as a dict, on this process's first device whatever
  topology saved it."""
  return restore_run(workdir, step)[1]


def load_meta(workdir: str, step: int | None = None) -> dict:
  """The JSON saved next to the state (history, timings, and `run`: preprocess and dataset)."""
  return restore_run(workdir, step)[2]


def _with_added_keys(d: dict) -> dict:
  for key, value in added_keys().items():
    node = d
    *parents, leaf = key.split('.')
    for p in parents:
      node = node.setdefault(p, {})
    node.setdefault(leaf, value)
  return d


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run trained with (its workdir/config.json), keys added since filled in."""
  path = os.path.join(workdir, 'config.json')
  try:
    with open(path) as f:
      saved = json.load(f)
  except OSError:
    raise UserError(f'{path} not found: --workdir must be a training run\'s directory') from None
  except ValueError as e:
    raise UserError(f'{path} is not valid JSON ({e})') from None
  return ml_collections.ConfigDict(_with_added_keys(saved))


def check_resumable(config, workdir: str, may_change=(), what: str = 'a run',
                    classifier: bool = True) -> None:
  """A workdir holding another experiment's checkpoints is refused, never overwritten: its
  config.json must equal `config` but for the keys `may_change` (and, for a `classifier` run,
  keys added since it was saved take their old-run values)."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path) or not os.path.isdir(os.path.join(workdir, 'checkpoints')):
    return
  if classifier:
    old = _leaves(json.loads(load_config(workdir).to_json()))
  else:
    with open(path) as f:
      old = _leaves(json.load(f))
  new = _leaves(json.loads(config.to_json()))
  diff = sorted(k for k in set(old) | set(new)
                if k not in may_change and old.get(k) != new.get(k))
  if diff:
    raise UserError(f'workdir {workdir} holds {what} with a different config '
                    f'({", ".join(diff[:5])}); use a new --workdir or the same config to resume')
