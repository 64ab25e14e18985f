"""`--mode=compress` and its flags (light to import: the work loads inside the mode)."""

from __future__ import annotations

from absl import flags

import util
from compress import options

util.define_flags(options.Compress, 'compress', 'compress_')
FLAGS = flags.FLAGS


def compress(config, workdir: str) -> None:
  """`--mode=compress`: Deep Compression and int8 of a trained run, into `W/compress/`."""
  from compress import pipeline
  util.trained_run_mode('compress', 'compress', config, workdir)
  o = util.from_flags(options.Compress, FLAGS, 'compress_')
  r = pipeline.run_compress(workdir, o)
  for s in r['stages']:
    print(f'compress: {s["stage"]:9s} {s["bytes"]:>10,} bytes  {s["compression_ratio"]:6.1f}x  '
          f'{s["params_kept"]:>9,} params  {s["bits_per_weight"]:6.2f} bits/weight  '
          f'{100 * s["test_accuracy"]:.2f}%')
  if r['int8']:
    for what, sp in (('main.py XLA flags', r['int8']['speed']),
                     ('XLA default flags', r['int8']['speed_xla_default_flags'])):
      if sp:
        print(f'compress: int8 inference, {what}: {sp["int8_xla"]:.0f} img/s vs fp32 '
              f'{sp["fp32_xla"]:.0f} (XLA), {sp["fp32_run_convolutions"]:.0f} '
              f'({sp["run_conv_impl"]})')
  print(f'compress: outputs in {workdir}/{o.out}/', flush=True)
