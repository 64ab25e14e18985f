"""The options of `--mode=compress`: each default and help written once; compress/modes.py
declares the `--compress_*` flags from them (util.define_flags). Light to import."""

from __future__ import annotations

import dataclasses

from util import option

STAGES = ('prune', 'share', 'huffman', 'int8')


@dataclasses.dataclass(frozen=True)
class Compress:
  """Everything `--mode=compress` does. Defaults are the paper's where it gives one: pruning
  keeps about a third of conv weights and 8% of fully connected ones (AlexNet conv, LeNet fc),
  8-bit conv / 5-bit fc shared weights and relative indices (Han et al. 2016, sections 2-3)."""
  stages: tuple[str, ...] = option(STAGES, 'stages (default: all of prune, share, huffman, '
                                   'int8; the fp32 row is always measured).')
  sparsity: str = option('conv=0.65,dense=0.92', 'fraction of weights removed per layer kind, '
                         'and per layer by name (Conv_0=0.3).')
  scope: str = option('layer', 'pruning thresholds per layer, or global (one per layer kind).')
  iterations: int = option(3, 'prune-retrain rounds (1 = one-shot).')
  retrain_epochs: float = option(1.0, 'retraining epochs per pruning round (0 = none).')
  lr_scale: float = option(0.1, "retraining learning rate / the run's (cosine decay, no "
                           'warmup).')
  bits: str = option('conv=8,dense=5', 'weight-sharing bits (2^bits centroids) per layer kind '
                     'or layer.')
  index_bits: str = option('conv=8,dense=5', 'bits of the relative sparse indices per layer '
                           'kind or layer.')
  finetune_epochs: float = option(1.0, 'centroid fine-tuning epochs (0 = k-means only).')
  finetune_lr_scale: float = option(0.001, "centroid learning rate / the run's (the centroid "
                                    'gradients are sums over their clusters).')
  calibration: int = option(1000, 'training images that calibrate the int8 activation scales.')
  step: int | None = option(None, 'checkpoint step (default: latest).')
  out: str = option('compress', 'output folder inside the workdir (another name keeps a '
                    'compression with other settings apart).')
