"""Process setup for speed and quiet, done once by main.py before JAX or TensorFlow load.

* Allocator. glibc returns every freed buffer above 32 MB to the OS, so each train step
  page-faults its activation buffers in again; tcmalloc keeps them, and with
  TCMALLOC_RELEASE_RATE=0 it keeps freed spans mapped too (7-20% more SimpleNet img/s on 2
  cores, docs/speed.md). When Debian's libtcmalloc-minimal4 is installed the process
  re-executes itself once with it preloaded; CNN_LAB_MALLOC=system keeps glibc's malloc.
* XLA CPU libraries: YNNPACK for matmuls, reductions and elementwise fusions, Eigen for
  convolutions (the fastest split measured, docs/speed.md). A value already in XLA_FLAGS wins.
* Quiet: TensorFlow's C++ notices, its oneDNN notice, JAX's "no TPU" probe, TFDS's
  variant-folder notes and orbax's INFO lines mean nothing to a CPU user; real warnings pass.
"""

from __future__ import annotations

import glob
import logging
import os
import sys

TCMALLOC = next(iter(sorted(glob.glob('/usr/lib/*/libtcmalloc_minimal.so.4'))), None)
YNN_FUSION_FLAG = ('--xla_cpu_experimental_ynn_fusion_type='
                   'LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_REDUCE,LIBRARY_FUSION_TYPE_ELTWISE')


def _preload_tcmalloc() -> None:
  if (not TCMALLOC or os.environ.get('CNN_LAB_MALLOC') == 'system'
      or 'tcmalloc' in os.environ.get('LD_PRELOAD', '')):
    return
  os.environ['LD_PRELOAD'] = ':'.join(filter(None, [TCMALLOC, os.environ.get('LD_PRELOAD')]))
  os.environ.setdefault('TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD', str(1 << 40))  # no stderr notes
  os.environ.setdefault('TCMALLOC_RELEASE_RATE', '0')
  os.execv(sys.executable, sys.orig_argv)


class _DropNotices(logging.Filter):
  """Drops orbax's INFO records and the notices of the module docstring; errors always pass."""
  NOTICES = ('unable to initialize backend', 'variant folder', 'invalid variant directory',
             'onednn custom operations',
             'metadata file does not exist')  # orbax, reading one item of a checkpoint

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno >= logging.ERROR:
      return True
    message = record.getMessage().lower()
    if any(n in message for n in self.NOTICES):
      return False
    return record.levelno >= logging.WARNING or '/orbax/' not in record.pathname


def setup_process() -> None:
  """Allocator, XLA flags and quiet logging for this process (module docstring); called by
  main.py before anything imports JAX or TensorFlow. May re-execute the process once."""
  _preload_tcmalloc()
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')   # TensorFlow's C++ INFO/WARNING lines
  os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')  # TF's own oneDNN notice (JAX unaffected)
  if 'xla_cpu_experimental_ynn_fusion_type' not in os.environ.get('XLA_FLAGS', ''):
    os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' ' + YNN_FUSION_FLAG).strip()
  from absl import logging as absl_logging  # its handler exists from import on
  absl_logging.get_absl_handler().addFilter(_DropNotices())


def malloc() -> str:
  """The process's allocator: 'tcmalloc' when it was preloaded, else 'system'."""
  return 'tcmalloc' if 'tcmalloc' in os.environ.get('LD_PRELOAD', '') else 'system'


def tcmalloc_release_rate() -> str | None:
  """TCMALLOC_RELEASE_RATE under tcmalloc (setup_process sets '0': freed memory stays mapped)."""
  return os.environ.get('TCMALLOC_RELEASE_RATE') if malloc() == 'tcmalloc' else None


def machine() -> dict:
  """What a timing was measured on: the CPU's model and vector ISA (AVX2-only CPUs run this
  project's convolutions several times slower than AVX-512 ones, docs/speed.md), cores, host."""
  model, flags = '', set()
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        key, _, value = line.partition(':')
        if key.strip() == 'model name' and not model:
          model = value.strip()
        elif key.strip() == 'flags' and not flags:
          flags = set(value.split())
  except OSError:  # not Linux: the platform module's answer
    import platform
    model = platform.processor()
  isa = ('AVX-512' if 'avx512f' in flags else 'AVX2' if 'avx2' in flags else
         'unknown' if not flags else 'pre-AVX2')
  return {'cpu': model or 'unknown', 'isa': isa, 'cores': len(os.sched_getaffinity(0))
          if hasattr(os, 'sched_getaffinity') else os.cpu_count(), 'host': os.uname().nodename}
