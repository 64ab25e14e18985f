"""Training objectives: what a train step minimizes, chosen by config and built once.

An objective is an object with five methods; the step (train/steps.py) calls them and never
branches on features:

  step_args(mesh)            extra arguments of every step (a teacher's variables), placed once
  prepare(view, x, y)        outside the gradient: adversarial inputs, a teacher's logits
  loss(forward, params, batch_stats, x, y, aux) -> (loss, (logits, new batch_stats))
  model_input(x, aux)        the input of the step's forward pass (what diagnostics replay)
  record()                   its fields of results.json

`view` (View below) is the step's read-only context: the model, the preprocessing, the current
weights, the step's key and the step arguments. Adversarial training wraps another objective
(adversarial.py), so PGD or TRADES compose with cross-entropy, distillation or a new loss.

A new objective is one file here (a subclass of base.Objective: `__init__` and `loss`, the
rest when it needs them) and one entry in OBJECTIVES; `--config.objective=NAME` picks it. Distillation (`distill.teacher`) replaces the base loss, as in Hinton et al.; `int8_qat` is
not an objective but a model (store.runs.build fake-quantizes it), so the step sees neither.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from errors import UserError
from train.objectives import adversarial, cross_entropy, distill, margin

# config.objective -> the objective's class, built as cls(config, num_classes).
OBJECTIVES = {
    'cross_entropy': cross_entropy.CrossEntropy,
    'margin': margin.Margin,
}


class View(NamedTuple):
  """What `prepare` may read of the step: nothing it returns feeds back into the state."""
  model: Any
  preprocess: Any
  params: Any
  batch_stats: Any
  key: Any
  args: tuple


def check(config, example_shape, num_classes: int) -> None:
  """The objective settings, before anything is compiled (the teacher from its config.json)."""
  name = config.objective
  if name not in OBJECTIVES:
    raise UserError(f'unknown objective {name!r}; use {" | ".join(OBJECTIVES)}')
  if config.distill.teacher and name != 'cross_entropy':
    raise UserError(f'distill.teacher trains on the teacher\'s soft targets plus cross-entropy; '
                    f'it cannot be combined with objective={name}')
  if not 0.0 <= config.label_smoothing < 1.0:
    raise UserError(f'label_smoothing must be in [0, 1), got {config.label_smoothing}')
  adversarial.check(config.adversarial)
  distill.check(config.distill, example_shape, num_classes)
  OBJECTIVES[name].check(config)


def build(config, example_shape, num_classes: int):
  """The run's objective: the base loss (distillation when a teacher is set), wrapped in
  adversarial training when `adversarial.method` asks for it."""
  teacher = distill.load_teacher(config.distill, example_shape, num_classes)
  if teacher is not None:
    base = distill.Distill(config, teacher)
  else:
    base = OBJECTIVES[config.objective](config, num_classes)
  if config.adversarial.method == 'none':
    return base
  return adversarial.Adversarial(config.adversarial, base)
