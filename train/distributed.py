"""Process-group setup and the device mesh.

Data parallelism uses `jax.jit` with `NamedSharding` over a 1-D mesh named 'data' that spans
every device of every process (not `pmap`, which JAX keeps in maintenance mode and now
implements on top of jit + shard_map).
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def _slurm_multi_task() -> bool:
  return 'SLURM_JOB_ID' in os.environ and int(os.environ.get('SLURM_NTASKS', '1')) > 1


def _tpu_pod() -> bool:
  return len(os.environ.get('TPU_WORKER_HOSTNAMES', '').split(',')) > 1


def initialize(coordinator_address: str = '', num_processes: int = 0, process_id: int = -1) -> None:
  """Joins the process group when launched as several processes; a no-op for one process.

  Explicit coordinator flags win; otherwise SLURM (several tasks in one job step) and TPU pods
  are detected from their environment variables and JAX reads the details from there.
  """
  # CPU collectives across processes need gloo; harmless for GPU/TPU backends.
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  if coordinator_address:
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
  elif _slurm_multi_task() or _tpu_pod():
    jax.distributed.initialize()


def mesh() -> Mesh:
  # Auto axes: XLA's partitioner places the collectives (BatchNorm statistics and gradient
  # all-reduces over the global batch) from the input/output shardings.
  return jax.make_mesh((jax.device_count(),), ('data',),
                       axis_types=(jax.sharding.AxisType.Auto,))


def replicated(m: Mesh) -> NamedSharding:
  return NamedSharding(m, P())


def put_replicated(array, sharding: NamedSharding) -> jax.Array:
  """Host array (identical in every process) -> global array with a full copy per device."""
  return jax.make_array_from_callback(array.shape, sharding, lambda idx: array[idx])


def replicate_tree(tree, m: Mesh):
  """A pytree of host (or single-device) arrays -> global arrays copied to every device."""
  rep = replicated(m)
  return jax.tree_util.tree_map(lambda a: put_replicated(np.asarray(a), rep), tree)


def any_process(flag: bool) -> bool:
  """Whether `flag` is true on any process (a blocking all-gather: call it where the processes
  already wait for each other)."""
  if jax.process_count() == 1:
    return flag
  return bool(np.any(multihost_utils.process_allgather(np.array([flag]))))


def is_main_process() -> bool:
  return jax.process_index() == 0
