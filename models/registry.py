"""Name -> model constructor. Adding a model is one file in models/ plus `register` calls.

A builder receives the uniform knob dict (`config.model` as a plain dict, see
configs/common.py:model_config, plus the run's `convolutions`, see models/layers.ConvNormAct),
the class count and the compute dtype, and returns a Flax
linen Module whose `__call__(x, train)` maps a batch (N, *spatial, C) to logits. Builders
resolve and validate every knob in Python, so a bad knob fails before anything compiles.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn

from errors import UserError

Builder = Callable[[dict, int, Any], nn.Module]
_REGISTRY: dict[str, tuple[Builder, dict]] = {}


def register(name: str, builder: Builder, **variant: Any) -> None:
  """Registers `name`; `variant` holds knob values that define this named variant."""
  if name in _REGISTRY:
    raise ValueError(f'model {name!r} registered twice')
  _REGISTRY[name] = (builder, variant)


def names() -> list[str]:
  return sorted(_REGISTRY)


def create(model_cfg, num_classes: int, dtype: Any = 'float32',
           convolutions: Any = None) -> nn.Module:
  """Builds the module named `model_cfg.name` with the knobs in `model_cfg`.

  `convolutions` (kernels.convolutions.Convolutions) picks the convolution every conv layer
  calls; None is `lax.conv_general_dilated`, which runs anywhere.
  """
  knobs = dict(model_cfg.to_dict() if hasattr(model_cfg, 'to_dict') else model_cfg)
  knobs['convolutions'] = convolutions
  name = knobs.get('name')
  if name not in _REGISTRY:
    raise UserError(f'unknown model {name!r}; known models: {", ".join(names())}')
  builder, variant = _REGISTRY[name]
  if num_classes < 1:
    raise UserError(f'num_classes must be positive, got {num_classes}')
  return builder(knobs, num_classes, dtype, **variant)
