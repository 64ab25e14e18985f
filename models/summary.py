"""Model size and cost: parameter count and multiply-accumulates of one forward pass."""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


def count_params(params) -> int:
  return int(sum(math.prod(p.shape) for p in jax.tree_util.tree_leaves(params)))


def params_and_macs(model: nn.Module, input_shape: Sequence[int]) -> tuple[int, int]:
  """(trainable parameters, MACs of one example's inference forward pass).

  Parameters come from `jax.eval_shape` (nothing is allocated); MACs from XLA's cost analysis
  of the compiled forward pass (flops / 2), which counts convolutions and dense layers exactly.
  """
  x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(x.shape), train=False))
  fwd = jax.jit(lambda v, inp: model.apply(v, inp, train=False))
  cost = fwd.lower(variables, x).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return count_params(variables['params']), int(round(cost.get('flops', 0.0) / 2))
