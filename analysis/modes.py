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
flags.DEFINE_list('attack_parts', [], '--mode=attack: what to run (default: all of whitebox, '
                  'blackbox, fooling, patch, transfer (with --target_workdir), membership, '
                  'reconstruction).')
flags.DEFINE_string('attack_norm', 'linf', '--mode=attack: threat model, linf or l2.')
flags.DEFINE_list('attack_eps', [], '--mode=attack: radii in [0, 1] pixel units (default per '
                  'dataset: L-inf 0.05,0.1,0.2 for gray images, 2/255,4/255,8/255 for colour).')
flags.DEFINE_integer('attack_examples', 500, '--mode=attack: test examples (picked per class '
                     'by --attack_seed).')
flags.DEFINE_integer('attack_batch', 250, '--mode=attack: examples per compiled attack call.')
flags.DEFINE_integer('attack_steps', 20, '--mode=attack: PGD steps.')
flags.DEFINE_integer('attack_restarts', 1, '--mode=attack: PGD random restarts.')
flags.DEFINE_string('attack_loss', 'ce', '--mode=attack: PGD/FGSM loss: ce, margin or dlr.')
flags.DEFINE_integer('attack_apgd_steps', 100, '--mode=attack: APGD-CE and APGD-T iterations.')
flags.DEFINE_integer('attack_apgd_targets', 3, '--mode=attack: APGD-T target classes '
                     '(AutoAttack standard: 9; capped at classes - 1).')
flags.DEFINE_integer('attack_square_queries', 1000, '--mode=attack: Square attack query budget.')
flags.DEFINE_integer('attack_fooling_steps', 500, '--mode=attack: fooling-image ascent steps.')
flags.DEFINE_integer('attack_patch_target', 0, '--mode=attack: adversarial patch target class.')
flags.DEFINE_integer('attack_patch_size', 0, '--mode=attack: patch side (0 = ~10% of the area).')
flags.DEFINE_integer('attack_patch_steps', 300, '--mode=attack: patch training steps.')
flags.DEFINE_string('target_workdir', '', '--mode=attack: a second run (same input shape) to '
                    'evaluate the PGD examples on: transfer rates.')
flags.DEFINE_integer('membership_examples', 1000, '--mode=attack: training and as many test '
                     'examples for membership inference.')
flags.DEFINE_list('membership_reference_workdirs', [], '--mode=attack: runs trained on other '
                  'examples (dataset.train_offset) for the calibrated membership attack.')
flags.DEFINE_integer('attack_seed', 0, '--mode=attack: seed of the picks and random starts.')
flags.DEFINE_integer('attack_step', None, '--mode=attack: checkpoint step (default: latest).')
flags.DEFINE_list('shift_corruptions', [], '--mode=shift: corruptions (default: all of '
                  'gaussian_noise, shot_noise, impulse_noise, gaussian_blur, brightness, contrast, '
                  'rotation, translation, scaling, elastic, pixelate, jpeg).')
flags.DEFINE_list('shift_severities', ['1', '2', '3', '4', '5'], '--mode=shift: severities, 1-5.')
flags.DEFINE_string('shift_reference', '', '--mode=shift: a trained run evaluated on the same '
                    'corrupted images; CE and mCE are relative to it (100 = as robust).')
flags.DEFINE_integer('shift_examples', 0, '--mode=shift: test examples, picked per class by '
                     '--shift_seed (0 = the whole test split).')
flags.DEFINE_integer('shift_batch', 500, '--mode=shift: images per corrupted batch.')
flags.DEFINE_integer('shift_seed', 0, '--mode=shift: seed of the corruptions and the picks.')
flags.DEFINE_integer('shift_step', None, '--mode=shift: checkpoint step (default: latest).')
FLAGS = flags.FLAGS


def summary(config, workdir: str) -> None:
  """`--mode=summary`: the per-layer table of a config's model (analysis/summary.py)."""
  from analysis import summary as summary_lib
  summary_lib.summarize(config, workdir)


def explain(config, workdir: str) -> None:
  """`--mode=explain`: attribution maps and their faithfulness and fragility, projections,
  activation maximization and feature inversion of a trained run, into `W/explain/`."""
  import util
  from analysis import explain as explain_lib
  util.trained_run_mode('explain', 'explain', config, workdir)
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


def attack(config, workdir: str) -> None:
  """`--mode=attack`: white-box and black-box robustness, fooling images, a patch, transfer,
  membership inference and reconstruction of a trained run, into `W/attack/`."""
  import util
  from analysis import attack as attack_lib
  util.trained_run_mode('attack', 'attack', config, workdir)
  o = attack_lib.Options(
      parts=tuple(FLAGS.attack_parts) or attack_lib.PARTS, norm=FLAGS.attack_norm,
      eps=tuple(util.parse_list('--attack_eps', ','.join(FLAGS.attack_eps), fraction,
                                example='0.1,8/255'))
      if FLAGS.attack_eps else (),
      examples=FLAGS.attack_examples, batch=FLAGS.attack_batch, pgd_steps=FLAGS.attack_steps,
      restarts=FLAGS.attack_restarts, loss=FLAGS.attack_loss,
      apgd_steps=FLAGS.attack_apgd_steps, apgd_targets=FLAGS.attack_apgd_targets,
      square_queries=FLAGS.attack_square_queries, fooling_steps=FLAGS.attack_fooling_steps,
      patch_target=FLAGS.attack_patch_target, patch_size=FLAGS.attack_patch_size,
      patch_steps=FLAGS.attack_patch_steps, target_workdir=FLAGS.target_workdir,
      membership_examples=FLAGS.membership_examples,
      references=tuple(FLAGS.membership_reference_workdirs), seed=FLAGS.attack_seed,
      step=FLAGS.attack_step)
  r = attack_lib.run_attack(workdir, o)
  for row in r['attacks']:
    print(f'attack: {row["attack"]:<20} eps {row["eps"]:.4g}  robust accuracy '
          f'{100 * row["robust_accuracy"]:.2f}%')
  for what, why in r['notes'].items():
    print(f'attack: {what}: {why}')
  for w in r['warnings']:
    print(f'attack: WARNING: {w}')
  if 'membership' in r:
    m = r['membership']
    print(f'attack: membership AUC {m["loss_threshold"]["auc"]:.3f} (loss threshold)' +
          (f', {m["calibrated"]["auc"]:.3f} (calibrated)' if 'calibrated' in m else ''))
  print(f'attack: clean accuracy {100 * r["clean_accuracy"]:.2f}% on {r["num_examples"]} '
        f'examples; outputs in {workdir}/attack/', flush=True)


def fraction(text: str) -> float:
  """'0.1' or '8/255'."""
  num, _, den = text.partition('/')
  if den and float(den) == 0:
    raise ValueError(text)
  return float(num) / float(den) if den else float(num)


def shift(config, workdir: str) -> None:
  """`--mode=shift`: accuracy of a trained run under corruptions of its test split at five
  severities, mCE against --shift_reference, into `W/shift/`."""
  import util
  from analysis import shift as shift_lib
  util.trained_run_mode('shift', 'evaluate under shift', config, workdir)
  severities = tuple(util.parse_list('--shift_severities', ','.join(FLAGS.shift_severities), int,
                                     example='1,3,5'))
  o = shift_lib.Options(corruptions=tuple(FLAGS.shift_corruptions) or shift_lib.CORRUPTIONS,
                        severities=severities, reference=FLAGS.shift_reference,
                        examples=FLAGS.shift_examples, batch=FLAGS.shift_batch,
                        seed=FLAGS.shift_seed, step=FLAGS.shift_step)
  r = shift_lib.run_shift(workdir, o)
  for c, v in r['corruptions'].items():
    print(f'shift: {c:<15} ' + '  '.join(f'{100 * v["accuracy"][str(s)]:6.2f}' for s in o.severities)
          + f'   mean {100 * v["mean_accuracy"]:6.2f}%' + (f'   CE {v["ce"]:.1f}' if 'ce' in v and v['ce'] is not None else ''))
  line = (f'shift: clean accuracy {100 * r["clean_accuracy"]:.2f}%, mean under corruption '
          f'{100 * r["mean_corruption_accuracy"]:.2f}% on {r["num_examples"]} test images')
  if r.get('mce') is not None:
    line += f'; mCE {r["mce"]:.1f}, relative mCE {r["relative_mce"]:.1f} (reference = 100)'
  print(line + f'; outputs in {workdir}/shift/', flush=True)
