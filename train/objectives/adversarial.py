"""Adversarial training as a wrapper of another objective: PGD (Madry et al. 2018) trains on the
adversarial batch only; TRADES (Zhang et al. 2019) on the clean batch plus
beta * KL(clean || adversarial), the two forward passes updating the batch statistics in turn.
The attack sees the augmented image in [0, 1] and the current weights in inference mode."""

from __future__ import annotations

import jax
import jax.numpy as jnp

import attacks
from errors import UserError
from store import runs

METHODS = ('none', 'pgd', 'trades')


def robust_eps(adv) -> float:
  """The eps of the robust evaluation: `eval_eps`, else the training eps when training
  adversarially, else 0 (off)."""
  return adv.eval_eps or (adv.eps if adv.method != 'none' else 0.0)


def check(adv) -> None:
  if adv.method not in METHODS:
    raise UserError(f'unknown adversarial.method {adv.method!r}; use {" | ".join(METHODS)}')
  if adv.method != 'none' and adv.eps <= 0:
    raise UserError(f'adversarial.eps must be positive for {adv.method} training, got {adv.eps}')
  attacks.check(adv.eps, adv.norm, steps=adv.steps)
  attacks.check(adv.eval_eps, adv.norm, steps=adv.eval_steps)
  if adv.step_size < 0 or adv.trades_beta < 0 or adv.eval_examples < 1:
    raise UserError('adversarial.step_size and trades_beta must be >= 0 and eval_examples '
                    f'positive, got {adv.step_size}, {adv.trades_beta}, {adv.eval_examples}')


class Adversarial:
  """`inner` trained on PGD examples (`pgd`) or with the TRADES term (`trades`)."""

  def __init__(self, adv, inner):
    self.adv, self.inner = adv, inner
    self.step_size = attacks.pgd_step_size(adv.eps, adv.steps, adv.step_size)

  def step_args(self, mesh) -> tuple:
    return self.inner.step_args(mesh)

  def prepare(self, view, x, y):
    adv = self.adv
    f = runs.Net(view.model, view.preprocess).logits01(
        {'params': view.params, 'batch_stats': view.batch_stats})
    x01 = jnp.clip(view.preprocess.to_pixels(x) / 255.0, 0.0, 1.0)
    key = jax.random.fold_in(view.key, 1)
    if adv.method == 'pgd':
      x01 = attacks.pgd_once(f, x01, y, adv.eps, adv.norm, adv.steps, self.step_size, key)
    else:
      x01 = attacks.trades_inputs(f, x01, adv.eps, adv.norm, adv.steps, self.step_size, key)
    x_adv = jax.lax.stop_gradient(view.preprocess(x01 * 255.0))
    return x_adv, self.inner.prepare(view, x_adv if adv.method == 'pgd' else x, y)

  def loss(self, forward, params, batch_stats, x, y, aux):
    x_adv, inner_aux = aux
    if self.adv.method == 'pgd':
      return self.inner.loss(forward, params, batch_stats, x_adv, y, inner_aux)
    value, (logits, batch_stats) = self.inner.loss(forward, params, batch_stats, x, y, inner_aux)
    adv_logits, batch_stats = forward(params, batch_stats, x_adv)
    value = value + self.adv.trades_beta * attacks.kl_divergence(
        jax.nn.softmax(logits), adv_logits).mean()
    return value, (logits, batch_stats)

  def model_input(self, x, aux):
    return aux[0] if self.adv.method == 'pgd' else self.inner.model_input(x, aux[1])

  def record(self) -> dict:
    return self.inner.record()
