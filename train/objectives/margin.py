"""The margin loss of capsule networks (Sabour, Frosst & Hinton 2017, eq. 4), per class k:
T_k max(0, m+ - |v_k|)^2 + lambda (1 - T_k) max(0, |v_k| - m-)^2 with m+ = 0.9, m- = 0.1,
lambda = 0.5, summed over classes. |v_k| is the length of class k's capsule when the model
outputs capsules (N, classes, dim), else the sigmoid of its class score, so any classifier can
train with it (`--config.objective=margin`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from train.objectives import base

M_PLUS, M_MINUS, LAMBDA = 0.9, 0.1, 0.5


def lengths(outputs: jax.Array) -> jax.Array:
  return jnp.linalg.norm(outputs, axis=-1) if outputs.ndim == 3 else jax.nn.sigmoid(outputs)


def margin_loss(outputs: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example margin loss of class outputs against integer labels."""
  v = lengths(outputs)
  t = jax.nn.one_hot(labels, v.shape[-1])
  present = t * jnp.maximum(0.0, M_PLUS - v) ** 2
  absent = LAMBDA * (1.0 - t) * jnp.maximum(0.0, v - M_MINUS) ** 2
  return jnp.sum(present + absent, axis=-1)


class Margin(base.Objective):
  """The margin loss as a training objective; the step's metrics see the class lengths."""

  def __init__(self, config, num_classes: int):
    del config, num_classes

  def loss(self, forward, params, batch_stats, x, y, aux):
    outputs, batch_stats = forward(params, batch_stats, x)
    return margin_loss(outputs, y).mean(), (lengths(outputs), batch_stats)
