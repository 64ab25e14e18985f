"""Entry point: `python main.py --config=configs/default.py --workdir=runs/x [--mode=train]`.

Flags and dispatch only; everything else lives in importable, tested modules.
"""

import glob
import logging as py_logging
import os
import sys

# Memory allocator. glibc hands every buffer above 32 MB back to the OS when it is freed, so each
# train step page-faults its activation buffers in again; tcmalloc keeps them. Measured 20% more
# SimpleNet-310K img/s on a 2-core CPU (README "Speed"); TPU VMs preload it for the same reason.
# When Debian's libtcmalloc-minimal4 is installed (`make setup` installs it) the process re-executes
# itself once with it preloaded; CNN_LAB_MALLOC=system keeps glibc's malloc. It also runs with
# TCMALLOC_RELEASE_RATE=0: by default tcmalloc hands freed spans back to the OS little by little
# and the next step faults them in again (up to ~30k page faults a step); measured 7-16% more
# SimpleNet-310K img/s without it (README "Speed", change 8). A value in the environment wins.
TCMALLOC = next(iter(sorted(glob.glob('/usr/lib/*/libtcmalloc_minimal.so.4'))), None)
if (__name__ == '__main__' and TCMALLOC and os.environ.get('CNN_LAB_MALLOC') != 'system'
    and 'tcmalloc' not in os.environ.get('LD_PRELOAD', '')):
  os.environ['LD_PRELOAD'] = ':'.join(filter(None, [TCMALLOC, os.environ.get('LD_PRELOAD')]))
  os.environ.setdefault('TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD', str(1 << 40))  # no stderr notes
  os.environ.setdefault('TCMALLOC_RELEASE_RATE', '0')
  os.execv(sys.executable, sys.orig_argv)

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # TensorFlow (TFDS, TensorBoard) C++ chatter
# XLA's CPU backend: YNNPACK for matmuls, reductions and elementwise fusions, Eigen for
# convolutions. Measured on SimpleNet train steps (README "Speed"): Eigen's convolutions 10-40%
# faster than YNNPACK's; YNNPACK's reductions 4-7x faster than XLA's own loops (the BatchNorm
# statistics and their gradients), ~1.5x the whole step. Only the CPU backend reads it; a value
# already in XLA_FLAGS wins.
YNN_FUSION_FLAG = ('--xla_cpu_experimental_ynn_fusion_type='
                   'LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_REDUCE,LIBRARY_FUSION_TYPE_ELTWISE')
if 'xla_cpu_experimental_ynn_fusion_type' not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' ' + YNN_FUSION_FLAG).strip()

from absl import app, flags, logging
from ml_collections import config_flags

from errors import UserError

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Config file, optionally with :key=value,... '
                                'arguments.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, TensorBoard logs and results.')
flags.DEFINE_enum('mode', 'train', ['train', 'sweep', 'report', 'summary', 'benchmark'], 'What to do.')
flags.DEFINE_string('compilation_cache_dir', os.path.expanduser('~/.cache/cnn_lab/jax'),
                    'Persistent XLA compilation cache, so repeated runs and sweep trials skip '
                    'recompiling ("" disables it).')
flags.DEFINE_integer('benchmark_steps', 30, '--mode=benchmark: timed train steps.')
flags.DEFINE_string('coordinator_address', '', 'Multi-process: host:port of process 0 '
                    '(SLURM and TPU pods are detected without it).')
flags.DEFINE_integer('num_processes', 0, 'Multi-process: number of processes.')
flags.DEFINE_integer('process_id', -1, 'Multi-process: index of this process.')
# --mode=sweep / --mode=report (sweeps/); a sweep file's get_slurm() may set the SLURM ones.
flags.DEFINE_multi_string('sweep', [], 'Sweep axis KEY=V1,V2,... (values with commas: V1;V2); '
                          'repeated flags form a product. sweep.budget_params=300K solves widths.')
flags.DEFINE_bool('dry_run', False, 'Sweep: print every trial (overrides, params, MACs), train nothing.')
flags.DEFINE_enum('launcher', 'local', ['local', 'slurm'], 'Sweep: local processes or a SLURM array.')
flags.DEFINE_integer('parallel', 1, 'Sweep: trials at once (SLURM array throttle; 0 = no limit).')
flags.DEFINE_string('slurm_partition', '', 'SLURM partition (default: the cluster default).')
flags.DEFINE_string('slurm_time', '', 'SLURM time limit per trial, e.g. 02:00:00.')
flags.DEFINE_integer('slurm_cpus', 0, 'SLURM CPUs per trial.')
flags.DEFINE_integer('slurm_gpus', 0, 'SLURM GPUs per trial (the trial shards its batch over them).')
flags.DEFINE_string('slurm_mem', '', 'SLURM memory per trial, e.g. 16G.')
flags.DEFINE_string('slurm_args', '', 'More sbatch options, e.g. "--account=a --qos=q".')
flags.DEFINE_bool('slurm_wait', True, 'Wait for the SLURM array, then summarize.')


class _QuietLibraries(py_logging.Filter):
  """Drops INFO records of orbax (several lines per checkpoint); warnings still pass."""

  def filter(self, record: py_logging.LogRecord) -> bool:
    return record.levelno >= py_logging.WARNING or '/orbax/' not in record.pathname


def run(argv) -> None:
  del argv
  logging.get_absl_handler().addFilter(_QuietLibraries())
  if FLAGS.mode == 'report':
    from sweeps import report
    report.main(FLAGS.workdir)
    return
  if FLAGS.config is None:
    raise UserError('--config is required, e.g. --config=configs/default.py')
  if FLAGS.mode == 'summary':  # per-layer table and summary.json; needs no data files
    from models import summary
    summary.summarize(FLAGS.config, FLAGS.workdir)
    return
  if FLAGS.mode == 'sweep':
    from sweeps import expand, launch
    slurm = launch.Slurm(FLAGS.slurm_partition, FLAGS.slurm_time, FLAGS.slurm_cpus, FLAGS.slurm_gpus,
                         FLAGS.slurm_mem, FLAGS.slurm_args, FLAGS.slurm_wait)
    sys.exit(launch.run_sweep(expand.base_config_args(FLAGS['config']), FLAGS.workdir, FLAGS.sweep,
                              FLAGS.dry_run, FLAGS.launcher, FLAGS.parallel, slurm))
  from train import distributed, loop  # imported after flag parsing: JAX reads XLA_FLAGS here
  if FLAGS.compilation_cache_dir and FLAGS.mode == 'train':  # benchmark times real compiles
    import jax
    jax.config.update('jax_compilation_cache_dir', FLAGS.compilation_cache_dir)
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)
  distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  if FLAGS.mode == 'train':
    loop.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  elif FLAGS.mode == 'benchmark':
    from train import benchmark
    benchmark.run(FLAGS.config, FLAGS.workdir, FLAGS.benchmark_steps)


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing, with every mistake reported as one `error:` line and exit code 2."""
  try:
    return FLAGS(argv)
  except (UserError, flags.Error) as e:
    message = str(e)
  except (KeyError, AttributeError) as e:  # ml_collections: an override names no such field
    field = str(e).strip('"\'').split("'")[0]
    given = [a.split('=')[0][len('--config.'):] for a in argv
             if a.startswith('--config.') and field in a.split('=')[0].split('.')]
    message = (f'unknown config key {given[0] if given else field!r}; the config file defines the '
               'keys (see a run\'s workdir/config.json for the full list)')
  except (ValueError, TypeError) as e:
    message = f'bad flag value: {e}'
  print(f'error: {message}', file=sys.stderr)
  sys.exit(2)


def main(argv) -> None:
  try:
    run(argv)
  except UserError as e:
    logging.flush()
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
