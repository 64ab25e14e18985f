"""Knowledge distillation (Hinton et al. 2015, "Distilling the Knowledge in a Neural Network"):
a student trained on the soft targets of a trained teacher run, through the normal train loop
(`distill.teacher` in the config; the teacher's logits are computed inside the step on the
student's augmented batch, so the two always see the same image). Used by --mode=compress's
distillation stage too.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from errors import UserError
from models import summary
from store import runs
from train import distributed


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
  runs.check_run(d.teacher, 'distill.teacher', example_shape, num_classes, what='the student')


@dataclasses.dataclass
class Teacher:
  """A trained run as the step needs it: its network (`net.logits(variables, pixels)` for float
  pixels in [0, 255]) and its variables (an argument of the step, not a compiled-in constant)."""
  workdir: str
  step: int
  net: runs.Net
  variables: dict
  num_params: int


def load_teacher(d, example_shape, num_classes: int) -> Teacher | None:
  """The teacher run of `distill.teacher` (None when off), checked against the student's data
  before anything is compiled."""
  if not d.teacher:
    return None
  check(d, example_shape, num_classes)
  run = runs.load_run(d.teacher)
  return Teacher(workdir=d.teacher, step=run.step, net=run.net, variables=run.variables,
                 num_params=summary.count_params(run.variables['params']))


class Distill:
  """The objective of a student: `loss` above on the logits of the teacher, which sees the
  student's (augmented, possibly adversarial) batch in its own input units."""

  def __init__(self, config, teacher: Teacher):
    self.teacher, self.d, self.label_smoothing = teacher, config.distill, config.label_smoothing

  def step_args(self, mesh) -> tuple:
    return (distributed.replicate_tree(self.teacher.variables, mesh),)

  def prepare(self, view, x, y):
    return jax.lax.stop_gradient(
        self.teacher.net.logits(view.args[0], view.preprocess.to_pixels(x)))

  def loss(self, forward, params, batch_stats, x, y, teacher_logits):
    logits, batch_stats = forward(params, batch_stats, x)
    value = loss(logits, teacher_logits, y, self.d.temperature, self.d.weight,
                 self.label_smoothing).mean()
    return value, (logits, batch_stats)

  def model_input(self, x, aux):
    return x

  def record(self) -> dict:
    t = self.teacher
    return {'distill': {'teacher': t.workdir, 'teacher_step': t.step,
                        'teacher_params': t.num_params, 'temperature': self.d.temperature,
                        'weight': self.d.weight}}
