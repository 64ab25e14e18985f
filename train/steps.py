"""The jitted pieces of a run: the train state, the train step and the evaluation loop (the eval
step itself is the task's, train/tasks.py).

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

from data import augment as augment_lib
from kernels import convolutions
from train import distributed, objectives

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


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


def make_step_core(model, tx, config, source, preprocess: augment_lib.Preprocess, objective,
                   task):
  """The traced body of a train step, `(state, inputs, key_data, *args) -> (loss, outputs,
  labels, new batch_stats, grads, updates, new opt_state, (model input, dropout key))`, where
  `args` are `objective.step_args(mesh)`: shared by the train step and the diagnostics
  (train/diagnostics.py), which so see exactly the step's gradient, update and forward pass.
  What is minimized is the objective's (train/objectives/); the step only augments, takes the
  gradient and updates."""
  augmenter = task.augmenter(config.augment, source)  # moves a mask with its image

  def core(state: TrainState, inputs, key_data, *args):
    key = jax.random.fold_in(jax.random.wrap_key_data(key_data), state.step)
    k_aug, k_drop = jax.random.split(key)
    images, y = source.batch(inputs, state.step)
    x, y = augmenter(k_aug, images, y, preprocess)
    aux = objective.prepare(objectives.View(model, preprocess, state.params, state.batch_stats,
                                            key, args), x, y)

    def forward(params, batch_stats, inputs):
      outputs, new_vars = model.apply({'params': params, 'batch_stats': batch_stats}, inputs,
                                      train=True, mutable=['batch_stats'], rngs={'dropout': k_drop})
      return outputs, new_vars.get('batch_stats', {})

    def loss_fn(params):
      return objective.loss(forward, params, state.batch_stats, x, y, aux)

    (loss, (outputs, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    return (loss, outputs, y, batch_stats, grads, updates, opt_state,
            (objective.model_input(x, aux), k_drop))

  return core


def make_train_step(model, tx, config, source, preprocess: augment_lib.Preprocess, mesh,
                    task, objective, compiler_options: dict | None = None, keep_stats=None):
  """The jitted step `(state, metrics, inputs, key_data, *args) -> (state, metrics)`, where
  `inputs` is `source.step_inputs(step)`, `args` the objective's step arguments and `metrics`
  the task's (`task.Metrics`); `keep_stats` (a tree of bools like the batch statistics) marks
  running statistics the step leaves unchanged. Its key is an argument, so runs that differ
  only in seed share one compiled (and persistently cached) executable."""
  rep = distributed.replicated(mesh)
  core = make_step_core(model, tx, config, source, preprocess, objective, task)

  def step(state: TrainState, metrics, inputs, key_data, *args):
    loss, outputs, y, batch_stats, grads, updates, opt_state, _ = core(state, inputs, key_data,
                                                                       *args)
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
    new_metrics = metrics.merge(task.train_metrics(loss, outputs, y))
    return new_state, new_metrics

  return jax.jit(step, donate_argnums=(0, 1), out_shardings=(rep, rep),
                 compiler_options=compiler_options)


def empty_metrics(metrics_cls, sharding):
  """Zeroed metrics placed like the step's outputs, so the step compiles only once."""
  return jax.device_put(metrics_cls.empty(), sharding)


def evaluate(eval_step, variables: dict, source) -> dict[str, float]:
  """The eval step's metrics (loss and accuracy for classification; segmentation adds its
  confusion matrix, an array) over every example of the eval source, exactly once."""
  total = None
  for i in range(source.num_batches):
    m = eval_step(variables, source.step_inputs(i))
    total = m if total is None else total.merge(m)
  return {k: float(v) if np.ndim(v) == 0 else np.asarray(v) for k, v in total.compute().items()}
