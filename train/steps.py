"""The jitted pieces of a run: the train state, the train step and the eval step.

* Randomness of step s is `fold_in(seed, s)`, so a resumed run sees exactly the randomness of an
  uninterrupted one, and the result does not depend on the number of devices.
* A non-finite loss or gradient freezes the state inside the step and records the step number;
  the host checks it at every log/eval/checkpoint point, so no bad state is ever saved and no
  per-step host sync is needed.
* Batches come from a data source (data/sources.py) through `step_inputs` / `batch`, so the
  step does not know whether its batch was gathered on device or streamed from the host.
"""


from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from clu import metrics as clu_metrics

from analysis import attack
from compress import distill
from data import augment as augment_lib
from kernels import convolutions
from train import distributed

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
ADVERSARIAL = ('none', 'pgd', 'trades')


def robust_eps(adv) -> float:
  """The eps of the robust evaluation: `eval_eps`, else the training eps when training
  adversarially, else 0 (off)."""
  return adv.eval_eps or (adv.eps if adv.method != 'none' else 0.0)


def pixel_logits(model, variables, preprocess: augment_lib.Preprocess):
  """x in [0, 1] -> inference logits: the function the attacks see (eval mode, so an attack
  moves no batch statistics and its gradient does not couple the examples of a batch)."""
  return lambda x: model.apply(variables, preprocess(x * 255.0), train=False)


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  nonfinite_step: jax.Array  # -1 while every loss and gradient has been finite
  ema_params: Any  # exponential moving average of params ({} when config.ema_decay == 0)

  def inference_variables(self) -> dict:
    """What evaluation applies: the EMA weights when the run keeps them, else the weights."""
    return {'params': self.ema_params if self.ema_params else self.params,
            'batch_stats': self.batch_stats}


@flax.struct.dataclass
class Metrics(clu_metrics.Collection):
  """Mean loss and accuracy, of training intervals and of evaluations alike."""
  loss: clu_metrics.Average.from_output('loss')
  accuracy: clu_metrics.Accuracy


def create_train_state(model, tx, example_shape, key: jax.Array, sharding,
                       ema: bool = False, variables: dict | None = None) -> TrainState:
  """Initial state, created directly with the given (replicated) sharding: from the model's
  initializers, or from `variables` ({'params', 'batch_stats'}, e.g. another run's)."""

  def init(given):
    if given is None:
      dummy = jnp.zeros((1, *example_shape), jnp.float32)
      given = model.init({'params': key, 'dropout': key}, dummy, train=False)
    params = given['params']
    return TrainState(step=jnp.int32(0), params=params,
                      batch_stats=given.get('batch_stats', {}),
                      opt_state=tx.init(params), nonfinite_step=jnp.int32(-1),
                      ema_params=params if ema else {})

  if variables is not None:  # e.g. a checkpoint loaded on one device: placed like the state
    variables = jax.device_put(variables, sharding)
  return convolutions.run_once(init, variables, out_shardings=sharding)


def run_keys(seed: int, sharding) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(init key, data-order key, step key data) of a run. The step key travels as raw uint32
  data placed once on the devices, so the step takes it as an argument (runs differing only
  in seed share one executable) without a host-to-device copy per step."""
  init_key, data_key, step_key = jax.random.split(jax.random.key(seed), 3)
  return init_key, data_key, distributed.put_replicated(
      np.asarray(jax.random.key_data(step_key)), sharding)


def empty_metrics(sharding) -> Metrics:
  """Zeroed metrics placed like the step's outputs, so the step compiles only once."""
  return jax.device_put(Metrics.empty(), sharding)


def make_step_core(model, tx, config, source, preprocess: augment_lib.Preprocess,
                   teacher=None):
  """The traced body of a train step, `(state, inputs, key_data, *extra) -> (loss, logits,
  labels, new batch_stats, grads, updates, new opt_state, (model input, dropout key))`: shared
  by the train step and the diagnostics (train/diagnostics.py), which so see exactly the
  step's gradient, update and forward pass."""
  ops = augment_lib.pipeline(config.augment, skip=getattr(source, 'host_ops', ()))
  adv = config.adversarial
  step_size = attack.pgd_step_size(adv.eps, adv.steps, adv.step_size)

  def core(state: TrainState, inputs, key_data, *extra):
    key = jax.random.fold_in(jax.random.wrap_key_data(key_data), state.step)
    k_aug, k_drop = jax.random.split(key)
    images, y = source.batch(inputs, state.step)
    x = augment_lib.apply(ops, k_aug, images, preprocess)
    x_adv = None
    if adv.method != 'none':
      # The attack sees the augmented image in [0, 1] and the current weights in eval mode.
      f = pixel_logits(model, {'params': state.params, 'batch_stats': state.batch_stats},
                       preprocess)
      x01 = jnp.clip(preprocess.to_pixels(x) / 255.0, 0.0, 1.0)
      k_adv = jax.random.fold_in(key, 1)
      if adv.method == 'pgd':
        x01 = attack.pgd_once(f, x01, y, adv.eps, adv.norm, adv.steps, step_size, k_adv)
      else:
        x01 = attack.trades_inputs(f, x01, adv.eps, adv.norm, adv.steps, step_size, k_adv)
      x_adv = jax.lax.stop_gradient(preprocess(x01 * 255.0))
    teacher_logits = None
    if teacher is not None:  # the teacher sees the student's augmented image, in its own units
      teacher_logits = jax.lax.stop_gradient(
          teacher.logits(extra[0], preprocess.to_pixels(x_adv if adv.method == 'pgd' else x)))

    def forward(params, batch_stats, inputs):
      logits, new_vars = model.apply({'params': params, 'batch_stats': batch_stats}, inputs,
                                     train=True, mutable=['batch_stats'], rngs={'dropout': k_drop})
      return logits, new_vars.get('batch_stats', {})

    def loss_fn(params):
      # pgd trains on the adversarial batch only (Madry et al.); trades on the clean batch plus
      # beta * KL(clean || adversarial), the two forward passes updating the statistics in turn.
      logits, batch_stats = forward(params, state.batch_stats,
                                    x_adv if adv.method == 'pgd' else x)
      if teacher_logits is not None:
        d = config.distill
        loss = distill.loss(logits, teacher_logits, y, d.temperature, d.weight,
                            config.label_smoothing).mean()
      else:
        targets = optax.smooth_labels(jax.nn.one_hot(y, logits.shape[-1]),
                                      config.label_smoothing)
        loss = optax.softmax_cross_entropy(logits, targets).mean()
      if adv.method == 'trades':
        adv_logits, batch_stats = forward(params, batch_stats, x_adv)
        loss = loss + adv.trades_beta * attack.kl_divergence(
            jax.nn.softmax(logits), adv_logits).mean()
      return loss, (logits, batch_stats)

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    return (loss, logits, y, batch_stats, grads, updates, opt_state,
            (x_adv if adv.method == 'pgd' else x, k_drop))

  return core


def make_train_step(model, tx, config, source, preprocess: augment_lib.Preprocess, mesh,
                    compiler_options: dict | None = None, teacher=None, keep_stats=None):
  """The jitted step `(state, metrics, inputs, key_data, *extra) -> (state, metrics)`, where
  `inputs` is `source.step_inputs(step)` and `extra` is `(teacher variables,)` when distilling
  from `teacher` (compress/distill.py), else empty; `keep_stats` (a tree of bools like the batch
  statistics) marks running statistics the step leaves unchanged. Its key is an argument, so
  runs that differ only in seed share one compiled (and persistently cached) executable."""
  rep = distributed.replicated(mesh)
  core = make_step_core(model, tx, config, source, preprocess, teacher)

  def step(state: TrainState, metrics: Metrics, inputs, key_data, *extra):
    loss, logits, y, batch_stats, grads, updates, opt_state, _ = core(state, inputs, key_data,
                                                                      *extra)
    params = optax.apply_updates(state.params, updates)
    if keep_stats is not None:  # frozen layers keep their running statistics
      batch_stats = jax.tree_util.tree_map(lambda k, new, old: old if k else new, keep_stats,
                                           batch_stats, state.batch_stats)
    ok = jnp.isfinite(loss) & jnp.isfinite(optax.tree.norm(grads))
    keep = lambda new, old: jax.tree_util.tree_map(lambda a, b: jnp.where(ok, a, b), new, old)
    ema = config.ema_decay
    new_state = state.replace(
        step=state.step + 1,
        params=keep(params, state.params),
        ema_params=keep(jax.tree_util.tree_map(lambda e, p: ema * e + (1 - ema) * p,
                                               state.ema_params, params), state.ema_params)
        if ema else state.ema_params,
        batch_stats=keep(batch_stats, state.batch_stats),
        opt_state=keep(opt_state, state.opt_state),
        nonfinite_step=jnp.where((state.nonfinite_step < 0) & ~ok, state.step,
                                 state.nonfinite_step))
    new_metrics = metrics.merge(Metrics.single_from_model_output(
        loss=loss, logits=logits, labels=y))
    return new_state, new_metrics

  return jax.jit(step, donate_argnums=(0, 1), out_shardings=(rep, rep),
                 compiler_options=compiler_options)


def make_eval_step(model, source, preprocess: augment_lib.Preprocess, mesh,
                   flip_tta: bool = False, compiler_options: dict | None = None):
  """The jitted `(variables, inputs) -> Metrics` of one eval batch (`source.step_inputs(i)`)."""
  rep = distributed.replicated(mesh)

  def step(variables, inputs):
    images, y, mask = source.batch(inputs)
    x = preprocess(images)
    logits = model.apply(variables, x, train=False)
    if flip_tta:  # average the predictions of the image and its mirror
      logits = (logits + model.apply(variables, jnp.flip(x, axis=-2), train=False)) / 2
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    return Metrics.single_from_model_output(loss=loss, logits=logits, labels=y, mask=mask)

  return jax.jit(step, out_shardings=rep, compiler_options=compiler_options)


def make_robust_eval_step(model, source, preprocess: augment_lib.Preprocess, mesh, adv,
                          compiler_options: dict | None = None):
  """The jitted `(variables, inputs) -> Metrics` on PGD examples (eps `robust_eps(adv)`,
  `adv.eval_steps` steps, one random start from a fixed key, so every evaluation of a run
  attacks alike)."""
  rep = distributed.replicated(mesh)
  eps = robust_eps(adv)
  step_size = attack.pgd_step_size(eps, adv.eval_steps, 0.0)

  def step(variables, inputs):
    images, y, mask = source.batch(inputs)
    f = pixel_logits(model, variables, preprocess)
    x = images.astype(jnp.float32) / 255.0
    x_adv = attack.pgd_once(f, x, y, eps, adv.norm, adv.eval_steps, step_size,
                            jax.random.key(0))
    logits = f(x_adv)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    return Metrics.single_from_model_output(loss=loss, logits=logits, labels=y, mask=mask)

  return jax.jit(step, out_shardings=rep, compiler_options=compiler_options)


def evaluate(eval_step, variables: dict, source) -> dict[str, float]:
  """Loss and accuracy over every example of the eval source, exactly once."""
  total = None
  for i in range(source.num_batches):
    m = eval_step(variables, source.step_inputs(i))
    total = m if total is None else total.merge(m)
  return {k: float(v) for k, v in total.compute().items()}
