"""A class-conditional DCGAN on Fashion-MNIST (`--mode=gan`, gan/train.py; models/dcgan.py).

Radford et al.'s recipe: Adam at 2e-4 with beta1 0.5, batch size 64 (their 128 halved for two
CPU cores), 100-d Gaussian noise. Its quality is measured with the Fréchet distance on
the features of a classifier trained on the real data, `gan.classifier`:

  python main.py --config=configs/default.py --workdir=runs/default
  python main.py --mode=gan --config=configs/dcgan_fashion_mnist.py --workdir=runs/dcgan

Measured numbers: docs/less_data.md.
"""

import ml_collections

from configs import common, default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.model = ml_collections.ConfigDict({'name': 'dcgan', 'width': 64, 'z_dim': 100})
  c.dataset = default.get_config().dataset
  c.optimizer = ml_collections.ConfigDict({'learning_rate': 2e-4, 'b1': 0.5, 'b2': 0.999})
  c.gan = ml_collections.ConfigDict({
      'classifier': 'runs/default',  # a classifier run on the same data (Fréchet features)
      'eval_every_steps': 500,
      'eval_per_class': 500,         # generated (and real) images per class per measurement
      'export_per_class': 1000,      # images per class in W/gan/samples.npz
  })
  c.batch_size = 64
  c.num_train_steps = 6000
  c.seed = 0
  c.log_every_steps = 100
  c.checkpoint_every_steps = 1000
  c.keep_checkpoints = 2
  return common.apply_arg(c, arg)
