"""Cross-entropy with label smoothing (Szegedy et al. 2016): the default objective."""

from __future__ import annotations

import jax
import optax


class CrossEntropy:
  """Softmax cross-entropy against one-hot labels smoothed by `label_smoothing`."""

  def __init__(self, config, num_classes: int):
    self.label_smoothing = config.label_smoothing

  @staticmethod
  def check(config) -> None:
    return None

  def step_args(self, mesh) -> tuple:
    return ()

  def prepare(self, view, x, y):
    return None

  def loss(self, forward, params, batch_stats, x, y, aux):
    logits, batch_stats = forward(params, batch_stats, x)
    targets = optax.smooth_labels(jax.nn.one_hot(y, logits.shape[-1]), self.label_smoothing)
    return optax.softmax_cross_entropy(logits, targets).mean(), (logits, batch_stats)

  def model_input(self, x, aux):
    return x

  def record(self) -> dict:
    return {}
