"""Semantic segmentation on generated Fashion-MNIST scenes (data/segmentation.py): 64x64
canvases of 1-3 objects over textured backgrounds, 11 classes (background + 10), 2,048 training
and 512 test scenes, no download. `python main.py --config=configs/segmentation.py --workdir=W`.

`:model=fcn32s|fcn16s|fcn8s|unet` picks the network (models/dense.py). The FCNs run over the
SimpleNet-310K backbone (`--config.model.backbone=vgg16` is the paper's, 134M parameters) with
the paper's upsampling (2x steps learned from bilinear, final fixed bilinear;
`--config.model.upsampling=bilinear` fixes all). `unet` is the same-padding U-Net at a quarter
of the paper's width (16 filters first), with batch norm: the published one (valid padding,
572x572 inputs, 31.0M parameters) is `--config.model.padding=valid` with width 1 and no norm.

Users' data: `--config.dataset.name=segmentation_folder --config.dataset.data_dir=DIR
--config.dataset.num_classes=N` (DIR/{train,val}/{images,masks}, class-index PNG masks, 255 =
ignore) with `--config.dataset.image_shape=H,W,C`.
"""

import ml_collections

from configs import common, default

# What `model=NAME` sets besides the name (explicit keys in the argument still win).
PRESETS = {
    'fcn32s': {'backbone': 'simplenet'},
    'fcn16s': {'backbone': 'simplenet'},
    'fcn8s': {'backbone': 'simplenet'},
    'unet': {'padding': 'same', 'width_multiplier': 0.25, 'norm': 'batch'},
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = default.get_config()
  c.task = 'segmentation'
  c.model = common.model_config('fcn8s')
  c.model.backbone = 'simplenet'     # FCN: vgg16 | simplenet
  c.model.upsampling = 'learned'     # FCN: learned | bilinear
  c.model.padding = 'same'           # U-Net: valid (the paper's) | same
  chosen = dict(item.partition('=')[::2] for item in (arg or '').split(',') if item)
  name = chosen.get('model', chosen.get('model.name', 'fcn8s')).strip()
  for key, value in PRESETS.get(name, {}).items():
    c.model[key] = value
  c.dataset.name = 'fashion_mnist_scenes'
  c.dataset.image_shape = '64,64,1'
  c.dataset.synthetic_size = 2048
  c.augment.crop_padding = 4         # image padded with 0, mask with the ignore label
  c.augment.flip = True
  c.label_smoothing = 0.0
  c.batch_size = 32
  c.eval_batch_size = 128
  c.num_epochs = 8
  c.optimizer.learning_rate = 0.05
  c.schedule.warmup_epochs = 0.5
  c.log_every_steps = 32
  return common.apply_arg(c, arg)
