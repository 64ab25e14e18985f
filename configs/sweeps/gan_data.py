"""Study: does GAN-generated data help when labelled data is scarce? The default classifier on
the first 100 Fashion-MNIST training images of each class (1,000 real images), alone or with
100 or 1,000 images per class from the class-conditional DCGAN of
configs/dcgan_fashion_mnist.py, each for the same 600 steps (so extra data buys no extra
updates), three seeds:

  python main.py --config=configs/default.py --workdir=runs/default
  python main.py --mode=gan --config=configs/dcgan_fashion_mnist.py --workdir=runs/dcgan
  python main.py --mode=sweep --config=configs/sweeps/gan_data.py --workdir=runs/gan_data
  python main.py --mode=report --workdir=runs/gan_data

Another GAN: `--config=configs/sweeps/gan_data.py:dataset.extra_train=DIR/gan/samples.npz`.
Cost on 2 CPU cores: 45-90 minutes of trial time for the 9 trials (5-10 minutes each with other
jobs running), less with --parallel=2. Reading: docs/less_data.md.
"""

import ml_collections

from configs import common, default
from configs.declare import axis

CONDITIONS = {'real': {'dataset.extra_train': ''}, 'gan100': {'dataset.extra_per_class': 100},
              'gan1000': {'dataset.extra_per_class': 1000}}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = default.get_config()
  c.dataset.per_class = 100
  c.dataset.extra_train = 'runs/dcgan/gan/samples.npz'
  c.num_train_steps = 600
  c.eval_every_epochs = 1000  # evaluate at the end
  c.log_every_steps = 50
  return common.apply_arg(c, arg)


def get_sweep() -> list[dict]:
  return [{**o, 'seed': s['seed'], 'sweep.name': f"{name}_seed{s['seed']}"}
          for name, o in CONDITIONS.items() for s in axis('seed', [0, 1, 2])]
