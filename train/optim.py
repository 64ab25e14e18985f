"""Optimizers and learning-rate schedules from the config, built with optax.

Schedules are defined in epochs in the config and converted to steps here.
"""

from __future__ import annotations

import jax
import optax

from errors import UserError
import util

OPTIMIZERS = ('sgd', 'adam', 'adamw', 'adadelta', 'rmsprop', 'rmsprop_tf')
SCHEDULES = ('constant', 'multistep', 'exponential', 'cosine', 'onecycle', 'linear')


def check(config) -> None:
  """Validates optimizer and schedule settings in Python (no tracing)."""
  o, s = config.optimizer, config.schedule
  if o.name not in OPTIMIZERS:
    raise UserError(f'unknown optimizer {o.name!r}; choose one of {", ".join(OPTIMIZERS)}')
  if s.name not in SCHEDULES:
    raise UserError(f'unknown schedule {s.name!r}; choose one of {", ".join(SCHEDULES)}')
  if o.learning_rate <= 0:
    raise UserError(f'optimizer.learning_rate must be positive, got {o.learning_rate}')
  if o.weight_decay < 0:
    raise UserError(f'optimizer.weight_decay must be >= 0, got {o.weight_decay}')
  if o.weight_decay_on not in ('all', 'kernels'):
    raise UserError(f"optimizer.weight_decay_on must be 'all' or 'kernels', got {o.weight_decay_on!r}")
  if s.warmup_epochs < 0:
    raise UserError(f'schedule.warmup_epochs must be >= 0, got {s.warmup_epochs}')
  if s.name == 'exponential' and (s.decay_epochs <= 0 or not 0 < s.gamma <= 1):
    raise UserError('the exponential schedule needs schedule.decay_epochs > 0 and 0 < gamma <= 1, '
                    f'got {s.decay_epochs} and {s.gamma}')
  _milestones(s.milestones)


def _milestones(text: str) -> list[float]:
  return util.parse_list('schedule.milestones', text, float, example='100,190,306')


def learning_rate_schedule(config, steps_per_epoch: int, total_steps: int) -> optax.Schedule:
  s, peak = config.schedule, config.optimizer.learning_rate
  warmup = min(int(round(s.warmup_epochs * steps_per_epoch)), max(0, total_steps - 1))
  rest = max(1, total_steps - warmup)
  end = peak * s.final_lr_fraction
  if s.name == 'constant':
    main = optax.constant_schedule(peak)
  elif s.name == 'multistep':
    bounds = {int(round(m * steps_per_epoch)) - warmup: s.gamma for m in _milestones(s.milestones)}
    main = optax.piecewise_constant_schedule(peak, {b: g for b, g in bounds.items() if b > 0})
  elif s.name == 'exponential':
    main = optax.exponential_decay(peak, max(1, int(round(s.decay_epochs * steps_per_epoch))),
                                   s.gamma, staircase=True)
  elif s.name == 'cosine':
    main = optax.cosine_decay_schedule(peak, rest, alpha=s.final_lr_fraction)
  else:  # onecycle / linear: linear decay to the end value after the (linear) warmup
    main = optax.linear_schedule(peak, end, rest)
  if warmup == 0:
    return main
  return optax.join_schedules([optax.linear_schedule(peak / max(warmup, 1), peak, warmup), main],
                              [warmup])


def _kernel_mask(params):
  """True for conv/dense kernels (ndim >= 2), False for biases and norm parameters."""
  return jax.tree_util.tree_map(lambda p: p.ndim >= 2, params)


def create(config, steps_per_epoch: int, total_steps: int, groups=None,
           multipliers: dict[str, float] | None = None) -> optax.GradientTransformation:
  """The run's optimizer. With `groups` (params -> a tree of group names) and `multipliers`
  ({group: factor}), each group's updates are scaled by its factor through optax's
  multi_transform, and a group of factor 0 is frozen (its updates are exactly zero, so its
  parameters never change). Gradient clipping sees the whole gradient, before the groups."""
  o = config.optimizer
  parts = [optax.clip_by_global_norm(o.grad_clip_norm)] if o.grad_clip_norm > 0 else []
  rule = lambda: _update_rule(config, steps_per_epoch, total_steps)
  if groups is None:  # one flat chain: the optimizer state of runs saved before groups existed
    return optax.chain(*parts, *rule())
  rules = {g: optax.set_to_zero() if m == 0 else
           optax.chain(*rule(), *([optax.scale(m)] if m != 1 else []))
           for g, m in multipliers.items()}
  return optax.chain(*parts, optax.multi_transform(rules, groups))


def _update_rule(config, steps_per_epoch: int, total_steps: int) -> list:
  """Weight decay and the optimizer's update with its learning-rate schedule, as chain parts."""
  o = config.optimizer
  lr = learning_rate_schedule(config, steps_per_epoch, total_steps)
  mask = None if o.weight_decay_on == 'all' else _kernel_mask
  if o.name == 'adamw':
    return [optax.adamw(lr, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay, mask=mask)]
  parts = []
  if o.weight_decay > 0:  # coupled L2, as PyTorch's weight_decay argument does
    parts.append(optax.add_decayed_weights(o.weight_decay, mask=mask))
  if o.name == 'sgd':
    parts.append(optax.sgd(lr, momentum=o.momentum or None, nesterov=o.nesterov))
  elif o.name == 'adam':
    parts.append(optax.adam(lr, b1=o.b1, b2=o.b2, eps=o.eps))
  elif o.name == 'adadelta':
    parts.append(optax.adadelta(lr, rho=o.rho, eps=o.eps))
  elif o.name == 'rmsprop':
    parts.append(optax.rmsprop(lr, decay=o.rho, eps=o.eps, momentum=o.momentum or None))
  elif o.name == 'rmsprop_tf':
    # TensorFlow's RMSProp (timm's rmsproptf): squared average starts at 1, eps inside the sqrt.
    parts.append(optax.rmsprop(lr, decay=o.rho, eps=o.eps, initial_scale=1.0, eps_in_sqrt=True,
                               momentum=o.momentum or None))
  return parts
