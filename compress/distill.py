"""Knowledge distillation (Hinton et al. 2015, "Distilling the Knowledge in a Neural Network"):
a student trained on the soft targets of a trained teacher run, through the normal train loop
(`distill.teacher` in the config; the teacher's logits are computed inside the step on the
student's augmented batch, so the two always see the same image).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
import optax

from errors import UserError


def loss(student_logits: jax.Array, teacher_logits: jax.Array, labels: jax.Array,
         temperature: float, weight: float, label_smoothing: float = 0.0) -> jax.Array:
  """Per-example distillation loss: `weight` * T^2 * KL(softmax(teacher / T) || softmax(student
  / T)) + (1 - weight) * cross-entropy with the (smoothed) labels. The T^2 keeps the soft
  term's gradient scale independent of T (Hinton et al., section 2); KL differs from the
  paper's soft cross-entropy by the teacher's entropy, a constant, so the gradients are equal."""
  t = jax.nn.log_softmax(teacher_logits / temperature)
  s = jax.nn.log_softmax(student_logits / temperature)
  soft = jnp.sum(jnp.exp(t) * (t - s), axis=-1) * temperature ** 2
  targets = optax.smooth_labels(jax.nn.one_hot(labels, student_logits.shape[-1]),
                                label_smoothing)
  hard = optax.softmax_cross_entropy(student_logits, targets)
  return weight * soft + (1.0 - weight) * hard


def check(d, example_shape=None, num_classes: int | None = None) -> None:
  """The distill block's values and, given the student's data, that the teacher was trained on
  the same input shape and classes (read from its config.json: nothing is loaded or compiled)."""
  if not d.teacher:
    return
  if d.temperature <= 0:
    raise UserError(f'distill.temperature must be positive, got {d.temperature}')
  if not 0.0 <= d.weight <= 1.0:
    raise UserError(f'distill.weight (of the soft-target term) must be in [0, 1], got {d.weight}')
  if not os.path.isfile(os.path.join(d.teacher, 'config.json')):
    raise UserError(f'distill.teacher {d.teacher} is not a trained run (no config.json); pass '
                    'the workdir of a finished --mode=train run')
  if example_shape is not None:
    from data import datasets
    from train import checkpoints
    info = datasets.info(checkpoints.load_config(d.teacher).dataset)
    _same_data(d.teacher, info, example_shape, num_classes)


def _same_data(teacher: str, info, example_shape, num_classes: int) -> None:
  if tuple(info.shape) != tuple(example_shape) or info.num_classes != num_classes:
    raise UserError(f'distill.teacher {teacher} was trained on {info.name} '
                    f'({"x".join(map(str, info.shape))}, {info.num_classes} classes) but '
                    f'the student\'s data is {"x".join(map(str, example_shape))} with '
                    f'{num_classes} classes; use a teacher trained on the same data')


@dataclasses.dataclass
class Teacher:
  """A trained run as the step needs it: `logits(variables, pixels)` for float pixels in
  [0, 255], and its variables (an argument of the step, not a compiled-in constant)."""
  workdir: str
  step: int
  model: Any
  preprocess: Any
  variables: dict
  num_params: int

  def logits(self, variables: dict, pixels: jax.Array) -> jax.Array:
    return self.model.apply(variables, self.preprocess(pixels), train=False)


def load_teacher(d, example_shape, num_classes: int) -> Teacher | None:
  """The teacher run of `distill.teacher` (None when off), checked against the student's data
  before anything is compiled."""
  if not d.teacher:
    return None
  check(d)
  from models import summary
  from train import checkpoints
  run = checkpoints.load_run(d.teacher)
  _same_data(d.teacher, run.info, example_shape, num_classes)
  return Teacher(workdir=d.teacher, step=run.step, model=run.model, preprocess=run.preprocess,
                 variables=run.variables, num_params=summary.count_params(run.variables['params']))
