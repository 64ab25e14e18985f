"""A workdir on disk: `config.json`, `checkpoints/<step>/{state,meta}` (orbax) and, once
finished, `results.json`. Paths, the checkpoint manager, and reading a run's config, state and
metadata back (trained runs as objects are store/runs.py).
"""

from __future__ import annotations

import json
import os

import jax
import ml_collections
import orbax.checkpoint as ocp

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
  return ocp.CheckpointManager(checkpoint_dir(workdir),
                               options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))


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


def load_checkpoint(workdir: str, step: int | None = None) -> dict:
  """The saved train state (step, params, batch_stats, opt_state, ema_params, ...) of the
  latest or given checkpoint as a dict, on this process's first device whatever topology
  saved it."""
  _, path = step_dir(workdir, step)
  checkpointer = ocp.StandardCheckpointer()
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree_util.tree_map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
      checkpointer.metadata(os.path.join(path, 'state')).item_metadata.tree)
  return checkpointer.restore(os.path.join(path, 'state'), target)


def load_meta(workdir: str, step: int | None = None) -> dict:
  """The JSON saved next to the state (history, timings, and `run`: preprocess and dataset)."""
  _, path = step_dir(workdir, step)
  return ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(os.path.join(path, 'meta'))


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
