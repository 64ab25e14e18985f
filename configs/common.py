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
      'init': '',                                    # he | xavier | xavier_relu | lecun | orthogonal
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
