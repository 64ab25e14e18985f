"""Per-layer training diagnostics (`config.diagnostics`): every `every_steps` steps, for each
top-level layer of the model (models/summary.layer_order), on that step's batch and state:

  dead_fraction    channels whose output is exactly 0 at every example and position of the
                   batch (a ReLU on its negative side, a sigmoid underflowed): no gradient
                   reaches their weights. Leaky ReLU and ELU units never die by this
                   definition, which is their point. None for the classifier head
  activation_mean, activation_std   of the layer's output over the batch
  grad_norm        L2 norm of the layer's gradient (the step's own, before clipping)
  update_ratio     ||update|| / ||weights|| of the step's optimizer update

A separate jitted function computes them from the train step's own traced body
(steps.make_step_core) on the same inputs and key, before the step runs, plus one forward pass
of the step's model input for the activations (adversarial training: the PGD batch; with a
teacher: the student's pass only); it changes nothing,
so the training trajectory is bitwise the same with diagnostics on or off. Its outputs stay
on the device until the next log point, which waits for the steps anyway: no extra host sync.
The host writes them to TensorBoard (scalars `diagnostics/<stat>/<layer>`, histograms of a
sample of each layer's outputs), keeps them in the checkpoint's metadata (a resumed run
continues its series) and in results.json `diagnostics`, and plots W/diagnostics.png.
"""

from __future__ import annotations

import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from errors import UserError
from train import distributed

STATS = ('dead_fraction', 'activation_mean', 'activation_std', 'grad_norm', 'update_ratio')
HISTOGRAM_SAMPLES = 4096  # output values per layer sent to TensorBoard's histogram


def check(config) -> None:
  d = config.diagnostics
  if d.enabled and d.every_steps <= 0:
    raise UserError(f'diagnostics.every_steps must be a positive number of steps, got '
                    f'{d.every_steps}')


def dead_fraction(out: jax.Array) -> jax.Array:
  """Fraction of channels (last axis) exactly 0 at every position of every example."""
  alive = (out != 0).reshape(-1, out.shape[-1]).any(axis=0)
  return 1.0 - alive.mean()


def capture(layers: list[str]):
  """An interceptor that stores the output of each named top-level module's __call__ in the
  returned dict (the last call, should a module be called twice)."""
  store: dict[str, jax.Array] = {}

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    path = context.module.path
    if (context.method_name == '__call__' and len(path) == 1 and path[0] in layers
        and isinstance(out, jax.Array)):
      store[path[0]] = out
    return out

  return store, interceptor


def make_diagnostics_step(core, model, layers: list[str], mesh,
                          compiler_options: dict | None = None):
  """The jitted `(state, inputs, key_data, *extra) -> {stat: {layer: value}, 'histograms':
  {layer: sample}}` of the train step whose body is `core`."""
  rep = distributed.replicated(mesh)
  head = layers[-1]

  def step(state, inputs, key_data, *extra):
    _, _, _, _, grads, updates, _, (x, k_drop) = core(state, inputs, key_data, *extra)
    # The step's forward pass again (same input, statistics and dropout key: the same
    # activations), outside the gradient's trace so that its intermediates can be returned.
    store, interceptor = capture(layers)
    with nn.intercept_methods(interceptor):
      model.apply({'params': state.params, 'batch_stats': state.batch_stats}, x, train=True,
                  mutable=['batch_stats'], rngs={'dropout': k_drop})
    out: dict[str, Any] = {s: {} for s in STATS}
    out['histograms'] = {}
    for name in layers:
      if name in store:
        a = store[name].astype(jnp.float32)
        out['activation_mean'][name] = a.mean()
        out['activation_std'][name] = a.std()
        if name != head:
          out['dead_fraction'][name] = dead_fraction(a)
        flat = a.reshape(-1)
        stride = max(1, flat.shape[0] // HISTOGRAM_SAMPLES)
        out['histograms'][name] = flat[::stride][:HISTOGRAM_SAMPLES]
      if name in grads:
        out['grad_norm'][name] = optax.tree.norm(grads[name])
        out['update_ratio'][name] = (optax.tree.norm(updates[name]) /
                                     jnp.maximum(optax.tree.norm(state.params[name]), 1e-12))
    return out

  return jax.jit(step, out_shardings=rep, compiler_options=compiler_options)


class Recorder:
  """Collects diagnostics on the device and moves them to the host at log points."""

  def __init__(self, every_steps: int, layers: list[str], history: dict | None):
    self.every_steps, self.layers = every_steps, layers
    self.pending: list[tuple[int, dict]] = []
    self.history = history or {'every_steps': every_steps, 'layers': layers, 'steps': [],
                               **{s: {} for s in STATS}}

  def due(self, step: int) -> bool:
    return step % self.every_steps == 0 and step not in self.history['steps']

  def add(self, step: int, out: dict) -> None:
    self.pending.append((step, out))

  def flush(self, writer) -> None:
    """Moves the pending values to the host (the caller has just waited for the steps)."""
    if not self.pending:
      return
    fetched = jax.device_get(self.pending)
    self.pending = []
    h = self.history
    for step, out in fetched:
      h['steps'].append(step)
      scalars = {}
      for s in STATS:
        for name in self.layers:
          value = out[s].get(name)
          h[s].setdefault(name, []).append(None if value is None else float(value))
          if value is not None:
            scalars[f'diagnostics/{s}/{name}'] = float(value)
      if writer:
        writer.write_scalars(step, scalars)
        writer.write_histograms(step, {f'activations/{n}': np.asarray(v)
                                       for n, v in out['histograms'].items()})


def plot(history: dict, path: str) -> str | None:
  """W/diagnostics.png: each statistic against steps, one line per layer."""
  if not history or not history.get('steps'):
    return None
  import matplotlib  # heavy (~1 s): loaded only when a figure is drawn
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt
  steps = history['steps']
  fig, axes = plt.subplots(1, len(STATS), figsize=(4.2 * len(STATS), 3.8))
  cmap = plt.get_cmap('viridis')
  layers = history['layers']
  for ax, s in zip(axes, STATS):
    for i, name in enumerate(layers):
      values = history[s].get(name, [])
      if values and any(v is not None for v in values):
        ys = [np.nan if v is None else v for v in values]
        ax.plot(steps, ys, color=cmap(i / max(1, len(layers) - 1)), linewidth=1,
                label=name if len(layers) <= 16 or i in (0, len(layers) - 1) else None)
    if s in ('grad_norm', 'update_ratio'):
      ax.set_yscale('log')
    ax.set_title(s.replace('_', ' '), fontsize=10)
    ax.set_xlabel('step')
    ax.grid(alpha=0.3)
  axes[-1].legend(fontsize=6, loc='best')
  fig.suptitle('per-layer diagnostics (colour: input side -> head)', fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def summary_line(history: dict) -> str:
  """The last diagnostics step in one line: mean dead fraction, first and last layer's
  gradient norm."""
  if not history or not history.get('steps'):
    return ''
  dead = [v[-1] for v in history['dead_fraction'].values() if v and v[-1] is not None]
  g = [history['grad_norm'][n][-1] for n in history['layers'] if history['grad_norm'].get(n)]
  return (f'diagnostics at step {history["steps"][-1]}: dead units '
          f'{100 * float(np.mean(dead)):.1f}% (mean over layers)' if dead else
          f'diagnostics at step {history["steps"][-1]}:') + (
              f', grad norm first layer {g[0]:.3g}, head {g[-1]:.3g}' if g else '')


def output_path(workdir: str) -> str:
  return os.path.join(workdir, 'diagnostics.png')
