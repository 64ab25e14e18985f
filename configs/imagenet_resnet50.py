"""ResNet-50 on ImageNet with Goyal et al.'s recipe ("Accurate, Large Minibatch SGD: Training
ImageNet in 1 Hour", 2017): SGD with momentum 0.9, batch 1024, learning rate 0.1 x 1024/256 =
0.4 reached by a linear warmup over 5 epochs, x0.1 at epochs 30, 60 and 80 of 90, weight decay
1e-4; Inception-style random-resized crops (8-100% of the area, ratio 3/4-4/3) and flips;
evaluation on the 224 centre crop of the image resized to 256 (crop_fraction 0.875). They
report 23.74% top-1 error at batch 1024 (76.3% accuracy). Differences: our warmup starts near 0
(theirs at 0.1), every BatchNorm scale starts at 1 (they zero the last of each block), and the
step runs in bfloat16 with float32 parameters.

Needs `imagenet2012` prepared for TFDS in dataset.data_dir, or the ImageNet folder layout
(`--config.dataset.name=folder --config.dataset.data_dir=DIR`, DIR/train/<wnid>/*.JPEG and
DIR/val/<wnid>/...), and a GPU/TPU cluster: 90 epochs are 115M images. Batches stream from
the host (data/streaming.py); each process reads its own shard.

  python main.py --config=configs/imagenet_resnet50.py --workdir=runs/r50

Small variant, runs on a laptop CPU (`:small`): ResNet-18 at 64x64 on an image folder, batch
64, 3 epochs; e.g. on Fashion-MNIST written as a folder of 64x64 PNGs:

  python scripts/image_folder.py --dataset=fashion_mnist --size=64 --out=/tmp/fm64 --per_class=600
  python main.py --config=configs/imagenet_resnet50.py:small \
      --config.dataset.data_dir=/tmp/fm64 --workdir=runs/r50_small
"""

import ml_collections

from configs import common, default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  small, arg = common.pop_switch(arg, 'small')
  c = default.get_config()
  c.model = common.model_config('resnet50')
  common.imagenet_data(c)
  c.optimizer.name = 'sgd'
  c.optimizer.learning_rate = 0.4
  c.optimizer.momentum = 0.9
  c.optimizer.nesterov = False
  c.optimizer.weight_decay = 1e-4
  c.schedule.name = 'multistep'
  c.schedule.warmup_epochs = 5.0
  c.schedule.milestones = '30,60,80'
  c.schedule.gamma = 0.1
  c.label_smoothing = 0.0
  c.batch_size = 1024
  c.eval_batch_size = 1024
  c.num_epochs = 90
  c.dtype = 'bfloat16'
  c.log_every_steps = 100
  c.checkpoint_every_steps = 1000
  c.keep_checkpoints = 3
  if small:
    common.small_cpu_variant(c, 'resnet18')
    c.optimizer.learning_rate = 0.1 * 64 / 256  # Goyal et al.'s linear scaling rule
    c.schedule.milestones = '2'
  return common.apply_arg(c, arg)
