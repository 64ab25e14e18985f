"""SimpleNetV1-5M (stride mode m2) on ImageNet with the recipe of the official SimpleNet
repository (Coderx7/SimpleNet_Pytorch, ImageNet/training_scripts/imagenet_training: a timm
fork, README "How to train the models"): batch 256, RMSProp in TensorFlow's form (timm's
rmsproptf) with eps 1e-3 and momentum 0.9, learning rate 0.0195 after a warmup from 1e-3
(timm's 3 warmup epochs in that train.py), decayed x0.981 every epoch ("step", decay-epochs 1)
for 900 epochs, weight decay 3e-5, no dropout, an EMA of the weights with decay 0.9999, and
that train.py's defaults: random-resized crops (8-100%, ratio 3/4-4/3), flips, color jitter
0.4, label smoothing 0.1. The repository lists 72.03% top-1 for simplenetv1_5m_m2
(../shared/REFERENCES.md); its README reaches 71.94% with this phase plus a second one resumed
at epoch 251 (weight decay 2e-5, eps 2e-3, no label smoothing, dropout on the last layers) and
checkpoint averaging, which this one config does not do. Evaluation: the 224 centre crop at 0.875.
Our warmup is linear from near 0 rather than from 1e-3.

Needs ImageNet (TFDS `imagenet2012` or the folder layout, see configs/imagenet_resnet50.py) and
an accelerator: 900 epochs are 1.15B images.

  python main.py --config=configs/imagenet_simplenet.py --workdir=runs/simplenet_in

Small variant (`:small`, runs on a laptop CPU): simplenetv1_small_m2_05 (1.38M at 10 classes) at 64x64 on an
image folder, batch 64, 3 epochs:

  python main.py --config=configs/imagenet_simplenet.py:small \
      --config.dataset.data_dir=/tmp/fm64 --workdir=runs/simplenet_small
"""

import ml_collections

from configs import common, default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  small, arg = common.pop_switch(arg, 'small')
  c = default.get_config()
  c.model = common.model_config('simplenetv1_5m_m2')
  c.model.dropout = 0.0
  common.imagenet_data(c)
  c.augment.brightness = c.augment.contrast = c.augment.saturation = 0.4
  c.optimizer.name = 'rmsprop_tf'
  c.optimizer.learning_rate = 0.0195
  c.optimizer.rho = 0.9
  c.optimizer.eps = 1e-3
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 3e-5
  c.schedule.name = 'exponential'
  c.schedule.warmup_epochs = 3.0
  c.schedule.decay_epochs = 1.0
  c.schedule.gamma = 0.981
  c.label_smoothing = 0.1
  c.ema_decay = 0.9999
  c.batch_size = 256
  c.eval_batch_size = 1000
  c.num_epochs = 900
  c.dtype = 'bfloat16'
  c.log_every_steps = 200
  c.checkpoint_every_steps = 2000
  c.keep_checkpoints = 3
  if small:
    common.small_cpu_variant(c, 'simplenetv1_small_m2_05')
    c.optimizer.learning_rate = 0.0195 * 64 / 256  # scaled to the batch: 0.0195 diverges here
  return common.apply_arg(c, arg)
