"""The options of `--mode=explain`, `--mode=attack` and `--mode=shift`: one dataclass per mode
whose fields hold each default and help once; analysis/modes.py declares the absl flags from
them (util.define_flags), and the modes take the dataclass. Light to import (main.py reads it
before flags are parsed): names and numbers only."""

from __future__ import annotations

import dataclasses

from util import option

# --mode=explain
METHODS = ('gradient', 'grad_x_input', 'smoothgrad', 'integrated_gradients', 'occlusion',
           'gradcam', 'gradcam_pp', 'guided_backprop', 'deconvnet')
EXPLAIN_PARTS = ('maps', 'projections', 'maximize', 'invert')
# --mode=attack
ATTACK_PARTS = ('whitebox', 'blackbox', 'fooling', 'patch', 'transfer', 'membership',
                'reconstruction')
# --mode=shift (analysis/shift.py holds each corruption's parameters)
CORRUPTIONS = ('gaussian_noise', 'shot_noise', 'impulse_noise', 'gaussian_blur', 'brightness',
               'contrast', 'rotation', 'translation', 'scaling', 'elastic', 'pixelate', 'jpeg')
SEVERITIES = (1, 2, 3, 4, 5)


def fraction(text: str) -> float:
  """'0.1' or '8/255'."""
  num, _, den = text.partition('/')
  if den and float(den) == 0:
    raise ValueError(text)
  return float(num) / float(den) if den else float(num)


def _all(names) -> str:
  return f'(default: all of {", ".join(map(str, names))})'


@dataclasses.dataclass
class Explain:
  """Everything `--mode=explain` does (flags `--explain_*`)."""
  methods: tuple[str, ...] = option(METHODS, f'attribution methods {_all(METHODS)}.')
  parts: tuple[str, ...] = option(EXPLAIN_PARTS, f'what to run {_all(EXPLAIN_PARTS)}.')
  num_images: int = option(8, 'test images (picked per class by seed).', 'explain_images')
  explain_class: str = option('true', 'the class each map explains: true (the label), '
                              'predicted, or a class index.', 'explain_class')
  layer: str = option('', 'conv layer for Grad-CAM and the projections (default: the last conv '
                      'layer with spatial extent).')
  region: str = option('predicted', 'segmentation runs: the pixels whose summed class logit a '
                       'map explains: predicted (those predicted as the class), true (its '
                       'ground truth), all, or a box TOP,LEFT,HEIGHT,WIDTH.')
  ig_steps: int = option(50, 'integrated-gradients steps.')
  ig_baseline: str = option('black', 'integrated-gradients baseline: black | mean | blur | '
                            'uniform.')
  smoothgrad_samples: int = option(25, 'SmoothGrad samples.')
  noise_level: float = option(0.15, 'SmoothGrad noise stdev / (max - min).')
  occlusion_size: int = option(6, 'occlusion patch side (pixels).')
  occlusion_stride: int = option(2, 'occlusion stride (pixels).')
  occlusion_fill: float = option(0.0, 'occluding value', '')
  maximize_steps: int = option(256, 'activation-maximization steps.')
  maximize_targets: tuple[str, ...] = option((), 'activation-maximization targets: classes '
                                             '(every class logit, the default) and/or '
                                             'LAYER:CHANNEL (a feature map\'s mean).')
  fourier: bool = option(True, 'maximize over a decorrelated Fourier-space image.')
  jitter: int = option(2, 'random shift (pixels) of the image at each step.')
  blur_every: int = option(0, 'blur the (pixel-space) image every N steps.')
  invert_steps: int = option(300, 'feature-inversion steps per layer.')
  invert_images: int = option(4, 'images reconstructed per layer.')
  seed: int = option(0, 'seed of the image picks, noise and random starts.')
  step: int | None = option(None, 'checkpoint step (default: latest).', '')


@dataclasses.dataclass(frozen=True)
class Attack:
  """Everything `--mode=attack` does (flags `--attack_*`, `--target_workdir`, `--membership_*`)."""
  parts: tuple[str, ...] = option(ATTACK_PARTS, f'what to run {_all(ATTACK_PARTS)}; transfer '
                                  'needs --target_workdir.')
  norm: str = option('linf', 'threat model, linf or l2.')
  eps: tuple[float, ...] = option((), 'radii in [0, 1] pixel units like 0.1,8/255 (default per '
                                  'dataset: L-inf 0.05,0.1,0.2 for gray images, 2/255,4/255,8/255 '
                                  'for colour).', parse=fraction)
  examples: int = option(500, 'test examples (picked per class by --attack_seed).')
  batch: int = option(250, 'examples per compiled attack call.')
  pgd_steps: int = option(20, 'PGD steps.', 'attack_steps')
  restarts: int = option(1, 'PGD random restarts.')
  loss: str = option('ce', 'PGD/FGSM loss: ce, margin or dlr.')
  apgd_steps: int = option(100, 'APGD-CE and APGD-T iterations.')
  apgd_targets: int = option(3, 'APGD-T target classes (AutoAttack standard: 9; capped at '
                             'classes - 1).')
  square_queries: int = option(1000, 'Square attack query budget.')
  fooling_steps: int = option(500, 'fooling-image ascent steps.')
  patch_target: int = option(0, 'adversarial patch target class.')
  target_class: int = option(0, 'segmentation runs: the class targeted PGD pushes every pixel '
                             'to (0 = background: the objects vanish).')
  patch_size: int = option(0, 'patch side (0 = a square of ~10% of the image area).')
  patch_steps: int = option(300, 'patch training steps.')
  target_workdir: str = option('', 'a second run (same input shape) to evaluate the PGD '
                               'examples on: transfer rates.', 'target_workdir')
  membership_examples: int = option(1000, 'training and as many test examples for membership '
                                    'inference.', 'membership_examples')
  references: tuple[str, ...] = option((), 'runs trained on other examples '
                                       '(dataset.train_offset) for the calibrated membership '
                                       'attack.', 'membership_reference_workdirs')
  seed: int = option(0, 'seed of the picks and random starts.')
  step: int | None = option(None, 'checkpoint step (default: latest).')


@dataclasses.dataclass(frozen=True)
class Shift:
  """Everything `--mode=shift` does (flags `--shift_*`)."""
  corruptions: tuple[str, ...] = option(CORRUPTIONS, f'corruptions {_all(CORRUPTIONS)}.')
  severities: tuple[int, ...] = option(SEVERITIES, 'severities, 1-5 (default: all).')
  reference: str = option('', 'a trained run evaluated on the same corrupted images; CE and mCE '
                          'are relative to it (100 = as robust).')
  examples: int = option(0, 'test examples, picked per class by --shift_seed (0 = the whole '
                         'test split).')
  batch: int = option(500, 'images per corrupted batch.')
  seed: int = option(0, 'seed of the corruptions and the picks.')
  step: int | None = option(None, 'checkpoint step (default: latest).')
