"""Study: FCN-32s vs FCN-16s vs FCN-8s over one backbone (SimpleNet-310K), and U-Net beside
them, on the generated Fashion-MNIST scenes of configs/segmentation.py, 3 seeds each, the
config's recipe (8 epochs of 2,048 scenes at batch 32, SGD + one-cycle). The paper's ordering
(Long et al. 2015, VOC 2011 val mean IU): 59.4 / 62.4 / 62.7. Results in docs/segmentation.md.

  python main.py --mode=sweep --config=configs/sweeps/segmentation.py --workdir=runs/segmentation
  python main.py --mode=report --workdir=runs/segmentation
"""

import ml_collections

from configs import segmentation
from configs.declare import axis, product
from configs.sweeps import SEEDS

REFERENCE = 'fcn32s'


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  return segmentation.get_config(arg)


def get_sweep() -> list[dict]:
  nets = [{'sweep.name': name, 'model.name': name,
           **{f'model.{k}': v for k, v in segmentation.PRESETS[name].items()}}
          for name in ('fcn32s', 'fcn16s', 'fcn8s', 'unet')]
  # Seed-major: a sweep cut short has every network at the first seeds.
  return product(axis('seed', list(SEEDS)), nets)
