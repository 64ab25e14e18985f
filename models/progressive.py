"""Rusu et al. 2016's progressive network with two columns, the model of a `finetune.progressive`
run (train/transfer.py loads column A from the source run and freezes it)."""

from __future__ import annotations

import flax.linen as nn
import jax


class Progressive(nn.Module):
  """Rusu et al.'s progressive network with two columns: `column_a` (the source network, always
  in inference mode and behind stop_gradient) and `column_b` (same architecture, new head). The
  input of every layer of column B but the first gets a lateral connection from the input of
  the same layer of column A: a 1x1 convolution (a dense map for flat features), zero at
  initialization, so training starts from an independent column."""
  column_a: nn.Module
  column_b: nn.Module

  @nn.compact
  def __call__(self, x, train: bool = False):
    inputs_a: dict[str, jax.Array] = {}

    def grab(next_fun, args, kwargs, context):
      path = context.module.path
      if (context.method_name == '__call__' and len(path) == 2 and path[0] == 'column_a'
          and path[1] not in inputs_a):
        inputs_a[path[1]] = args[0]
      return next_fun(*args, **kwargs)

    with nn.intercept_methods(grab):
      self.column_a(x, train=False)
    names = list(inputs_a)[1:]
    lateral = {}
    for n in names:
      a = jax.lax.stop_gradient(inputs_a[n])
      if a.ndim > 2:
        lateral[n] = nn.Conv(a.shape[-1], (1,) * (a.ndim - 2), kernel_init=nn.initializers.zeros,
                             name=f'lateral_{n}')(a)
      else:
        lateral[n] = nn.Dense(a.shape[-1], kernel_init=nn.initializers.zeros,
                              name=f'lateral_{n}')(a)

    def add(next_fun, args, kwargs, context):
      path = context.module.path
      if (context.method_name == '__call__' and len(path) == 2 and path[0] == 'column_b'
          and path[1] in lateral and lateral[path[1]].shape == args[0].shape):
        args = (args[0] + lateral.pop(path[1]).astype(args[0].dtype), *args[1:])
      return next_fun(*args, **kwargs)

    with nn.intercept_methods(add):
      return self.column_b(x, train=train)
