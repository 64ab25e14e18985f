"""Time to accuracy on Fashion-MNIST on 2 CPU cores: SimpleNet-310K with what the CIFAR-10
speed records use where it helps (airbench: data on device, label smoothing, weight EMA, flip
test-time augmentation, one-cycle schedule), batch 64 (the fastest batch size on 2 CPU cores
and more steps per epoch). Measured numbers in README.md ("Speed").
"""

import ml_collections

from configs import common, default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = default.get_config()
  c.num_epochs = 10
  c.batch_size = 64
  c.optimizer.learning_rate = 0.1   # the default's 0.2 at batch 128, scaled linearly
  c.ema_decay = 0.998               # ~500-step horizon: about half an epoch at batch 64
  c.eval_flip_tta = True
  c.log_every_steps = 200
  return common.apply_arg(c, arg)
