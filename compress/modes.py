"""`--mode=compress` and its flags (light to import: the work loads inside the mode)."""

from __future__ import annotations

from absl import flags

flags.DEFINE_list('compress_stages', [], '--mode=compress: stages (default: all of prune, share, '
                  'huffman, int8; the fp32 row is always measured).')
flags.DEFINE_string('compress_sparsity', 'conv=0.65,dense=0.92', '--mode=compress: fraction of '
                    'weights removed per layer kind, and per layer by name (Conv_0=0.3).')
flags.DEFINE_string('compress_scope', 'layer', '--mode=compress: pruning thresholds per layer, '
                    'or global (one per layer kind).')
flags.DEFINE_integer('compress_iterations', 3, '--mode=compress: prune-retrain rounds (1 = '
                     'one-shot).')
flags.DEFINE_float('compress_retrain_epochs', 1.0, '--mode=compress: retraining epochs per '
                   'pruning round (0 = none).')
flags.DEFINE_float('compress_lr_scale', 0.1, '--mode=compress: retraining learning rate / the '
                   "run's (cosine decay, no warmup).")
flags.DEFINE_string('compress_bits', 'conv=8,dense=5', '--mode=compress: weight-sharing bits '
                    '(2^bits centroids) per layer kind or layer.')
flags.DEFINE_string('compress_index_bits', 'conv=8,dense=5', '--mode=compress: bits of the '
                    'relative sparse indices per layer kind or layer.')
flags.DEFINE_float('compress_finetune_epochs', 1.0, '--mode=compress: centroid fine-tuning '
                   'epochs (0 = k-means only).')
flags.DEFINE_float('compress_finetune_lr_scale', 0.001, '--mode=compress: centroid learning '
                   "rate / the run's (the centroid gradients are sums over their clusters).")
flags.DEFINE_integer('compress_calibration', 1000, '--mode=compress: training images that '
                     'calibrate the int8 activation scales.')
flags.DEFINE_string('compress_out', 'compress', '--mode=compress: output folder inside the '
                    'workdir (another name keeps a compression with other settings apart).')
flags.DEFINE_integer('compress_step', None, '--mode=compress: checkpoint step (default: latest).')
FLAGS = flags.FLAGS


def compress(config, workdir: str) -> None:
  """`--mode=compress`: Deep Compression and int8 of a trained run, into `W/compress/`."""
  import util
  from compress import pipeline
  util.trained_run_mode('compress', 'compress', config, workdir)
  o = pipeline.Options(
      stages=tuple(FLAGS.compress_stages) or pipeline.STAGES, sparsity=FLAGS.compress_sparsity,
      scope=FLAGS.compress_scope, iterations=FLAGS.compress_iterations,
      retrain_epochs=FLAGS.compress_retrain_epochs, lr_scale=FLAGS.compress_lr_scale,
      bits=FLAGS.compress_bits, index_bits=FLAGS.compress_index_bits,
      finetune_epochs=FLAGS.compress_finetune_epochs,
      finetune_lr_scale=FLAGS.compress_finetune_lr_scale,
      calibration=FLAGS.compress_calibration, step=FLAGS.compress_step,
      out=FLAGS.compress_out)
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
