"""Data sources: where the train and eval steps get their batches.

The steps see a source through two calls, so a source plugs in without touching the step's
logic:

  inputs = source.step_inputs(i)   host side, before step i: whatever the step receives
  batch = source.batch(inputs, i)  inside the jitted step: the batch of step i

The in-memory sources below keep a whole split on every device as uint8 and gather each batch
inside the step (no host work between steps: what makes CPU runs fast). The streaming sources
(data/streaming.py) return the host-prepared global batch from `step_inputs` and pass it
through in `batch`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from data.datasets import Split


def _replicate(array: np.ndarray, mesh) -> jax.Array:
  """Host array (identical in every process) -> global array with a full copy per device."""
  return jax.make_array_from_callback(array.shape, NamedSharding(mesh, P()), lambda i: array[i])


class InMemoryTrain:
  """The training split on every device. Each epoch gets a permutation from
  `fold_in(key, epoch)`, so any step's batch is known without replaying the ones before it
  (resume is exact) and does not depend on the number of devices. Like the streaming source it
  has `iterator` (None: no reader position to checkpoint), `wait_s` and `close()`."""
  iterator = None
  wait_s = 0.0

  def close(self) -> None:
    pass

  def __init__(self, split: Split, batch_size: int, mesh, key: jax.Array):
    self.num_examples = int(split.labels.shape[0])
    self.batch_size = batch_size
    self.steps_per_epoch = self.num_examples // batch_size
    self.images, self.labels = _replicate(split.images, mesh), _replicate(split.labels, mesh)
    self._shard = NamedSharding(mesh, P('data'))
    n = self.num_examples
    self._permute = jax.jit(lambda e: jax.random.permutation(jax.random.fold_in(key, e), n),
                            out_shardings=NamedSharding(mesh, P()))
    self._epoch, self._perm = None, None

  def step_inputs(self, step: int):
    epoch = step // self.steps_per_epoch
    if epoch != self._epoch:
      self._epoch, self._perm = epoch, self._permute(epoch)
    return self.images, self.labels, self._perm

  def batch(self, inputs, step: jax.Array) -> tuple[jax.Array, jax.Array]:
    images, labels, perm = inputs
    start = (step % self.steps_per_epoch) * self.batch_size
    idx = jax.lax.dynamic_slice(perm, (start,), (self.batch_size,))
    idx = jax.lax.with_sharding_constraint(idx, self._shard)
    return images[idx], labels[idx]


class InMemoryEval:
  """A test split on every device, in batches that cover every example exactly once: the last
  batch is padded (with the last example) and its padding masked out of the metrics."""

  def __init__(self, split: Split, batch_size: int, mesh):
    n_dev = mesh.size
    self.num_examples = int(split.labels.shape[0])
    # A multiple of the device count, so every device gets an equal share.
    self.batch_size = -(-min(batch_size, self.num_examples) // n_dev) * n_dev
    self.num_batches = -(-self.num_examples // self.batch_size)
    self.images, self.labels = _replicate(split.images, mesh), _replicate(split.labels, mesh)
    self._shard = NamedSharding(mesh, P('data'))

  def step_inputs(self, i: int):
    return self.images, self.labels, jnp.int32(i * self.batch_size)

  def batch(self, inputs) -> tuple[jax.Array, jax.Array, jax.Array]:
    images, labels, start = inputs
    n = labels.shape[0]
    idx = start + jnp.arange(self.batch_size)
    mask = idx < n
    idx = jax.lax.with_sharding_constraint(jnp.minimum(idx, n - 1), self._shard)
    return images[idx], labels[idx], mask


def random_split(shape, num_classes: int, n: int, seed: int = 0, label_shape=()) -> Split:
  """Uniform random uint8 images and labels (the benchmark's data: only shapes matter);
  `label_shape` (H, W) gives uint8 masks instead of one int32 label per image."""
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
  labels = rng.integers(0, num_classes, (n, *label_shape))
  return Split(images, labels.astype(np.uint8 if label_shape else np.int32))
