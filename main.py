"""Entry point: `python main.py --mode=MODE --config=configs/x.py --workdir=runs/x`.

Flags and dispatch only: each mode is a function of (config, workdir) in its package, and a
mode's own flags are declared there (train/modes.py, data/modes.py, sweeps/modes.py,
analysis/modes.py, compress/modes.py, gan/modes.py).
"""

import glob
import os
import shutil
import sys

import lifecycle
from kernels import runtime

if __name__ == '__main__':
  lifecycle.die_with_launcher()  # a sweep's trial ends with its sweep, however that dies
  runtime.setup_process()  # tcmalloc re-exec, XLA flags, quiet libraries: before JAX loads

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from analysis import modes as analysis_modes  # noqa: E402
from compress import modes as compress_modes  # noqa: E402
from data import modes as data_modes  # noqa: E402
from errors import UserError  # noqa: E402
from gan import modes as gan_modes  # noqa: E402
from sweeps import modes as sweep_modes  # noqa: E402
from train import modes as train_modes  # noqa: E402

# name -> (function(config, workdir), whether it needs --config, whether it runs JAX steps)
MODES = {
    'train': (train_modes.train, True, True),
    'eval': (train_modes.evaluate, False, True),
    'benchmark': (train_modes.benchmark, True, True),
    'summary': (analysis_modes.summary, True, False),
    'augment': (data_modes.augment, True, True),
    'explain': (analysis_modes.explain, False, True),
    'attack': (analysis_modes.attack, False, True),
    'shift': (analysis_modes.shift, False, True),
    'compress': (compress_modes.compress, False, True),
    'gan': (gan_modes.gan, True, True),
    'sweep': (sweep_modes.sweep, True, False),
    'report': (sweep_modes.report, False, False),
}

# Modes that read a trained run and write beside it: they share the workdir with each other and
# are refused while a training run holds it (train and gan hold it alone: train/loop.py).
READS_RUN = ('eval', 'explain', 'attack', 'shift', 'compress')

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Config file, optionally with :key=value,... '
                                'arguments.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, TensorBoard logs and results.')
flags.DEFINE_enum('mode', 'train', list(MODES), 'What to do.')
flags.DEFINE_string('compilation_cache_dir', os.path.expanduser('~/.cache/cnn_lab/jax'),
                    'Persistent XLA compilation cache, so repeated runs and sweep trials skip '
                    'recompiling ("" disables it).')
flags.DEFINE_float('compilation_cache_min_secs', 1.0, 'Cache only executables that took at '
                   'least this long to compile (0 = all).')
flags.DEFINE_string('coordinator_address', '', 'Multi-process: host:port of process 0 '
                    '(SLURM and TPU pods are detected without it).')
flags.DEFINE_integer('num_processes', 0, 'Multi-process: number of processes.')
flags.DEFINE_integer('process_id', -1, 'Multi-process: index of this process.')


def run(argv) -> int | None:
  del argv
  logging.get_absl_handler().addFilter(lifecycle.QuietDiskTracebacks())
  fn, needs_config, uses_jax = MODES[FLAGS.mode]
  if needs_config and FLAGS.config is None:
    raise UserError(f'--config is required for --mode={FLAGS.mode}, e.g. '
                    '--config=configs/default.py')
  if uses_jax:
    import jax
    from train import distributed
    if FLAGS.compilation_cache_dir and FLAGS.mode != 'benchmark':  # benchmark times compiles
      jax.config.update('jax_compilation_cache_dir', FLAGS.compilation_cache_dir)
      jax.config.update('jax_persistent_cache_min_compile_time_secs',
                        FLAGS.compilation_cache_min_secs)
    distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  if FLAGS.mode in READS_RUN and FLAGS.workdir and os.path.isdir(FLAGS.workdir):
    lifecycle.hold(FLAGS.workdir, FLAGS.mode, exclusive=False)
  code = fn(FLAGS.config, FLAGS.workdir)
  if not uses_jax or distributed.is_main_process():
    rebuild_page(FLAGS.mode, FLAGS.workdir)
  return code


def rebuild_page(mode: str, workdir: str | None) -> None:
  """W/report.html after every mode that wrote into a run or a sweep (report/pages.py);
  `--mode=report` builds it on demand. A page that fails to build costs a warning, never the
  mode's own results."""
  from report import pages
  if mode == 'report':
    if not workdir or not os.path.isdir(workdir):
      raise UserError(f'--mode=report needs --workdir=W naming a run or a sweep, got {workdir!r}')
    print(f'report: {pages.build(workdir)}', flush=True)
    return
  if not workdir or not pages.kind(workdir):
    return
  try:
    path = pages.build(workdir)
  except Exception as e:  # noqa: BLE001  (the page is a view; the mode's files are written)
    logging.warning('%s not rebuilt (%s: %s); rerun --mode=report --workdir=%s', pages.PAGE,
                    type(e).__name__, e, workdir)
    return
  logging.info('Report page: %s', path)


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing, with every mistake reported as one `error:` line and exit code 2."""
  try:
    rest = FLAGS(argv)
    if FLAGS.config is not None:  # ml_collections defers a file that failed to load to the
      FLAGS.config.keys  # noqa: B018  (first attribute access: make it fail here)
    return rest
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
  except Exception as e:  # noqa: BLE001  (the config file: missing, unreadable, broken)
    message = _config_file_error(argv, e)
  print(f'error: {message}', file=sys.stderr)
  sys.exit(2)


def _config_file_error(argv: list[str], e: Exception) -> str:
  """ml_collections reports a config file it cannot load in several ways (an OSError without
  overrides, an ImportError or a SyntaxError from the file): one line naming the file."""
  given = [a.split('=', 1)[1] for a in argv if a.startswith('--config=')]
  path = given[-1].split(':')[0] if given else '(none)'  # absl keeps the last
  if not os.path.isfile(path):
    return (f'config file {path} not found; pass an existing file, e.g. '
            '--config=configs/default.py')
  first = (str(e).strip().splitlines() or [''])[0]
  return f'cannot load the config file {path} ({type(e).__name__}: {first})'


def _remove_partial_checkpoints(workdir: str | None) -> None:
  """Checkpoint folders a failed save left half-written (orbax names them *.orbax-checkpoint-
  tmp-*), in the run and in the runs a mode trains inside it (compress stages)."""
  if not workdir:
    return
  for pattern in ('checkpoints', '*/checkpoints', '*/*/checkpoints'):
    for tmp in glob.glob(os.path.join(workdir, pattern, '*.orbax-checkpoint-tmp*')):
      shutil.rmtree(tmp, ignore_errors=True)


def main(argv) -> None:
  try:
    code = run(argv)
  except UserError as e:
    logging.flush()
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  except lifecycle.Stopped as e:
    logging.flush()
    print(str(e), file=sys.stderr)
    sys.exit(lifecycle.STOPPED_EXIT)
  except Exception as e:  # noqa: BLE001
    failure = lifecycle.disk_error(e)
    if failure is None:
      raise
    logging.flush()
    _remove_partial_checkpoints(FLAGS.workdir)
    what, path = failure
    print(f'error: cannot write {path or FLAGS.workdir or "the output"}: {what}; free space or '
          'fix the permissions, then rerun the same command (it resumes from the last '
          'complete checkpoint)', file=sys.stderr)
    sys.exit(2)
  sys.exit(code or 0)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
