"""Study: learning from less labelled data. Fashion-MNIST split into two tasks: the source is
classes 0-4 (T-shirt, trouser, pullover, dress, coat; a default run on all 30,000 of their
training images), the target classes 5-9 (sandal, shirt, sneaker, bag, ankle boot) with 10,
100, 1,000 or all 6,000 labelled training images per class, evaluated on their 5,000 test
images. Three ways to learn the target, three seeds each:

  scratch   the default net and recipe from random initialization
  features  feature extraction: the source's layers frozen, only a new head trains
  finetune  every layer starts from the source and trains (a new head), at a tenth of the
            learning rate
  progressive  Rusu et al.'s progressive network: the frozen source column plus a new column
            with lateral connections from it, at the scratch learning rate
The source task is evaluated too, through the source's head (forgetting).

  python main.py --config=configs/default.py --config.dataset.classes=0-4 \
      --workdir=runs/less_data_source
  python main.py --mode=sweep --config=configs/sweeps/less_data.py --workdir=runs/less_data
  python main.py --mode=report --workdir=runs/less_data

The source run must exist first (`init_from` points at it; another path:
`--config=configs/sweeps/less_data.py:init_from=DIR`). Steps per size: batch 50 for 300 steps
(10/class), batch 100 for 400 steps (100/class), 10 epochs (1,000/class), 3 epochs (all), so
the smallest sets get hundreds of passes and the largest a normal schedule. Cost on 2 CPU
cores: 88 minutes for the 48 trials with --parallel=2. Results and reading: docs/less_data.md.
"""

import ml_collections

from configs import common, default
from configs.declare import axis

# per_class -> (batch size, steps or 0, epochs or 0, evaluate every so many epochs)
SIZES = {10: (50, 300, 0, 60), 100: (100, 400, 0, 20), 1000: (128, 0, 10, 2), 0: (128, 0, 3, 1)}
METHODS = {
    'scratch': {'init_from': '', 'finetune.eval_source': False},
    'features': {'finetune.freeze': 'body', 'finetune.eval_source': True},
    'finetune': {'finetune.eval_source': True, 'optimizer.learning_rate': 0.02},
    'progressive': {'finetune.progressive': True, 'finetune.eval_source': True},
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = default.get_config()
  c.dataset.classes = '5-9'
  c.init_from = 'runs/less_data_source'
  c.log_every_steps = 50
  return common.apply_arg(c, arg)


def get_sweep() -> list[dict]:
  trials = []
  for per_class, (batch, steps, epochs, every) in SIZES.items():
    for method, overrides in METHODS.items():
      for s in axis('seed', [0, 1, 2]):
        name = f"{method}_{per_class or 'all'}_seed{s['seed']}"
        trials.append({**overrides, 'dataset.per_class': per_class, 'batch_size': batch,
                       'num_train_steps': steps, 'num_epochs': epochs or 1,
                       'eval_every_epochs': every, 'seed': s['seed'], 'sweep.name': name})
  return trials
