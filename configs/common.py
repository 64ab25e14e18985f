"""Pieces every config file shares: the uniform model knobs and the `:key=value` argument.

Config files are loaded by path (`--config=configs/x.py:arg`), so they import this module as
`configs.common`; `main.py` sits at the repository root, which is on `sys.path`.
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from errors import UserError

# Short names accepted in the config argument: `configs/default.py:model=simplenet_cifar_5m`.
ALIASES = {'model': 'model.name', 'dataset': 'dataset.name', 'optimizer': 'optimizer.name',
           'schedule': 'schedule.name'}


def model_config(name: str) -> ml_collections.ConfigDict:
  """The knobs every model understands (families ignore those that do not apply; each
  family's docstring in models/ says what its knobs mean).

  Empty / None values mean "the named variant's reference value".
  """
  return ml_collections.ConfigDict({
      'name': name,
      'width_multiplier': 1.0,
      # Depth as the family names it: convs (SimpleNet, SimpNet), weight layers (VGG 11-19,
      # ResNet 18-152 or 6n+2, DenseNet 121 or 6n+4).
      'depth': config_dict.placeholder(int),
      'widths': '',                                  # per-conv (plain nets) or per-stage widths
      'layers': '',                                  # a layout (plain nets) or blocks per stage
      'one_by_one': 'default',                       # default | none | early | middle | end | '3,7'
      'num_one_by_one': config_dict.placeholder(int),
      'kernel_size': config_dict.placeholder(int),
      'norm': '',                                    # batch | none
      'activation': '',                              # relu leaky_relu elu gelu sigmoid tanh
      'init': '',                                    # he | xavier | xavier_relu | lecun | orthogonal | small_normal
      'dropout': config_dict.placeholder(float),
      'pool': '',                                    # max | avg | conv (strided conv)
      'global_pool': '',                             # max | avg
      'conv_bias': config_dict.placeholder(bool),
      'aux_heads': False,                            # GoogLeNet's auxiliary classifiers
  })


def _convert(old, text: str, key: str):
  if isinstance(old, bool):
    if text.lower() in ('1', 'true', 'yes'):
      return True
    if text.lower() in ('0', 'false', 'no'):
      return False
    raise UserError(f'config argument {key}={text!r}: expected true or false')
  try:
    return type(old)(text) if old is not None else text
  except ValueError:
    raise UserError(f'config argument {key}={text!r}: expected a {type(old).__name__}') from None


def apply_arg(config: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
  """Applies 'key=value,key2=value2' (dotted keys or ALIASES) to `config`; unknown keys fail."""
  for item in filter(None, (arg or '').split(',')):
    key, sep, value = item.partition('=')
    if not sep:
      raise UserError(f'config argument {item!r} is not key=value')
    key = ALIASES.get(key.strip(), key.strip())
    node = config
    *parents, leaf = key.split('.')
    for p in parents:
      if p not in node or not isinstance(node[p], ml_collections.ConfigDict):
        raise UserError(f'unknown config key {key!r} in the config argument')
      node = node[p]
    if leaf not in node:
      raise UserError(f'unknown config key {key!r} in the config argument')
    with node.unlocked():
      node[leaf] = _convert(node[leaf], value.strip(), key)
  return config


def pop_switch(arg: str | None, name: str) -> tuple[bool, str]:
  """('small,batch_size=64', 'small') -> (True, 'batch_size=64'): a bare word in the config
  argument that switches a config file's variant, removed before the key=value items apply."""
  items = [i for i in (arg or '').split(',') if i.strip()]
  found = any(i.strip() == name for i in items)
  return found, ','.join(i for i in items if i.strip() != name)


def small_cpu_variant(c: ml_collections.ConfigDict, model: str) -> None:
  """The `:small` variant of an ImageNet config: `model` at 64x64 on an image folder
  (`dataset.data_dir`), batch 64, 3 epochs, float32: the recipe's shape at a size a CPU runs."""
  c.model.name = model
  c.dataset.name, c.dataset.image_shape, c.dataset.num_workers = 'folder', '64,64,3', 2
  c.augment.rrc_scale = '0.35,1'  # 8% crops of a 64x64 image leave too little to classify
  c.schedule.warmup_epochs = 0.5
  c.ema_decay = 0.0
  c.batch_size = c.eval_batch_size = 64
  c.num_epochs = 3
  c.dtype = 'float32'
  c.log_every_steps = 20
  c.checkpoint_every_steps = 0


def imagenet_data(c: ml_collections.ConfigDict) -> None:
  """ImageNet as the recipes read it: TFDS `imagenet2012` streamed by 8 decoding processes per
  host, Inception random-resized crops (8-100% of the area, aspect 3/4-4/3) and flips for
  training, the 224 centre crop of the image resized to 256 for evaluation."""
  c.dataset.name, c.dataset.pipeline, c.dataset.image_shape = 'imagenet2012', 'streaming', ''
  c.dataset.crop_fraction, c.dataset.num_workers = 0.875, 8
  c.augment.rrc_scale, c.augment.rrc_ratio = '0.08,1', '0.75,1.3333'
  c.augment.crop_padding, c.augment.flip = 0, True
