"""Adversarial examples as batched, jittable JAX functions: FGSM, PGD (L-inf and L2; random
start, restarts, targeted, cross-entropy or margin loss), APGD-CE and APGD-T (Croce & Hein
2020), the Square attack (Andriushchenko et al. 2020, score-based, L-inf), fooling images
(Nguyen et al. 2015), adversarial patches (Brown et al. 2017), and the inner maximizations of
adversarial training (Madry et al. 2018; TRADES, Zhang et al. 2019).

Attacks work on images in [0, 1] with the run's normalization inside the model (the convention
of AutoAttack and RobustBench, so eps = 8/255 means what it means there): `store.runs.Net.logits01`
turns a trained network (pixels in [0, 255]) into such a function. Every function
returns adversarial images inside the eps-ball and inside [0, 1].
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
import optax

from errors import UserError

NORMS = ('linf', 'l2')
LOSSES = ('ce', 'margin', 'dlr')


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
