"""Checkpoints, and trained runs as objects.

A workdir holds `config.json`, `checkpoints/<step>/{state,meta}` (orbax) and, once finished,
`results.json`. `load_run(workdir)` turns it back into what every analysis needs: the config,
the dataset, the model, its inference variables (the EMA weights when the run evaluated them),
the exact input preprocessing and the test split as the run saw it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from data import augment, datasets
from errors import UserError
from kernels import convolutions as convolutions_lib

# Config keys added to the code after runs were saved, with the value that keeps those runs'
# behaviour: a run whose config.json lacks one loads and resumes as if it had that value.
ADDED_KEYS = {'augment.cutout': 0, 'ema_decay': 0.0, 'eval_flip_tta': False,
              'optimizer.weight_decay_on': 'all', 'optimizer.grad_clip_norm': 0.0,
              'conv_impl': 'xla', 'conv_algorithm': 'auto', 'dataset.train_offset': 0,
              'adversarial.method': 'none', 'adversarial.norm': 'linf', 'adversarial.eps': 0.1,
              'adversarial.steps': 7, 'adversarial.step_size': 0.0,
              'adversarial.trades_beta': 6.0, 'adversarial.eval_eps': 0.0,
              'adversarial.eval_steps': 20, 'adversarial.eval_examples': 1000,
              'distill.teacher': '', 'distill.temperature': 4.0, 'distill.weight': 0.9,
              'int8_qat': False, 'dataset.pipeline': 'auto', 'dataset.memory_limit_mb': 4096,
              'dataset.crop_fraction': 1.0, 'dataset.num_workers': 2,
              'dataset.prefetch_batches': 4, 'augment.rrc_scale': '',
              'augment.rrc_ratio': '0.75,1.3333', 'augment.rotate': 0.0, 'augment.scale': 0.0,
              'augment.brightness': 0.0, 'augment.contrast': 0.0, 'augment.saturation': 0.0,
              'augment.color_cast': 0.0, 'augment.vignetting': 0.0,
              'augment.lens_distortion': 0.0, 'schedule.decay_epochs': 1.0,
              'dataset.classes': '', 'dataset.per_class': 0, 'dataset.extra_train': '',
              'dataset.extra_per_class': 0, 'init_from': '', 'init_from_step': -1,
              'finetune.reinit': '', 'finetune.freeze': '', 'finetune.freeze_batch_stats': False,
              'finetune.lr_multipliers': '', 'finetune.eval_source': False,
              'finetune.progressive': False, 'diagnostics.enabled': False,
              'diagnostics.every_steps': 100}


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), 'checkpoints')


def manager(workdir: str, keep: int) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(checkpoint_dir(workdir),
                               options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))


def saved_steps(workdir: str) -> list[int]:
  d = checkpoint_dir(workdir)
  return sorted(int(s) for s in os.listdir(d) if s.isdigit()) if os.path.isdir(d) else []


def _step_dir(workdir: str, step: int | None) -> tuple[int, str]:
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
  _, path = _step_dir(workdir, step)
  checkpointer = ocp.StandardCheckpointer()
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree_util.tree_map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
      checkpointer.metadata(os.path.join(path, 'state')).item_metadata.tree)
  return checkpointer.restore(os.path.join(path, 'state'), target)


def load_meta(workdir: str, step: int | None = None) -> dict:
  """The JSON saved next to the state (history, timings, and `run`: preprocess and dataset)."""
  _, path = _step_dir(workdir, step)
  return ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(os.path.join(path, 'meta'))


def _with_added_keys(d: dict) -> dict:
  for key, value in ADDED_KEYS.items():
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


@dataclasses.dataclass
class Run:
  """A trained run, ready for analysis (see module docstring)."""
  workdir: str
  step: int
  config: ml_collections.ConfigDict
  info: datasets.DatasetInfo
  dataset: dict                  # identity: name, shape, classes, sizes, source
  model: Any                     # flax Module; model.apply(variables, preprocess(x), train=False)
  variables: dict                # {'params', 'batch_stats'} for inference
  preprocess: augment.Preprocess
  uses_ema: bool
  convolutions: Any

  def test_split(self) -> datasets.Split:
    """The test split exactly as the run evaluated it (uint8 images, int32 labels)."""
    return datasets.load_split(self.config.dataset, 'test')

  def logits(self, images: np.ndarray, batch_size: int = 500) -> np.ndarray:
    """Logits of uint8 (or [0, 255] float) images, in batches on the default device."""
    fn = jax.jit(lambda v, x: self.model.apply(v, self.preprocess(x), train=False))
    return np.concatenate([np.asarray(fn(self.variables, images[i:i + batch_size]))
                           for i in range(0, len(images), batch_size)])


def run_info(preprocess: augment.Preprocess, dataset: dict) -> dict:
  """What the checkpoints' meta and results.json record so load_run needs no training data."""
  return {'preprocess': preprocess.to_json(), 'dataset': dataset}


def load_run(workdir: str, step: int | None = None) -> Run:
  """The run in `workdir` at its latest (or given) checkpoint; see the module docstring.

  Runs saved before the preprocessing was recorded still load: the statistics are recomputed
  from the training set (the same computation the run did), and a warning says so once."""
  config = load_config(workdir)
  step, _ = _step_dir(workdir, step)
  info = datasets.info(config.dataset)
  saved = load_meta(workdir, step).get('run')
  if saved:
    preprocess = augment.Preprocess.from_json(saved['preprocess'])
    dataset = saved['dataset']
  else:
    logging.warning('%s was saved before runs recorded their input normalization; recomputing '
                    'it from the training set', workdir)
    train = datasets.load_split(config.dataset, 'train')
    preprocess = augment.Preprocess.from_images(train.images)
    dataset = datasets.identity(config.dataset, info, len(train.labels), -1)
  convs = convolutions_lib.select(config.conv_impl, config.conv_algorithm)
  from train import transfer
  model = transfer.build(config, info.num_classes, config.dtype, convolutions=convs)
  state = load_checkpoint(workdir, step)
  uses_ema = bool(jax.tree_util.tree_leaves(state.get('ema_params', {})))
  variables = {'params': state['ema_params'] if uses_ema else state['params'],
               'batch_stats': state.get('batch_stats', {})}
  return Run(workdir=workdir, step=step, config=config, info=info, dataset=dataset, model=model,
             variables=variables, preprocess=preprocess, uses_ema=uses_ema, convolutions=convs)
