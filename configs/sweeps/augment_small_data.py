"""Study: augmentation when data is scarce. Fashion-MNIST with its first 1,000 training
images, the default net and recipe (configs/default.py) for 40 epochs, three seeds each:

  none       no augmentation
  crop_flip  pad-2 random crops and horizontal flips (the default's augmentation)
  wu         crop_flip plus Wu et al.'s (Deep Image, 2015) camera effects that apply to
             grayscale: vignetting (up to 40% darker corners), lens distortion (|k| <= 0.15)
             and color casting (on one channel an intensity offset of up to +-20)

  python main.py --mode=sweep --config=configs/sweeps/augment_small_data.py --workdir=runs/aug
  python main.py --mode=report --workdir=runs/aug

Cost on 2 CPU cores: ~300 steps per trial, about a minute each; 9 trials. Results and their
reading: docs/data.md.
"""

import ml_collections

from configs import common, default
from configs.declare import axis

CONDITIONS = {
    'none': {'augment.crop_padding': 0, 'augment.flip': False},
    'crop_flip': {'augment.crop_padding': 2, 'augment.flip': True},
    'wu': {'augment.crop_padding': 2, 'augment.flip': True, 'augment.vignetting': 0.4,
           'augment.lens_distortion': 0.15, 'augment.color_cast': 20.0},
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = default.get_config()
  c.dataset.train_size = 1000
  c.num_epochs = 40
  c.eval_every_epochs = 10
  c.log_every_steps = 35
  return common.apply_arg(c, arg)


def get_sweep() -> list[dict]:
  conditions = [{**o, 'sweep.name': name} for name, o in CONDITIONS.items()]
  return [{**c, 'seed': s, 'sweep.name': f"{c['sweep.name']}_seed{s}"}
          for c, s in ((c, s['seed']) for c in conditions for s in axis('seed', [0, 1, 2]))]
