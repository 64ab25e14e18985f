"""The analysis modes main.py's table points at, and their flags; light to import (the work
loads inside the mode functions)."""

from __future__ import annotations

from absl import flags

flags.DEFINE_list('explain_methods', [], '--mode=explain: attribution methods (default: all of '
                  'gradient, grad_x_input, smoothgrad, integrated_gradients, occlusion, gradcam, '
                  'gradcam_pp, guided_backprop, deconvnet).')
flags.DEFINE_list('explain_parts', [], '--mode=explain: what to run (default: all of maps, '
                  'projections, maximize, invert).')
flags.DEFINE_integer('explain_images', 8, '--mode=explain: test images (picked per class by seed).')
flags.DEFINE_string('explain_class', 'true', '--mode=explain: the class each map explains: '
                    'true (the label), predicted, or a class index.')
flags.DEFINE_string('explain_layer', '', '--mode=explain: conv layer for Grad-CAM and the '
                    'projections (default: the last conv layer with spatial extent).')
flags.DEFINE_bool('explain_list_layers', False, '--mode=explain: print the conv layers and exit.')
flags.DEFINE_integer('explain_ig_steps', 50, '--mode=explain: integrated-gradients steps.')
flags.DEFINE_string('explain_ig_baseline', 'black', 'black | mean | blur | uniform.')
flags.DEFINE_integer('explain_smoothgrad_samples', 25, '--mode=explain: SmoothGrad samples.')
flags.DEFINE_float('explain_noise_level', 0.15, 'SmoothGrad noise stdev / (max - min).')
flags.DEFINE_integer('explain_occlusion_size', 6, 'Occlusion patch side (pixels).')
flags.DEFINE_integer('explain_occlusion_stride', 2, 'Occlusion stride (pixels).')
flags.DEFINE_integer('explain_maximize_steps', 256, 'Activation-maximization steps.')
flags.DEFINE_list('explain_maximize_targets', [], 'Activation-maximization targets: classes '
                  '(every class logit, the default) and/or LAYER:CHANNEL (a feature map\'s mean).')
flags.DEFINE_bool('explain_fourier', True, 'Maximize over a decorrelated Fourier-space image.')
flags.DEFINE_integer('explain_jitter', 2, 'Random shift (pixels) of the image at each step.')
flags.DEFINE_integer('explain_blur_every', 0, 'Blur the (pixel-space) image every N steps.')
flags.DEFINE_integer('explain_invert_steps', 300, 'Feature-inversion steps per layer.')
flags.DEFINE_integer('explain_invert_images', 4, 'Images reconstructed per layer.')
flags.DEFINE_integer('explain_seed', 0, 'Seed of the image picks, noise and random starts.')
FLAGS = flags.FLAGS


def summary(config, workdir: str) -> None:
  """`--mode=summary`: the per-layer table of a config's model (analysis/summary.py)."""
  from analysis import summary as summary_lib
  summary_lib.summarize(config, workdir)


def explain(config, workdir: str) -> None:
  """`--mode=explain`: attribution maps and their faithfulness and fragility, projections,
  activation maximization and feature inversion of a trained run, into `W/explain/`."""
  from absl import logging
  from analysis import explain as explain_lib
  from errors import UserError
  if not workdir:
    raise UserError('--workdir is required: the trained run to explain')
  if config is not None:
    logging.warning('--mode=explain uses the run\'s own config; --config is ignored')
  o = explain_lib.Options(
      methods=tuple(FLAGS.explain_methods) or explain_lib.METHODS,
      parts=tuple(FLAGS.explain_parts) or explain_lib.PARTS,
      num_images=FLAGS.explain_images, explain_class=FLAGS.explain_class,
      layer=FLAGS.explain_layer,
      ig_steps=FLAGS.explain_ig_steps, ig_baseline=FLAGS.explain_ig_baseline,
      smoothgrad_samples=FLAGS.explain_smoothgrad_samples, noise_level=FLAGS.explain_noise_level,
      occlusion_size=FLAGS.explain_occlusion_size, occlusion_stride=FLAGS.explain_occlusion_stride,
      maximize_steps=FLAGS.explain_maximize_steps,
      maximize_targets=tuple(FLAGS.explain_maximize_targets), fourier=FLAGS.explain_fourier,
      jitter=FLAGS.explain_jitter, blur_every=FLAGS.explain_blur_every,
      invert_steps=FLAGS.explain_invert_steps,
      invert_images=FLAGS.explain_invert_images, seed=FLAGS.explain_seed)
  if FLAGS.explain_list_layers:
    for name, shape in explain_lib.list_layers(workdir):
      print(f'{name}  {"x".join(map(str, shape))}')
    return
  results = explain_lib.run_explain(workdir, o)
  for what, why in results['notes'].items():
    print(f'explain: {what}: {why}')
  print(f'explain: {len(results.get("methods", []))} methods on {o.num_images} images; '
        f'outputs in {workdir}/explain/', flush=True)
