"""Adversarial examples as batched, jittable JAX functions: FGSM, PGD (L-inf and L2; random
start, restarts, targeted, cross-entropy or margin loss), APGD-CE and APGD-T (Croce & Hein
2020), the Square attack (Andriushchenko et al. 2020, score-based, L-inf), fooling images
(Nguyen et al. 2015), adversarial patches (Brown et al. 2017), and the inner maximizations of
adversarial training (Madry et al. 2018; TRADES, Zhang et al. 2019).

Attacks work on images in [0, 1] with the run's normalization inside the model (the convention
of AutoAttack and RobustBench, so eps = 8/255 means what it means there): `logits01(net,
variables)` turns an analysis `Net` (pixels in [0, 255]) into such a function. Every function
returns adversarial images inside the eps-ball and inside [0, 1].
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from errors import UserError

NORMS = ('linf', 'l2')
LOSSES = ('ce', 'margin', 'dlr')


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
  label, the margin max_{j != y} z_j - z_y, or Croce & Hein's scale-invariant DLR loss; for
  targeted ones (labels = targets) their negatives, so ascending pulls the prediction to the
  target (targeted DLR: `dlr_targeted`)."""
  if loss == 'dlr':
    return dlr_loss(logits, labels)
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


def ascend(objective, x: jax.Array, start: jax.Array, eps: float, norm: str, steps: int,
           step_size: float) -> jax.Array:
  """Projected gradient ascent of a per-example `objective(x_adv) -> (n,)` from `start`: each
  step moves by `step_size` along the gradient's sign (L-inf) or its unit direction (L2) and
  projects back into the eps-ball around x and into [0, 1]. Shared by PGD and TRADES."""
  def step(xa, _):
    g = jax.grad(lambda xa: objective(xa).sum())(xa)
    move = jnp.sign(g) if norm == 'linf' else g / _per_example(_flat_norm(g), x)
    return project(x, xa + step_size * move, eps, norm), None

  xa, _ = jax.lax.scan(step, project(x, start, eps, norm), None, length=steps)
  return xa


def pgd_step_size(eps: float, steps: int, step_size: float | None) -> float:
  """Madry et al.'s rule when unset: 2.5 eps / steps, so a walk can cross the ball and back."""
  return 2.5 * eps / steps if not step_size else step_size


def pgd_once(logits_fn, x, labels, eps: float, norm: str, steps: int, step_size: float,
             key, random_start: bool = True, targeted: bool = False, loss: str = 'ce'):
  """One PGD run (no success bookkeeping): what adversarial training calls per batch."""
  start = _random_start(key, x, eps, norm) if random_start else x
  return ascend(lambda xa: attack_loss(logits_fn(xa), labels, loss, targeted), x, start, eps,
                norm, steps, step_size)


def pgd(logits_fn, x: jax.Array, labels: jax.Array, eps: float, norm: str = 'linf',
        steps: int = 10, step_size: float | None = None, restarts: int = 1,
        random_start: bool = True, targeted: bool = False, loss: str = 'ce',
        key: jax.Array | None = None) -> jax.Array:
  """Madry et al.'s projected gradient descent (`ascend` on the attack loss; step size 2.5 eps /
  steps by default). Over `restarts`, an example keeps the first adversarial point found
  (untargeted: a wrong prediction; targeted: the target), so more restarts can only lower
  robust accuracy. For targeted attacks `labels` are the targets."""
  check(eps, norm, loss, steps, restarts)
  step_size = pgd_step_size(eps, steps, step_size)
  key = jax.random.key(0) if key is None else key
  best = x
  found = jnp.zeros(len(x), bool)
  for r in range(restarts):
    xa = pgd_once(logits_fn, x, labels, eps, norm, steps, step_size, jax.random.fold_in(key, r),
                  random_start, targeted, loss)
    hit = _success(logits_fn(xa), labels, targeted) & ~found
    best = jnp.where(_per_example(hit, x), xa, best)
    found = found | hit
  # Examples no restart broke keep the last run's point (still inside the ball).
  return jnp.where(_per_example(found, x), best, xa)


def _success(logits, labels, targeted: bool) -> jax.Array:
  pred = jnp.argmax(logits, axis=-1)
  return pred == labels if targeted else pred != labels


def trades_inputs(logits_fn, x, eps: float, norm: str, steps: int, step_size: float, key):
  """Zhang et al.'s TRADES inner maximization: the point in the ball whose prediction is
  furthest (KL) from the clean one, from a tiny Gaussian start as their code does."""
  clean = jax.lax.stop_gradient(jax.nn.softmax(logits_fn(x)))
  start = x + 0.001 * jax.random.normal(key, x.shape)
  return ascend(lambda xa: kl_divergence(clean, logits_fn(xa)), x, start, eps, norm, steps,
                step_size)


def kl_divergence(p: jax.Array, logits: jax.Array) -> jax.Array:
  """Per-example KL(p || softmax(logits))."""
  return jnp.sum(p * (jnp.log(p + 1e-12) - jax.nn.log_softmax(logits)), axis=-1)


def accuracy(logits_fn, x: jax.Array, labels: jax.Array) -> float:
  return float(jnp.mean(jnp.argmax(logits_fn(x), axis=-1) == labels))


# ----------------------------------------------------------------------------- APGD


def _sorted_logits(logits):
  return jnp.sort(logits, axis=-1)[:, ::-1]  # descending: z_pi1 >= z_pi2 >= ...


def _margin(logits, labels):
  onehot = jax.nn.one_hot(labels, logits.shape[-1])
  own = jnp.sum(logits * onehot, axis=-1)
  other = jnp.max(jnp.where(onehot > 0, -jnp.inf, logits), axis=-1)
  return own, other


def dlr_loss(logits, labels):
  """Croce & Hein's difference-of-logits ratio -(z_y - max_{j != y} z_j) / (z_pi1 - z_pi3):
  invariant to shifts and scalings of the logits. With 2 classes there is no z_pi3 and the
  ratio is constant, so the plain margin is used."""
  own, other = _margin(logits, labels)
  if logits.shape[-1] < 3:
    return other - own
  z = _sorted_logits(logits)
  return -(own - other) / (z[:, 0] - z[:, 2] + 1e-12)


def dlr_targeted(logits, labels, targets):
  """The targeted DLR loss -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2) of APGD-T. The official
  code indexes z_pi4 and fails below 4 classes; here the denominator averages the z_pi3, z_pi4
  that exist (3 classes: z_pi1 - z_pi3) and 2 classes use the plain logit difference."""
  c = logits.shape[-1]
  own = jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0]
  tgt = jnp.take_along_axis(logits, targets[:, None], axis=-1)[:, 0]
  if c < 3:
    return tgt - own
  z = _sorted_logits(logits)
  below = z[:, 2] if c == 3 else (z[:, 2] + z[:, 3]) / 2
  return -(own - tgt) / (z[:, 0] - below + 1e-12)


def apgd_checks(steps: int) -> list[int]:
  """The iterations (0-based) after which APGD checks its step size: the first check after
  22% of the budget, each next period 3% shorter, never under 6% (Croce & Hein, Sec. 3.2)."""
  period, shrink, least = max(int(0.22 * steps), 1), max(int(0.03 * steps), 1), \
      max(int(0.06 * steps), 1)
  checks, i = [], period - 1
  while i < steps:
    checks.append(i)
    period = max(period - shrink, least)
    i += period
  return checks


def apgd(logits_fn, x: jax.Array, labels: jax.Array, eps: float, norm: str = 'linf',
         steps: int = 100, loss: str = 'ce', targets: jax.Array | None = None,
         key: jax.Array | None = None, rho: float = 0.75, alpha: float = 0.75):
  """One run of Auto-PGD (Croce & Hein 2020) from a random start: step size 2 eps, momentum
  alpha, and at each checkpoint the step size halves and the walk restarts from the best point
  of examples whose loss rose in fewer than rho of the last steps, or which neither reduced
  the step at the last check nor improved since. `loss`: ce (APGD-CE), dlr, or `targets` for
  the targeted DLR loss (APGD-T). Returns (x_adv, broken): any iterate that was misclassified
  is kept, so the attack reports its best point, not its last."""
  check(eps, norm, 'ce' if targets is not None else loss, steps)
  key = jax.random.key(0) if key is None else key
  if targets is not None:
    objective = lambda z: dlr_targeted(z, labels, targets)
  else:
    objective = lambda z: attack_loss(z, labels, loss, False)

  def value_grad(xa):
    def total(xa):
      z = logits_fn(xa)
      v = objective(z)
      return v.sum(), (v, z)
    g, (v, z) = jax.grad(total, has_aux=True)(xa)
    return v, g, jnp.argmax(z, -1) != labels

  if norm == 'linf':
    t = jax.random.uniform(key, x.shape, minval=-1.0, maxval=1.0)
    t = t / _per_example(jnp.max(jnp.abs(t).reshape(len(x), -1), 1), x)
    start = jnp.clip(x + eps * t, 0.0, 1.0)
  else:
    t = jax.random.normal(key, x.shape)
    start = jnp.clip(x + eps * t / _per_example(_flat_norm(t), x), 0.0, 1.0)

  def move(xa, g, eta):
    if norm == 'linf':
      return xa + _per_example(eta, x) * jnp.sign(g)
    return xa + _per_example(eta, x) * g / _per_example(_flat_norm(g), x)

  v0, g0, bad0 = value_grad(start)
  n = len(x)
  state = dict(xa=start, x_old=start, g=g0, v=v0, v_best=v0, x_best=start, g_best=g0,
               eta=jnp.full((n,), 2.0 * eps), ups=jnp.zeros((n,), jnp.int32),
               v_last=v0, reduced_last=jnp.ones((n,), bool), broken=bad0,
               x_broken=start)
  is_check = np.zeros(steps, bool)
  is_check[apgd_checks(steps)] = True
  periods = np.diff([-1] + apgd_checks(steps))
  period_of = np.zeros(steps, np.int32)
  period_of[is_check] = periods

  def step(st, inp):
    i, chk, period = inp
    a = jnp.where(i == 0, 1.0, alpha)
    z = project(x, move(st['xa'], st['g'], st['eta']), eps, norm)
    xn = project(x, st['xa'] + a * (z - st['xa']) + (1 - a) * (st['xa'] - st['x_old']), eps, norm)
    v, g, bad = value_grad(xn)
    new_broken = bad & ~st['broken']
    pe = lambda m: _per_example(m, x)
    x_broken = jnp.where(pe(new_broken), xn, st['x_broken'])
    better = v > st['v_best']
    v_best = jnp.where(better, v, st['v_best'])
    x_best = jnp.where(pe(better), xn, st['x_best'])
    g_best = jnp.where(pe(better), g, st['g_best'])
    ups = st['ups'] + (v > st['v']).astype(jnp.int32)
    # The checkpoint conditions; outside a checkpoint nothing below changes.
    oscillating = ups <= rho * period
    stalled = ~st['reduced_last'] & (st['v_last'] >= v_best)
    halve = chk & (oscillating | stalled)
    eta = jnp.where(halve, st['eta'] / 2, st['eta'])
    xa = jnp.where(pe(halve), x_best, xn)
    g = jnp.where(pe(halve), g_best, g)
    new = dict(xa=xa, x_old=st['xa'], g=g, v=v, v_best=v_best, x_best=x_best, g_best=g_best,
               eta=eta, ups=jnp.where(chk, 0, ups),
               v_last=jnp.where(chk, v_best, st['v_last']),
               reduced_last=jnp.where(chk, halve, st['reduced_last']),
               broken=st['broken'] | bad, x_broken=x_broken)
    return new, None

  state, _ = jax.lax.scan(step, state, (jnp.arange(steps), jnp.asarray(is_check),
                                        jnp.asarray(period_of)))
  x_adv = jnp.where(_per_example(state['broken'], x), state['x_broken'], state['x_best'])
  return x_adv, state['broken']


def apgd_target_classes(logits: jax.Array, k: int) -> jax.Array:
  """(k, n) target classes of APGD-T: the 2nd, 3rd, ... highest-scoring class of each clean
  example; k is capped at (classes - 1), so datasets with fewer than 10 classes work."""
  k = min(k, logits.shape[-1] - 1)
  order = jnp.argsort(-logits, axis=-1)
  return order[:, 1:k + 1].T


def apgd_targeted(logits_fn, x, labels, eps: float, norm: str = 'linf', steps: int = 100,
                  num_targets: int = 9, key=None):
  """APGD-T: a targeted-DLR APGD run towards each of the `num_targets` runner-up classes in
  turn; an example broken by any run keeps that point. Returns (x_adv, broken)."""
  key = jax.random.key(0) if key is None else key
  targets = apgd_target_classes(logits_fn(x), num_targets)
  best, broken = x, jnp.zeros(len(x), bool)
  for k, t in enumerate(targets):
    xa, hit = apgd(logits_fn, x, labels, eps, norm, steps, targets=t,
                   key=jax.random.fold_in(key, k))
    new = hit & ~broken
    best = jnp.where(_per_example(new, x), xa, best)
    broken = broken | hit
  return best, broken


# ----------------------------------------------------------------------------- Square attack


def square_p(p_init: float, i: jax.Array, budget: int) -> jax.Array:
  """The fraction of pixels Square changes at iteration i: p_init halved at fixed points of a
  10,000-query schedule rescaled to the budget (Andriushchenko et al., App. B)."""
  it = (i * 10000) // budget
  bounds = jnp.asarray([10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000])
  return p_init / 2.0 ** jnp.sum(it > bounds)


def _square_margin(logits_fn, xa, labels):
  own, other = _margin(logits_fn(xa), labels)
  return own - other


def square_start(logits_fn, x: jax.Array, labels: jax.Array, eps: float, key: jax.Array):
  """Square's first query: vertical stripes of +-eps per column and channel. (x_best, margin)."""
  n, _, w = x.shape[:3]
  stripes = eps * jax.random.rademacher(key, (n, 1, w, x.shape[-1]), dtype=x.dtype)
  xb = jnp.clip(x + stripes, 0.0, 1.0)
  return xb, _square_margin(logits_fn, xb, labels)


def square_steps(logits_fn, x, labels, eps: float, xb, m, first, count: int, budget: int,
                 p_init: float = 0.8, key: jax.Array | None = None):
  """Iterations first .. first + count - 1 of a `budget`-query Square attack from (xb, m):
  each changes one random square window (per example) to a random +-eps colour per channel
  and keeps it only if the margin z_y - max_{j != y} z_j fell; broken examples (margin <= 0)
  stop changing. Returns (x_best, margin, iterations each example was still unbroken)."""
  key = jax.random.key(0) if key is None else key
  n, h, w = x.shape[:3]
  c = x.shape[-1]
  rows = jnp.arange(h)[None, :, None, None]
  cols = jnp.arange(w)[None, None, :, None]

  def step(carry, i):
    xb, m, used = carry
    active = m > 0
    k1, k2, k3 = jax.random.split(jax.random.fold_in(key, i), 3)
    side = jnp.clip(jnp.round(jnp.sqrt(square_p(p_init, i, budget) * h * w)), 1, min(h, w))
    side = side.astype(jnp.int32)
    r0 = jax.random.randint(k1, (n, 1, 1, 1), 0, h - side + 1)
    c0 = jax.random.randint(k2, (n, 1, 1, 1), 0, w - side + 1)
    window = (rows >= r0) & (rows < r0 + side) & (cols >= c0) & (cols < c0 + side)
    colour = eps * jax.random.rademacher(k3, (n, 1, 1, c), dtype=x.dtype)
    xn = jnp.clip(jnp.where(window, x + colour, xb), 0.0, 1.0)
    mn = _square_margin(logits_fn, xn, labels)
    take = active & (mn < m)
    xb = jnp.where(_per_example(take, x), xn, xb)
    return (xb, jnp.where(take, mn, m), used + active.astype(jnp.int32)), None

  used = jnp.zeros((n,), jnp.int32)
  (xb, m, used), _ = jax.lax.scan(step, (xb, m, used), first + jnp.arange(count))
  return xb, m, used


def square_linf(logits_fn, x: jax.Array, labels: jax.Array, eps: float, queries: int = 1000,
                p_init: float = 0.8, key: jax.Array | None = None):
  """The score-based L-inf Square attack (Andriushchenko et al. 2020) with a budget of
  `queries` model calls per example: it reads only logits, never gradients. Returns (x_adv,
  broken, queries used per example: 1 for the start plus 1 per iteration while unbroken)."""
  check(eps, 'linf', 'margin', max(queries, 1))
  key = jax.random.key(0) if key is None else key
  k0, key = jax.random.split(key)
  xb, m = square_start(logits_fn, x, labels, eps, k0)
  xb, m, used = square_steps(logits_fn, x, labels, eps, xb, m, 0, queries - 1, queries, p_init,
                             key)
  return xb, m <= 0, used + 1


# ----------------------------------------------------------------------------- fooling images


def fooling_images(logits_fn, start: jax.Array, classes: jax.Array, steps: int = 500,
                   step_size: float = 0.02, confidence: float = 0.99):
  """Nguyen et al.'s fooling images by gradient ascent: each image in [0, 1] climbs the log
  probability of its class by signed-gradient steps (cosine-decayed from `step_size`, so it
  settles instead of oscillating) until the softmax confidence reaches `confidence`, then
  stays as it first reached it. Returns (images, confidences, the step at which each reached
  the confidence, -1 if never)."""

  def logp(xa):
    return jnp.take_along_axis(jax.nn.log_softmax(logits_fn(xa)), classes[:, None], -1)[:, 0]

  def step(carry, i):
    xa, reached = carry
    done = reached >= 0
    size = step_size * (0.05 + 0.95 * 0.5 * (1 + jnp.cos(jnp.pi * i / steps)))
    g = jax.grad(lambda z: logp(z).sum())(xa)
    xn = jnp.where(_per_example(done, xa), xa, jnp.clip(xa + size * jnp.sign(g), 0, 1))
    hit = (jnp.exp(logp(xn)) >= confidence) & ~done
    return (xn, jnp.where(hit, i + 1, reached)), None

  reached0 = jnp.where(jnp.exp(logp(start)) >= confidence, 0, -1)
  (xa, reached), _ = jax.lax.scan(step, (start, reached0), jnp.arange(steps))
  return xa, jnp.exp(logp(xa)), reached


# ----------------------------------------------------------------------------- patches


def apply_patch(x: jax.Array, patch: jax.Array, rows: jax.Array, cols: jax.Array) -> jax.Array:
  """x with `patch` pasted at (rows[i], cols[i]) of each image."""
  return jax.vmap(lambda img, r, c: jax.lax.dynamic_update_slice(
      img, patch.astype(img.dtype), (r, c, 0)))(x, rows, cols)


def random_places(key, n: int, image_shape, side: int) -> tuple[jax.Array, jax.Array]:
  k1, k2 = jax.random.split(key)
  return (jax.random.randint(k1, (n,), 0, image_shape[0] - side + 1),
          jax.random.randint(k2, (n,), 0, image_shape[1] - side + 1))


def train_patch(logits_fn, images: jax.Array, target: int, side: int, steps: int = 300,
                batch: int = 128, lr: float = 0.05, key: jax.Array | None = None) -> jax.Array:
  """Brown et al.'s adversarial patch: one side x side patch (in [0, 1], a sigmoid of its free
  parameters) trained with Adam to maximize the log probability of `target` over random
  training images and random placements (expectation over transformations, here location)."""
  import optax
  key = jax.random.key(0) if key is None else key
  channels = images.shape[-1]
  tx = optax.adam(lr)
  z = jnp.zeros((side, side, channels))
  opt = tx.init(z)

  def loss(z, k):
    k1, k2 = jax.random.split(k)
    pick = jax.random.randint(k1, (batch,), 0, len(images))
    r, c = random_places(k2, batch, images.shape[1:], side)
    xs = apply_patch(images[pick], jax.nn.sigmoid(z), r, c)
    return -jnp.mean(jax.nn.log_softmax(logits_fn(xs))[:, target])

  def step(carry, i):
    z, opt = carry
    g = jax.grad(loss)(z, jax.random.fold_in(key, i))
    updates, opt = tx.update(g, opt, z)
    return (optax.apply_updates(z, updates), opt), None

  (z, _), _ = jax.lax.scan(step, (z, opt), jnp.arange(steps))
  return jax.nn.sigmoid(z)


def norms(x: jax.Array, x_adv: jax.Array) -> dict[str, np.ndarray]:
  """Per-example L-inf and L2 sizes of the perturbations."""
  d = np.asarray(x_adv - x, np.float64).reshape(len(x), -1)
  return {'linf': np.abs(d).max(1), 'l2': np.linalg.norm(d, axis=1)}


# ----------------------------------------------------------------------------- --mode=attack

PARTS = ('whitebox', 'blackbox', 'fooling', 'patch', 'transfer', 'membership', 'reconstruction')
# Default eps per norm for [0, 1] images: gray (MNIST-like; the MNIST challenge uses 0.3) and
# colour (CIFAR-like; RobustBench's L-inf threat model is 8/255, its L2 one 0.5).
DEFAULT_EPS = {('linf', 'gray'): (0.05, 0.1, 0.2), ('linf', 'colour'): (2 / 255, 4 / 255, 8 / 255),
               ('l2', 'gray'): (0.5, 1.0, 2.0), ('l2', 'colour'): (0.25, 0.5, 1.0)}


@dataclasses.dataclass(frozen=True)
class Options:
  """Everything `--mode=attack` does (the `--attack_*` flags of analysis/modes.py)."""
  parts: tuple[str, ...] = PARTS
  norm: str = 'linf'
  eps: tuple[float, ...] = ()          # () = DEFAULT_EPS for the dataset
  examples: int = 500
  batch: int = 250
  pgd_steps: int = 20
  restarts: int = 1
  loss: str = 'ce'
  apgd_steps: int = 100
  apgd_targets: int = 3
  square_queries: int = 1000
  fooling_steps: int = 500
  patch_target: int = 0
  patch_size: int = 0                  # 0 = a square of ~10% of the image area
  patch_steps: int = 300
  target_workdir: str = ''
  membership_examples: int = 1000
  references: tuple[str, ...] = ()
  seed: int = 0
  step: int | None = None


def default_eps(norm: str, channels: int) -> tuple[float, ...]:
  return DEFAULT_EPS[(norm, 'gray' if channels == 1 else 'colour')]


def check_options(o: Options, workdir: str) -> None:
  """Every setting and every other workdir, checked from configs before anything compiles."""
  from data import datasets
  from train import checkpoints
  unknown = sorted(set(o.parts) - set(PARTS))
  if unknown:
    raise UserError(f'unknown attack part(s) {", ".join(unknown)}; use {", ".join(PARTS)}')
  for e in o.eps:
    check(e, o.norm, o.loss)
  check(0.0, o.norm, o.loss, o.pgd_steps, o.restarts)
  for name in ('examples', 'batch', 'apgd_steps', 'apgd_targets', 'square_queries',
               'fooling_steps', 'patch_steps', 'membership_examples'):
    if getattr(o, name) < 1:
      raise UserError(f'--attack_{name} must be positive, got {getattr(o, name)}')
  cfg = checkpoints.load_config(workdir)
  info = datasets.info(cfg.dataset)
  if not 0 <= o.patch_target < info.num_classes:
    raise UserError(f'--attack_patch_target must be a class index below {info.num_classes}, '
                    f'got {o.patch_target}')
  if o.patch_size < 0 or (len(info.shape) == 3 and o.patch_size >= min(info.shape[:2])):
    raise UserError(f'--attack_patch_size must be >= 0 and smaller than the image side '
                    f'{min(info.shape[:2])}, got {o.patch_size}')
  if o.target_workdir:
    try:
      other = datasets.info(checkpoints.load_config(o.target_workdir).dataset)
    except UserError as e:
      raise UserError(f'--target_workdir: {e}') from None
    if tuple(other.shape) != tuple(info.shape) or other.num_classes != info.num_classes:
      raise UserError(f'--target_workdir {o.target_workdir} takes {"x".join(map(str, other.shape))}'
                      f' inputs with {other.num_classes} classes, the attacked run '
                      f'{"x".join(map(str, info.shape))} with {info.num_classes}; transfer needs '
                      'the same input shape and classes')
  if o.references:
    from analysis import privacy
    try:
      privacy.check_references(workdir, o.references)
    except UserError as e:
      raise UserError(f'--membership_reference_workdirs: {e}') from None


def _batched(fn, arrays, batch: int, key=None):
  """fn(*chunks[, key]) over fixed-size chunks (the last padded by repetition, so one compiled
  shape serves every call); the outputs' leading axes concatenated and cut back."""
  n = len(arrays[0])
  pad = (-n) % batch
  arrays = [np.concatenate([a, np.repeat(a[-1:], pad, 0)]) if pad else a for a in arrays]
  outs = []
  for j, i in enumerate(range(0, n + pad, batch)):
    chunk = [jnp.asarray(a[i:i + batch]) for a in arrays]
    outs.append(fn(*chunk, jax.random.fold_in(key, j)) if key is not None else fn(*chunk))
  return jax.tree_util.tree_map(lambda *o: np.concatenate([np.asarray(v) for v in o])[:n], *outs)


def _row(attack: str, eps: float, norm: str, x, x_adv, y, clean_ok, robust, queries,
         seconds: float, **extra) -> dict:
  broken = clean_ok & ~robust
  size = norms(x, x_adv)[norm][broken] if x_adv is not None else np.zeros(0)
  return {'attack': attack, 'norm': norm, 'eps': float(eps),
          'robust_accuracy': float(robust.mean()), 'attack_success_rate':
          float(broken.sum() / max(clean_ok.sum(), 1)),
          'mean_perturbation_norm': float(size.mean()) if len(size) else None,
          'queries': float(queries), 'seconds': round(seconds, 2), **extra}


def run_attack(workdir: str, o: Options) -> dict:
  """`--mode=attack`: every part of this module on a trained run, into `W/attack/`."""
  import time
  from absl import logging
  from analysis import common, explain, privacy
  from data import datasets
  from train import checkpoints
  check_options(o, workdir)
  run = checkpoints.load_run(workdir, o.step)
  shape = run.info.shape
  image_model = len(shape) == 3
  eps_list = tuple(o.eps) or default_eps(o.norm, shape[-1])
  device = jax.local_devices()[0]
  variables = jax.device_put(run.variables, device)
  net = explain.Net(run.model, run.preprocess)
  f = logits01(net, variables)
  out = common.output_dir(workdir, 'attack')
  plt = common.pyplot()
  images, labels, idx = common.test_examples(run, o.examples, o.seed, per_class=True)
  x = images.astype(np.float32) / 255.0
  y = labels.astype(np.int32)
  n = len(y)
  batch = min(o.batch, n)
  key = jax.random.key(o.seed)
  logits_jit = jax.jit(f)
  predict = jax.jit(lambda xa: jnp.argmax(f(xa), -1))
  train_split = functools.cache(lambda: datasets.load_split(run.config.dataset, 'train'))
  pred = lambda xa: _batched(predict, [xa], batch)
  clean_ok = pred(x) == y
  notes: dict[str, str] = {}
  warnings: list[str] = []
  results: dict = {'workdir': '.', 'step': run.step, 'model': run.config.model.name,
                   'dataset': run.dataset['name'], 'num_examples': n, 'examples': idx.tolist(),
                   'clean_accuracy': float(clean_ok.mean()), 'norm': o.norm,
                   'eps': [float(e) for e in eps_list], 'attacks': [], 'warnings': warnings,
                   'notes': notes, 'settings': dataclasses.asdict(o), 'seconds': {}}
  rows = results['attacks']
  logging.info('attack: %s at step %d: clean accuracy %.2f%% on %d test examples',
               run.config.model.name, run.step, 100 * results['clean_accuracy'], n)
  adversarials: dict[float, np.ndarray] = {}
  worst: dict[float, np.ndarray] = {}

  if 'whitebox' in o.parts:
    t_part = time.time()
    for eps in eps_list:
      robust_any = clean_ok.copy()
      if o.norm == 'linf':
        t = time.time()
        fgsm_fn = jax.jit(lambda a, b, e=eps: fgsm(f, a, b, e, loss=o.loss))
        xa = _batched(fgsm_fn, [x, y], batch)
        robust = clean_ok & (pred(xa) == y)
        rows.append(_row('fgsm', eps, o.norm, x, xa, y, clean_ok, robust, 1, time.time() - t))
        robust_any &= robust
      t = time.time()
      pgd_fn = jax.jit(lambda a, b, k, e=eps: pgd(f, a, b, e, o.norm, o.pgd_steps,
                                                  restarts=o.restarts, loss=o.loss, key=k))
      xa = _batched(pgd_fn, [x, y], batch, key)
      robust = clean_ok & (pred(xa) == y)
      adversarials[eps] = xa
      rows.append(_row('pgd', eps, o.norm, x, xa, y, clean_ok, robust,
                       o.pgd_steps * o.restarts, time.time() - t, steps=o.pgd_steps,
                       restarts=o.restarts, loss=o.loss))
      robust_any &= robust
      # APGD-CE on every example, then APGD-T on those it left (AutoAttack's cascade).
      t = time.time()
      ce_fn = jax.jit(lambda a, b, k, e=eps: apgd(f, a, b, e, o.norm, o.apgd_steps, 'ce', key=k))
      xa_ce, _ = _batched(ce_fn, [x, y], batch, key)
      robust = clean_ok & (pred(xa_ce) == y)
      rows.append(_row('apgd_ce', eps, o.norm, x, xa_ce, y, clean_ok, robust, o.apgd_steps + 1,
                       time.time() - t, steps=o.apgd_steps))
      t = time.time()
      xa_t = xa_ce.copy()
      left = np.flatnonzero(robust)
      tgt_fn = jax.jit(lambda a, b, c, k, e=eps: apgd(f, a, b, e, o.norm, o.apgd_steps,
                                                      targets=c, key=k))
      queries = 0
      if len(left):
        clean_logits = _batched(logits_jit, [x[left]], batch)
        targets = np.asarray(apgd_target_classes(jnp.asarray(clean_logits), o.apgd_targets))
        for tc in targets:
          still = left[pred(xa_t[left]) == y[left]]
          if not len(still):
            break
          pos = np.searchsorted(left, still)
          xs, _ = _batched(tgt_fn, [x[still], y[still], tc[pos]], batch, key)
          xa_t[still] = xs
          queries += len(still) * (o.apgd_steps + 1)
      robust = clean_ok & (pred(xa_t) == y)
      rows.append(_row('apgd_t', eps, o.norm, x, xa_t, y, clean_ok, robust,
                       queries / max(len(left), 1), time.time() - t, steps=o.apgd_steps,
                       targets=min(o.apgd_targets, run.info.num_classes - 1),
                       after='apgd_ce'))
      robust_any &= robust
      worst[eps] = robust_any
      rows.append(_row('worst_case_whitebox', eps, o.norm, x, None, y, clean_ok, robust_any, 0,
                       0.0))
      logging.info('attack: eps %.4g: %s', eps, ', '.join(
          f'{r["attack"]} {100 * r["robust_accuracy"]:.1f}%' for r in rows if r['eps'] == eps))
    results['seconds']['whitebox'] = round(time.time() - t_part, 1)

  if 'blackbox' in o.parts:
    if o.norm != 'linf' or not image_model:
      notes['blackbox'] = 'the Square attack here is the L-inf one on 2-D images'
    else:
      t_part = time.time()
      # Run in rounds of 100 queries on the examples still unbroken, so the budget is only
      # spent where it is needed (one compiled shape: _batched pads every call to `batch`).
      for eps in eps_list:
        t = time.time()
        k0, k1 = jax.random.split(jax.random.fold_in(key, 21))
        start_fn = jax.jit(lambda a, b, k, e=eps: square_start(f, a, b, e, k))
        rounds = {count: jax.jit(lambda a, b, xb, m, first, k, e=eps, c=count: square_steps(
            f, a, b, e, xb, m, first, c, o.square_queries, key=k))
            for count in {100, (o.square_queries - 1) % 100} - {0}}
        xa, m = _batched(start_fn, [x, y], batch, k0)
        used = np.ones(n, np.int64)
        for first in range(0, o.square_queries - 1, 100):
          live = np.flatnonzero((m > 0) & clean_ok)
          if not len(live):
            break
          fn = rounds[min(100, o.square_queries - 1 - first)]
          xa[live], m[live], us = _batched(
              lambda a, b, xb, mm, k: fn(a, b, xb, mm, first, k),
              [x[live], y[live], xa[live], m[live]], batch, jax.random.fold_in(k1, first))
          used[live] += us
        robust = clean_ok & (pred(xa) == y)
        broken = clean_ok & ~robust
        rows.append(_row('square', eps, o.norm, x, xa, y, clean_ok, robust,
                         used[clean_ok].mean() if clean_ok.any() else 0, time.time() - t,
                         query_budget=o.square_queries,
                         mean_queries_successful=float(used[broken].mean()) if broken.any()
                         else None))
        if eps in worst:
          white = worst[eps].mean()
          if robust.mean() < white:
            warnings.append(
                f'eps {eps:.4g}: the black-box Square attack ({100 * robust.mean():.1f}% robust) '
                f'beat every white-box attack ({100 * white:.1f}%): the gradients may be partly '
                'masked or the white-box attacks not converged; report worst_case')
          only = int((worst[eps] & ~robust).sum())
          if only:
            notes[f'square eps {eps:.4g}'] = f'{only} examples broken only by Square'
          rows.append(_row('worst_case', eps, o.norm, x, None, y, clean_ok, worst[eps] & robust,
                           0, 0.0, of='fgsm, pgd, apgd_ce, apgd_t, square'))
      results['seconds']['blackbox'] = round(time.time() - t_part, 1)

  if worst:
    examples_png(plt, x, adversarials, worst, clean_ok, y, pred, eps_list, f'{out}/examples.png')
    curve_png(plt, rows, results['clean_accuracy'], f'{out}/robustness.png')

  if 'transfer' in o.parts and o.target_workdir:
    if not adversarials:
      notes['transfer'] = 'needs the white-box PGD examples (part whitebox)'
    else:
      t_part = time.time()
      other = checkpoints.load_run(o.target_workdir)
      g = logits01(explain.Net(other.model, other.preprocess),
                   jax.device_put(other.variables, device))
      other_pred = jax.jit(lambda xa: jnp.argmax(g(xa), -1))
      other_ok = _batched(other_pred, [x], batch) == y
      rows_t = []
      for eps, xa in adversarials.items():
        fooled_a = clean_ok & (pred(xa) != y)
        fooled_b = _batched(other_pred, [xa], batch) != y
        both = fooled_a & other_ok
        rows_t.append({'eps': float(eps), 'source_robust_accuracy': float((clean_ok & ~fooled_a).mean()),
                       'target_accuracy_on_adversarials': float((other_ok & ~fooled_b).mean()),
                       'transfer_rate': float((both & fooled_b).sum() / max(both.sum(), 1)),
                       'num_transferable': int(both.sum())})
      results['transfer'] = {'target_workdir': os.path.abspath(o.target_workdir),
                             'target_model': other.config.model.name,
                             'target_clean_accuracy': float(other_ok.mean()),
                             'attack': 'pgd', 'by_eps': rows_t}
      results['seconds']['transfer'] = round(time.time() - t_part, 1)

  if 'fooling' in o.parts:
    t_part = time.time()
    c = run.info.num_classes
    classes = jnp.tile(jnp.arange(c), 2)
    noise = jax.random.uniform(jax.random.fold_in(key, 7), (c, *shape))
    start = jnp.concatenate([noise, jnp.full((c, *shape), 0.5)])
    fool = jax.jit(lambda s, k: fooling_images(f, s, k, o.fooling_steps))
    imgs, conf, reached = (np.asarray(v) for v in fool(start, classes))
    part = lambda sl: {'fraction_reached': float((reached[sl] >= 0).mean()),
                       'mean_steps_reached': float(reached[sl][reached[sl] >= 0].mean())
                       if (reached[sl] >= 0).any() else None,
                       'mean_confidence': float(conf[sl].mean())}
    results['fooling'] = {'confidence_goal': 0.99, 'max_steps': o.fooling_steps,
                          'step_size': 0.02, 'label_smoothing': run.config.label_smoothing,
                          'starts': {'uniform_noise': part(slice(0, c)),
                                                        'blank_gray': part(slice(c, 2 * c))},
                          'fraction_reached': float((reached >= 0).mean()),
                          'confidence': conf.round(4).tolist(), 'steps': reached.tolist()}
    if run.config.label_smoothing and (reached < 0).any():
      notes['fooling'] = (f'the run was trained with label smoothing {run.config.label_smoothing}'
                          ', which bounds how confident it gets; '
                          f'{int((reached < 0).sum())} of {2 * c} images stayed below 99%')
    if image_model:
      grid = [imgs[:c] * 255.0, imgs[c:] * 255.0]
      explain.image_grid(plt, grid, ['from noise', 'from gray'], f'{out}/fooling.png',
                         col_labels=[''] + [f'class {k}' for k in range(1, c)])
    results['seconds']['fooling'] = round(time.time() - t_part, 1)

  if 'patch' in o.parts:
    if not image_model:
      notes['patch'] = 'adversarial patches are for 2-D images'
    else:
      t_part = time.time()
      side = o.patch_size or max(2, int(round(math.sqrt(0.1 * shape[0] * shape[1]))))
      train = train_split()
      pool, _, _ = common.pick_examples(train.images, train.labels, 2000, o.seed)
      patch = train_patch(f, jnp.asarray(pool, jnp.float32) / 255.0, o.patch_target, side,
                          o.patch_steps, key=jax.random.fold_in(key, 11))
      keep = y != o.patch_target
      xs = np.repeat(x[keep], 4, 0)
      r, cc = random_places(jax.random.fold_in(key, 12), len(xs), shape, side)
      place = jax.jit(lambda a, p, r, c: jnp.argmax(f(apply_patch(a, p, r, c)), -1))
      hit = lambda p: _batched(lambda a, r, c: place(a, p, r, c), [xs, np.asarray(r),
                                                                 np.asarray(cc)], batch)
      success = float((hit(patch) == o.patch_target).mean())
      control = jax.random.uniform(jax.random.fold_in(key, 13), patch.shape)
      base = float((hit(control) == o.patch_target).mean())
      results['patch'] = {'target': o.patch_target, 'side': side,
                          'area_fraction': side * side / (shape[0] * shape[1]),
                          'train_images': len(pool), 'steps': o.patch_steps,
                          'test_images': int(keep.sum()), 'placements_per_image': 4,
                          'success_rate': success, 'random_patch_success_rate': base}
      patched = np.asarray(apply_patch(jnp.asarray(x[keep][:6]), patch, r[:6],
                                       cc[:6]))
      ptile = np.zeros_like(x[:1])
      ptile[0, :side, :side] = np.asarray(patch)
      preds = pred(patched)
      explain.image_grid(plt, [patched * 255.0, ptile * 255.0],
                         [f'patched, pred {preds[0]}', 'the patch'], f'{out}/patch.png',
                         col_labels=[''] + [f'pred {p}' for p in preds[1:]])
      results['seconds']['patch'] = round(time.time() - t_part, 1)

  if 'membership' in o.parts:
    t_part = time.time()
    refs = [checkpoints.load_run(r) for r in o.references]
    m, scores = privacy.membership(run, o.membership_examples, o.seed, refs, train_split())
    if not refs:
      notes['membership'] = ('calibrated attack skipped: pass reference runs trained on other '
                             'examples with --membership_reference_workdirs')
    results['membership'] = m
    fig, ax = plt.subplots(figsize=(4, 4))
    for name, (sin, sout) in scores.items():
      fpr, tpr = privacy.roc_curve(sin, sout)
      ax.plot(fpr, tpr, label=f'{name} (AUC {m[name]["auc"]:.3f})')
    ax.plot([1e-4, 1], [1e-4, 1], 'k:', lw=1)
    ax.set(xscale='log', yscale='log', xlim=(1e-3, 1), ylim=(1e-3, 1),
           xlabel='false positive rate', ylabel='true positive rate',
           title=f'membership: {m["num_members"]} train vs test')
    ax.legend(fontsize=7)
    common.save_figure(fig, f'{out}/membership.png')
    results['seconds']['membership'] = round(time.time() - t_part, 1)

  if 'reconstruction' in o.parts:
    if not image_model:
      notes['reconstruction'] = 'feature inversion is for 2-D images'
    else:
      t_part = time.time()
      convs = explain.conv_layers(net, variables, shape)
      layers = [convs[0][0], convs[-1][0]]
      xi = jnp.asarray(images[:4], jnp.float32)
      rec_rows, grid = [], [images[:4]]
      for name in layers:
        rec = explain.invert(net, variables, xi, name, seed=o.seed)
        p, q = explain.psnr_ssim(rec, xi)
        rec_rows.append({'layer': name, 'psnr': float(p.mean()), 'ssim': float(q.mean())})
        grid.append(np.asarray(rec))
      results['reconstruction'] = {'images': 4, 'layers': rec_rows}
      explain.image_grid(plt, grid, ['originals'] + [f'from {r["layer"]}: {r["psnr"]:.1f} dB'
                                                     for r in rec_rows],
                         f'{out}/reconstruction.png')
      results['seconds']['reconstruction'] = round(time.time() - t_part, 1)

  for w in warnings:
    logging.warning('attack: %s', w)
  columns = ['attack', 'norm', 'eps', 'robust_accuracy', 'attack_success_rate',
             'mean_perturbation_norm', 'queries', 'seconds']
  common.write_outputs(out, results, rows, f'Robustness of {workdir} (clean accuracy '
                       f'{100 * results["clean_accuracy"]:.2f}% on {n} test examples)', columns)
  return results


def examples_png(plt, x, adversarials, worst, clean_ok, y, pred, eps_list, path: str) -> None:
  """Original, perturbation (magnified to the full range), adversarial, with predictions, for
  the first few examples PGD broke at the middle eps."""
  from analysis import common
  eps = eps_list[len(eps_list) // 2]
  xa = adversarials.get(eps)
  if xa is None:
    return
  broken = np.flatnonzero(clean_ok & (pred(xa) != y))[:6]
  if not len(broken):
    return
  p_adv = pred(xa[broken])
  fig, axes = plt.subplots(3, len(broken), figsize=(1.6 * len(broken), 5), squeeze=False)
  for j, i in enumerate(broken):
    d = xa[i] - x[i]
    d = 0.5 + d / (2 * (np.abs(d).max() + 1e-12))
    for r, (img, title) in enumerate(((x[i], f'label {y[i]}'), (d, 'perturbation'),
                                      (xa[i], f'pred {p_adv[j]}'))):
      ax = axes[r, j]
      ax.imshow(img[..., 0] if img.shape[-1] == 1 else np.clip(img, 0, 1),
                cmap='gray' if img.shape[-1] == 1 else None, vmin=0, vmax=1)
      ax.set_title(title, fontsize=7)
      ax.axis('off')
  fig.suptitle(f'PGD at eps {eps:.3g}', fontsize=8)
  fig.tight_layout()
  common.save_figure(fig, path)


def curve_png(plt, rows, clean: float, path: str) -> None:
  """Robust accuracy against eps, one line per attack."""
  from analysis import common
  fig, ax = plt.subplots(figsize=(5, 3.5))
  for name in dict.fromkeys(r['attack'] for r in rows):
    pts = sorted((r['eps'], r['robust_accuracy']) for r in rows if r['attack'] == name)
    ax.plot([0] + [p[0] for p in pts], [100 * clean] + [100 * p[1] for p in pts], 'o-',
            label=name, ms=3)
  ax.set(xlabel='eps', ylabel='accuracy (%)', ylim=(0, 100))
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  common.save_figure(fig, path)
