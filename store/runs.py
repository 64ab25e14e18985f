"""Trained runs as objects, and the one builder of a run's model.

`load_run(workdir)` turns a workdir back into what every mode needs: the config, the dataset,
the model, its inference variables (the EMA weights when the run evaluated them), the exact
input preprocessing and the test split as the run saw it. `build(config, ...)` is the model of
a run for training and for loading alike: `config.model`, the two-column progressive network of
a `finetune.progressive` run, fake-quantized for an `int8_qat` run while it trains.
`check_run` is the one answer to "is this workdir a trained run, on data like mine?".
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from absl import logging

import models
from data import augment, datasets
from errors import UserError
from kernels import convolutions as convolutions_lib
from models import progressive, quantized
from store import checkpoints


def build(config, num_classes: int, dtype: Any, convolutions=None,
          quantize_aware: bool = False) -> nn.Module:
  """The run's model: `config.model`, or for a progressive run the two-column network over the
  source run's architecture and classes; with `quantize_aware` (training an `int8_qat` run) the
  model fake-quantized, built on lax convolutions (what qwix intercepts). A loaded QAT run is
  its float model: the fake quantization only shapes training."""
  if quantize_aware:
    return quantized.qat_model(models.create(config.model, num_classes, dtype))
  model = models.create(config.model, num_classes, dtype, convolutions=convolutions)
  if not (config.get('finetune') and config.finetune.progressive):
    return model
  source = checkpoints.load_config(config.init_from)
  column_a = models.create(source.model, datasets.info(source.dataset).num_classes, dtype,
                           convolutions=convolutions)
  return progressive.Progressive(column_a=column_a, column_b=model)


def check_run(workdir: str, role: str, shape=None, num_classes: int | None = None,
              what: str = 'this run') -> datasets.DatasetInfo:
  """The DatasetInfo of the trained run in `workdir` (read from its config.json: nothing is
  loaded or compiled); a UserError naming `role` (e.g. 'distill.teacher') when it is not a run,
  or, given `shape` / `num_classes`, when its inputs or classes differ from `what`'s."""
  if not workdir or not os.path.isfile(os.path.join(workdir, 'config.json')):
    raise UserError(f'{role} {workdir or "(empty)"} is not a trained run (no config.json); pass '
                    'the workdir of a --mode=train run')
  info = datasets.info(checkpoints.load_config(workdir).dataset)
  theirs, mine = 'x'.join(map(str, info.shape)), 'x'.join(map(str, shape or ()))
  if num_classes is None and shape is not None and tuple(info.shape) != tuple(shape):
    raise UserError(f'{role} {workdir} was trained on {theirs} inputs but {what}\'s are {mine}; '
                    'use a run with the same input shape (or set dataset.image_shape to match)')
  if num_classes is not None and (tuple(info.shape) != tuple(shape) or
                                  info.num_classes != num_classes):
    raise UserError(f'{role} {workdir} was trained on {theirs} images of {info.num_classes} '
                    f'classes ({info.name}: {theirs}, {info.num_classes} classes) but {what}\'s '
                    f'data is {mine} with {num_classes} classes; use a run trained on the same '
                    'data (the same input shape and classes)')
  return info


@dataclasses.dataclass(frozen=True, eq=False)
class Net:
  """A model and its input normalization: the network as a function of pixels.
  `logits(variables, x)` takes pixels in [0, 255]; `logits01(variables)` is the function of
  images in [0, 1] that attacks see. Always in inference mode, so an attack or an attribution
  moves no batch statistics and its gradient does not couple the examples of a batch."""
  model: Any
  preprocess: Callable[[jax.Array], jax.Array]

  def logits(self, variables, x: jax.Array) -> jax.Array:
    return self.model.apply(variables, self.preprocess(x), train=False)

  def logits01(self, variables) -> Callable[[jax.Array], jax.Array]:
    return lambda x: self.logits(variables, x * 255.0)

  def with_layer(self, variables, x: jax.Array, layer: str, delta: jax.Array | None = None):
    """(logits, activation of `layer`), the activation replaced by activation + `delta`."""
    found = {}

    def interceptor(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      if context.method_name == '__call__' and '/'.join(context.module.path) == layer:
        out = out if delta is None else out + delta
        found['a'] = out
      return out

    with nn.intercept_methods(interceptor):
      logits = self.logits(variables, x)
    if 'a' not in found:
      raise UserError(f'layer {layer!r} is not in this model; list them with '
                      '--explain_list_layers')
    return logits, found['a']


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

  @property
  def net(self) -> Net:
    return Net(self.model, self.preprocess)

  def test_split(self) -> datasets.Split:
    """The test split exactly as the run evaluated it (uint8 images, int32 labels)."""
    return datasets.load_split(self.config.dataset, 'test')

  def logits(self, images: np.ndarray, batch_size: int = 500) -> np.ndarray:
    """Logits of uint8 (or [0, 255] float) images, in batches on the default device."""
    fn = jax.jit(self.net.logits)
    return np.concatenate([np.asarray(fn(self.variables, images[i:i + batch_size]))
                           for i in range(0, len(images), batch_size)])


def run_info(preprocess: augment.Preprocess, dataset: dict) -> dict:
  """What the checkpoints' meta and results.json record so load_run needs no training data."""
  return {'preprocess': preprocess.to_json(), 'dataset': dataset}


def load_run(workdir: str, step: int | None = None) -> Run:
  """The run in `workdir` at its latest (or given) checkpoint; see the module docstring.

  Runs saved before the preprocessing was recorded still load: the statistics are recomputed
  from the training set (the same computation the run did), and a warning says so once."""
  config = checkpoints.load_config(workdir)
  step, state, meta = checkpoints.restore_run(workdir, step)
  info = datasets.info(config.dataset)
  saved = meta.get('run')
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
  model = build(config, info.num_classes, config.dtype, convolutions=convs)
  uses_ema = bool(jax.tree_util.tree_leaves(state.get('ema_params', {})))
  variables = {'params': state['ema_params'] if uses_ema else state['params'],
               'batch_stats': state.get('batch_stats', {})}
  return Run(workdir=workdir, step=step, config=config, info=info, dataset=dataset, model=model,
             variables=variables, preprocess=preprocess, uses_ema=uses_ema, convolutions=convs)
