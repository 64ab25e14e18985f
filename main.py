"""Entry point: `python main.py --config=configs/default.py --workdir=runs/x [--mode=train]`.

Flags and dispatch only; everything else lives in importable, tested modules.
"""

import logging as py_logging
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # TensorFlow (TFDS, TensorBoard) C++ chatter

from absl import app, flags, logging
from ml_collections import config_flags

from errors import UserError

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Config file, optionally with :key=value,... '
                                'arguments.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, TensorBoard logs and results.')
flags.DEFINE_enum('mode', 'train', ['train'], 'What to do.')
flags.DEFINE_string('coordinator_address', '', 'Multi-process: host:port of process 0 '
                    '(SLURM and TPU pods are detected without it).')
flags.DEFINE_integer('num_processes', 0, 'Multi-process: number of processes.')
flags.DEFINE_integer('process_id', -1, 'Multi-process: index of this process.')


class _QuietLibraries(py_logging.Filter):
  """Drops INFO records of orbax (several lines per checkpoint); warnings still pass."""

  def filter(self, record: py_logging.LogRecord) -> bool:
    return record.levelno >= py_logging.WARNING or '/orbax/' not in record.pathname


def run(argv) -> None:
  del argv
  logging.get_absl_handler().addFilter(_QuietLibraries())
  if FLAGS.config is None:
    raise UserError('--config is required, e.g. --config=configs/default.py')
  from train import distributed, loop  # imported after flag parsing: JAX reads XLA_FLAGS here
  distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  if FLAGS.mode == 'train':
    loop.train_and_evaluate(FLAGS.config, FLAGS.workdir)


def main(argv) -> None:
  try:
    run(argv)
  except UserError as e:
    logging.flush()
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  app.run(main)
