"""Cross-entropy with label smoothing (Szegedy et al. 2016): the default objective."""

from __future__ import annotations

import jax
import optax

from train.objectives import base


class CrossEntropy(base.Objective):
  """Softmax cross-entropy against one-hot labels smoothed by `label_smoothing`."""

  def __init__(self, config, num_classes: int):
    self.label_smoothing = config.label_smoothing

  def loss(self, forward, params, batch_stats, x, y, aux):
    logits, batch_stats = forward(params, batch_stats, x)
    targets = optax.smooth_labels(jax.nn.one_hot(y, logits.shape[-1]), self.label_smoothing)
    return optax.softmax_cross_entropy(logits, targets).mean(), (logits, batch_stats)
