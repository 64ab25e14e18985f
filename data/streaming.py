"""The streaming data path: examples read, decoded and batched on the host by grain, one shard per
process, assembled into global arrays for the jitted steps.

It plugs into the steps through the same two calls as the in-memory sources (data/sources.py):
`step_inputs(i)` returns the global batch (a `jax.Array` sharded over 'data', built with
`jax.make_array_from_process_local_data` from this process's rows only) and `batch` passes it
through. The fixed-size augmentations then run on the device exactly as for in-memory data;
only the random-resized crop, which maps images of any size to the run's size, runs here.

Order and randomness are functions of the global position, never of the process count:
epoch e visits `permutation(rng(seed, e))`, global batch b is its slice [bB, (b+1)B), process
p reads rows [p B/P, (p+1) B/P) of it, and example k's crop draws from rng(seed, e, k). So a run
on P processes sees the batches of a run on one, and resume is exact: the grain iterator's
state is saved with every orbax checkpoint.
"""

from __future__ import annotations

import functools
import os
import signal
import time

import grain
import jax
import numpy as np
from absl import flags
from jax.sharding import NamedSharding, PartitionSpec as P

import lifecycle
from data import augment, datasets
from errors import UserError


class _TrainOrder:
  """grain source of this process's training reads: local read i -> (example, epoch, position)."""

  def __init__(self, n: int, batch: int, steps: int, seed: int):
    self.n, self.batch, self.steps, self.seed = n, batch, steps, seed
    self.local = batch // jax.process_count()
    self.offset = jax.process_index() * self.local
    self.steps_per_epoch = n // batch

  def __len__(self) -> int:
    return self.steps * self.local

  @functools.lru_cache(maxsize=2)
  def permutation(self, epoch: int) -> np.ndarray:
    return np.random.default_rng([self.seed, epoch]).permutation(self.n)

  def __getitem__(self, i: int) -> tuple[int, int, int]:
    step, j = divmod(int(i), self.local)
    epoch, b = divmod(step, self.steps_per_epoch)
    pos = b * self.batch + self.offset + j
    return int(self.permutation(epoch)[pos]), epoch, pos

  def process_indices(self, epoch: int) -> np.ndarray:
    """The examples this process reads in `epoch` (each process a disjoint share)."""
    rows = np.arange(self.steps_per_epoch)[:, None] * self.batch + self.offset + np.arange(self.local)
    return self.permutation(epoch)[rows.ravel()]


class _EvalOrder:
  """grain source of this process's eval reads: padded global batches, with a validity mask."""

  def __init__(self, n: int, batch: int):
    self.n, self.batch = n, batch
    self.local = batch // jax.process_count()
    self.offset = jax.process_index() * self.local
    self.num_batches = -(-n // batch)

  def __len__(self) -> int:
    return self.num_batches * self.local

  def __getitem__(self, i: int) -> tuple[int, bool]:
    b, j = divmod(int(i), self.local)
    pos = b * self.batch + self.offset + j
    return min(pos, self.n - 1), pos < self.n


def _stack(items):
  return tuple(np.stack([it[f] for it in items]) for f in range(len(items[0])))


def _end_with(parent: int, worker_index: int, worker_count: int) -> None:
  """A grain worker ends when the training process does, however that dies (kill -9 too):
  otherwise it would live on, holding its memory (and multiprocessing's resource tracker)."""
  del worker_index, worker_count
  lifecycle.die_with_parent(parent, signal.SIGKILL)


def _iter_dataset(dataset: grain.MapDataset, local: int, ds_cfg) -> grain.IterDataset:
  """Reads ahead `prefetch_batches` batches: with threads over examples (PIL releases the GIL
  while decoding), or with `num_workers` processes over whole batches (a worker takes every
  num_workers-th batch, so the batches are the same either way)."""
  ahead = max(1, ds_cfg.prefetch_batches)
  if ds_cfg.num_workers > 0:
    if not flags.FLAGS.is_parsed():  # grain's workers read absl flags; a Python caller has none
      flags.FLAGS.mark_as_parsed()
    ds = dataset.batch(local, batch_fn=_stack).to_iter_dataset(
        grain.ReadOptions(num_threads=1, prefetch_buffer_size=ahead))
    return ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=int(ds_cfg.num_workers)),
                          worker_init_fn=functools.partial(_end_with, os.getpid()))
  # More threads than cores only contend for the GIL (16 threads read 64x64 PNGs at half the
  # rate of 2 on a 2-core machine, bench/pipeline.py); worker processes scale past that.
  threads = max(1, min(8, os.cpu_count() or 1, local))
  ds = dataset.to_iter_dataset(grain.ReadOptions(num_threads=threads,
                                                 prefetch_buffer_size=ahead * local))
  return ds.batch(local, batch_fn=_stack)


class StreamingTrain:
  """Training batches streamed by grain (see module docstring)."""
  host_ops = augment.HOST_OPS  # applied while reading; the step runs the other ops

  def __init__(self, examples: datasets.Examples, ds_cfg, batch_size: int, steps: int, mesh, seed: int):
    if batch_size % jax.process_count():
      raise UserError(f'batch_size {batch_size} is not divisible by the {jax.process_count()} '
                      'processes')
    self.examples, self.batch_size = examples, batch_size
    self.num_examples = len(examples)
    self.order = _TrainOrder(self.num_examples, batch_size, steps, seed)
    self.steps_per_epoch = self.order.steps_per_epoch
    self._seed = seed

    def load(read):
      k, epoch, pos = read
      return examples.load(k, np.random.default_rng([seed, epoch, pos, 1]))

    self._dataset = grain.MapDataset.source(self.order).map(load)
    self._cfg = ds_cfg
    self._shard = NamedSharding(mesh, P('data'))
    self.iterator = None
    self._next = 0
    self.seek(0)
    self.wait_s = 0.0  # host time spent blocked on the pipeline

  def seek(self, step: int) -> None:
    """A fresh iterator whose next batch is that of `step`."""
    start = step * self.order.local
    self.close()
    self.iterator = iter(_iter_dataset(self._dataset[start:], self.order.local, self._cfg))
    self._next = step

  def close(self) -> None:
    """Stops the reader threads or worker processes (and frees their shared memory)."""
    if self.iterator is not None:
      self.iterator.close()

  def restored(self, step: int) -> None:
    """After `iterator`'s state was restored from the checkpoint of `step`."""
    self._next = step

  def step_inputs(self, step: int):
    if step != self._next:
      self.seek(step)
    t = time.perf_counter()
    # Copies out of the workers' shared memory, so each block is freed as soon as it is used.
    x, y = (np.array(a) for a in next(self.iterator))
    self.wait_s += time.perf_counter() - t
    self._next = step + 1
    return (jax.make_array_from_process_local_data(self._shard, x),
            jax.make_array_from_process_local_data(self._shard, y))

  def batch(self, inputs, step):
    return inputs

  def rate(self, batches: int, warmup: int = 12) -> float:
    """This process's images/s of the pipeline alone (read, decode, host crop, batch), after
    `warmup` batches (start-up, and what the buffers filled meanwhile); then back to step 0."""
    for _ in range(warmup):
      next(self.iterator)
    t = time.perf_counter()
    for _ in range(batches):
      next(self.iterator)
    rate = batches * self.order.local / (time.perf_counter() - t)
    self.seek(0)
    return rate


class StreamingEval:
  """A test split streamed in padded global batches: every example exactly once, all processes
  running the same number of batches (the padding is masked out of the metrics)."""

  def __init__(self, examples: datasets.Examples, ds_cfg, batch_size: int, mesh):
    n_dev = mesh.size
    self.num_examples = len(examples)
    self.batch_size = -(-min(batch_size, self.num_examples) // n_dev) * n_dev
    self.order = _EvalOrder(self.num_examples, self.batch_size)
    self.num_batches = self.order.num_batches

    def load(read):
      k, valid = read
      image, label = examples.load(k)
      return image, np.int32(label), np.bool_(valid)

    self._dataset = grain.MapDataset.source(self.order).map(load)
    self._cfg = ds_cfg
    self._shard = NamedSharding(mesh, P('data'))
    self._it = None

  def step_inputs(self, i: int):
    if i == 0 or self._it is None:
      self.close()
      self._it = iter(_iter_dataset(self._dataset, self.order.local, self._cfg))
    x, y, mask = (np.array(a) for a in next(self._it))
    if i == self.num_batches - 1:  # the pass is complete: stop its readers
      self.close()
    return tuple(jax.make_array_from_process_local_data(self._shard, a) for a in (x, y, mask))

  def close(self) -> None:
    if self._it is not None:
      self._it.close()
      self._it = None

  def batch(self, inputs):
    return inputs
