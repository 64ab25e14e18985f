"""Adversarial examples: FGSM and PGD (L-inf and L2; random start, restarts, targeted,
cross-entropy or margin loss) as batched, jitted JAX functions.

Attacks work on images in [0, 1] with the run's normalization inside the model (the convention
of AutoAttack and RobustBench, so eps = 8/255 means what it means there): `logits01(net,
variables)` turns an analysis `Net` (pixels in [0, 255]) into such a function. Every function
returns adversarial images inside the eps-ball and inside [0, 1].
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from errors import UserError

NORMS = ('linf', 'l2')
LOSSES = ('ce', 'margin')


def logits01(net, variables) -> Callable[[jax.Array], jax.Array]:
  """x in [0, 1] -> logits of the net (whose inputs are pixels in [0, 255])."""
  return lambda x: net.logits(variables, x * 255.0)


def check(eps: float, norm: str = 'linf', loss: str = 'ce', steps: int = 1,
          restarts: int = 1) -> None:
  """Every attack setting, checked before anything is traced."""
  if eps < 0:
    raise UserError(f'eps must be >= 0, got {eps}')
  if norm not in NORMS:
    raise UserError(f'unknown norm {norm!r}; use {" or ".join(NORMS)}')
  if loss not in LOSSES:
    raise UserError(f'unknown attack loss {loss!r}; use {" or ".join(LOSSES)}')
  if steps < 1 or restarts < 1:
    raise UserError(f'steps and restarts must be positive, got {steps} and {restarts}')


def _flat_norm(v: jax.Array) -> jax.Array:
  return jnp.sqrt(jnp.sum(v.reshape(len(v), -1) ** 2, axis=1) + 1e-24)


def _per_example(v: jax.Array, x: jax.Array) -> jax.Array:
  return v.reshape((len(v),) + (1,) * (x.ndim - 1))


def attack_loss(logits: jax.Array, labels: jax.Array, loss: str, targeted: bool) -> jax.Array:
  """Per-example loss the attack ascends: for untargeted attacks the cross-entropy of the true
  label or the margin max_{j != y} z_j - z_y; for targeted ones (labels = targets) their
  negatives, so ascending pulls the prediction to the target."""
  onehot = jax.nn.one_hot(labels, logits.shape[-1])
  if loss == 'ce':
    value = -jnp.sum(jax.nn.log_softmax(logits) * onehot, axis=-1)
  else:
    own = jnp.sum(logits * onehot, axis=-1)
    other = jnp.max(jnp.where(onehot > 0, -jnp.inf, logits), axis=-1)
    value = other - own
  return -value if targeted else value


def project(x: jax.Array, x_adv: jax.Array, eps: float, norm: str) -> jax.Array:
  """x_adv moved back into the eps-ball around x, then into [0, 1]."""
  delta = x_adv - x
  if norm == 'linf':
    delta = jnp.clip(delta, -eps, eps)
  else:
    scale = jnp.minimum(1.0, eps / _flat_norm(delta))
    delta = delta * _per_example(scale, x)
  return jnp.clip(x + delta, 0.0, 1.0)


def fgsm(logits_fn, x: jax.Array, labels: jax.Array, eps: float, targeted: bool = False,
         loss: str = 'ce') -> jax.Array:
  """Goodfellow et al.'s fast gradient sign method (one L-inf step of size eps)."""
  g = jax.grad(lambda x: attack_loss(logits_fn(x), labels, loss, targeted).sum())(x)
  return jnp.clip(x + eps * jnp.sign(g), 0.0, 1.0)


def _random_start(key, x, eps: float, norm: str) -> jax.Array:
  if norm == 'linf':
    return x + jax.random.uniform(key, x.shape, minval=-eps, maxval=eps)
  k1, k2 = jax.random.split(key)
  direction = jax.random.normal(k1, x.shape)
  direction = direction / _per_example(_flat_norm(direction), x)
  radius = eps * jax.random.uniform(k2, (len(x),)) ** (1.0 / x[0].size)
  return x + direction * _per_example(radius, x)


def pgd(logits_fn, x: jax.Array, labels: jax.Array, eps: float, norm: str = 'linf',
        steps: int = 10, step_size: float | None = None, restarts: int = 1,
        random_start: bool = True, targeted: bool = False, loss: str = 'ce',
        key: jax.Array | None = None) -> jax.Array:
  """Madry et al.'s projected gradient descent. Each step moves by `step_size` (default
  2.5 eps / steps) along the gradient's sign (L-inf) or its unit direction (L2) and projects
  back. Over `restarts`, an example keeps the first adversarial point found (untargeted: a
  wrong prediction; targeted: the target), so more restarts can only lower robust accuracy.
  For targeted attacks `labels` are the targets."""
  check(eps, norm, loss, steps, restarts)
  step_size = 2.5 * eps / steps if step_size is None else step_size
  key = jax.random.key(0) if key is None else key

  def success(xa):
    pred = jnp.argmax(logits_fn(xa), axis=-1)
    return pred == labels if targeted else pred != labels

  def one_run(k):
    xa = project(x, _random_start(k, x, eps, norm), eps, norm) if random_start else x

    def step(xa, _):
      g = jax.grad(lambda xa: attack_loss(logits_fn(xa), labels, loss, targeted).sum())(xa)
      if norm == 'linf':
        move = jnp.sign(g)
      else:
        move = g / _per_example(_flat_norm(g), x)
      return project(x, xa + step_size * move, eps, norm), None

    xa, _ = jax.lax.scan(step, xa, None, length=steps)
    return xa

  best = x
  found = jnp.zeros(len(x), bool)
  for r in range(restarts):
    xa = one_run(jax.random.fold_in(key, r))
    hit = success(xa) & ~found
    best = jnp.where(_per_example(hit, x), xa, best)
    found = found | hit
  # Examples no restart broke keep the last run's point (still inside the ball).
  return jnp.where(_per_example(found, x), best, xa)


def accuracy(logits_fn, x: jax.Array, labels: jax.Array) -> float:
  return float(jnp.mean(jnp.argmax(logits_fn(x), axis=-1) == labels))
