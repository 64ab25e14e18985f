"""`--mode=sweep` and `--mode=report`, and the sweep's own flags (a sweep file's get_slurm()
may set the SLURM ones). Light to import: main.py declares these flags through it."""

from __future__ import annotations

from absl import flags


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
flags.DEFINE_string('reference', '', 'Report: the configuration (trial name without its seed) '
                    'every other is compared with; default: the sweep file\'s REFERENCE.')
FLAGS = flags.FLAGS


def sweep(config, workdir: str) -> int:
  """Expands the sweep of the --config file and flags, runs its unfinished trials, reports."""
  from sweeps import expand, launch
  slurm = launch.Slurm(FLAGS.slurm_partition, FLAGS.slurm_time, FLAGS.slurm_cpus, FLAGS.slurm_gpus,
                       FLAGS.slurm_mem, FLAGS.slurm_args, FLAGS.slurm_wait)
  return launch.run_sweep(expand.base_config_args(FLAGS['config']), workdir, FLAGS.sweep,
                          FLAGS.dry_run, FLAGS.launcher, FLAGS.parallel, slurm)


def report(config, workdir: str) -> None:
  """Gathers a sweep directory's trials into results.csv, results.md and plots; main.py then
  writes the page of the sweep or of the run (report/pages.py)."""
  import os
  from sweeps import report as report_lib
  if workdir and os.path.isdir(os.path.join(workdir, 'trials')):
    report_lib.main(workdir, FLAGS.reference)
