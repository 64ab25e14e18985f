"""The published SimpleNet CIFAR-10 recipe (95.51% with the 5.48M model; numbers from the
SimpleNet_Pytorch README, see ../shared/REFERENCES.md): Adadelta lr 0.1, rho 0.9, eps 1e-3,
weight decay 2e-3 added to the gradient, MultiStep x0.1 at epochs 100/190/306/390/440/540,
550 epochs, batch 100, random crop (pad 4) + horizontal flip, per-channel normalization.

Needs CIFAR-10 prepared for TFDS (`tfds build cifar10`) and an accelerator: 550 epochs are
~27.5M images. Variants: `configs/simplenet_cifar10.py:model=simplenet_cifar_310k`.
"""

import ml_collections

from configs import common, default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = default.get_config()
  c.model = common.model_config('simplenet_cifar_5m')
  c.model.dropout = 0.1  # after each downsampling and the global pool (our choice, not the paper's)
  c.dataset.name = 'cifar10'
  c.augment.crop_padding, c.augment.flip = 4, True
  c.optimizer.name = 'adadelta'
  c.optimizer.learning_rate = 0.1
  c.optimizer.rho = 0.9
  c.optimizer.eps = 1e-3
  c.optimizer.weight_decay = 2e-3
  c.schedule.name = 'multistep'
  c.schedule.warmup_epochs = 0.0
  c.schedule.milestones = '100,190,306,390,440,540'
  c.schedule.gamma = 0.1
  c.label_smoothing = 0.0
  c.batch_size = 100
  c.num_epochs = 550
  c.log_every_steps = 250
  c.keep_checkpoints = 3
  return common.apply_arg(c, arg)
