"""Magnitude pruning (Han et al. 2015, "Learning both Weights and Connections"; stage 1 of Deep
Compression): which kernels are pruned, the masks, and an optax wrapper that keeps the pruned
weights at exactly zero while the run's own optimizer retrains the rest.

Only kernels are pruned (conv: ndim >= 3, dense: ndim 2); biases and normalization parameters
are a few hundred numbers per layer and stay dense, as in the paper. Layers are named by their
path in the params tree ('ConvNormAct_3/Conv_0/kernel').
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from errors import UserError

KINDS = ('conv', 'dense')
SCOPES = ('layer', 'global')


def flatten(tree) -> dict[str, Any]:
  """{'A/B/kernel': leaf} of a nested params dict."""
  return flax.traverse_util.flatten_dict(dict(tree), sep='/')


def unflatten(flat: dict[str, Any]) -> dict:
  return flax.traverse_util.unflatten_dict(flat, sep='/')


def kind(name: str, shape) -> str | None:
  """'conv' or 'dense' for a prunable kernel, None for everything else."""
  if not name.endswith('kernel'):
    return None
  return 'dense' if len(shape) == 2 else 'conv' if len(shape) >= 3 else None


def kernels(params) -> dict[str, str]:
  """{layer name: kind} of the prunable kernels, in params-tree order."""
  return {n: k for n, v in flatten(params).items() if (k := kind(n, np.shape(v)))}


def parse_spec(text: str, what: str, params, cast=float) -> dict[str, Any]:
  """'conv=0.65,dense=0.92,ConvNormAct_0=0.3' -> {layer name: value} for every prunable kernel:
  a layer's own entry (any part of its path that names it alone) wins over its kind's."""
  layers = kernels(params)
  by_kind, by_layer = {}, {}
  for item in filter(None, (s.strip() for s in text.split(','))):
    key, sep, value = item.partition('=')
    try:
      v = cast(value)
    except ValueError:
      v = None
    if not sep or v is None:
      raise UserError(f'{what}: {item!r} is not KIND=VALUE or LAYER=VALUE (e.g. conv=0.65,'
                      'dense=0.92)')
    if key in KINDS:
      by_kind[key] = v
      continue
    match = [n for n in layers if _names(n, key)]
    if len(match) != 1:
      names = ', '.join(list(layers)[:6])
      raise UserError(f'{what}: {key!r} names {"no" if not match else "more than one"} '
                      f'prunable layer (conv, dense or one of {names}, ...)')
    by_layer[match[0]] = v
  out = {n: by_layer.get(n, by_kind.get(k)) for n, k in layers.items()}
  missing = sorted({layers[n] for n, v in out.items() if v is None})
  if missing:
    raise UserError(f'{what}: no value for the {", ".join(missing)} layers; add e.g. '
                    f'{missing[0]}=...')
  return out


def _names(layer: str, key: str) -> bool:
  """Whether `key` ('ConvNormAct_3', 'ConvNormAct_3/Conv_0', the full path) is a contiguous
  run of `layer`'s path components."""
  parts, want = layer.split('/'), key.strip('/').split('/')
  return any(parts[i:i + len(want)] == want for i in range(len(parts) - len(want) + 1))


def check_sparsity(sparsity: dict[str, float]) -> None:
  for name, s in sparsity.items():
    if not 0.0 <= s < 1.0:
      raise UserError(f'sparsity of {name} must be in [0, 1) (the fraction of its weights '
                      f'removed), got {s}')


def _keep_top(values: np.ndarray, n_prune: int) -> np.ndarray:
  """Mask keeping all but the `n_prune` smallest |values| (ties broken by position, so the count
  is exact)."""
  order = np.argsort(np.abs(values).ravel(), kind='stable')
  mask = np.ones(values.size, bool)
  mask[order[:n_prune]] = False
  return mask.reshape(values.shape)


def magnitude_masks(params, sparsity: dict[str, float], scope: str = 'layer',
                    previous: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
  """{layer: bool mask} removing the smallest-magnitude weights. 'layer': each layer loses
  round(sparsity * size) weights; 'global': one threshold per kind over all its layers, so the
  kind as a whole reaches its sparsity (its first layer's value). Weights pruned in `previous`
  stay pruned (their magnitude is 0 and they rank first)."""
  if scope not in SCOPES:
    raise UserError(f'pruning scope must be layer or global, got {scope!r}')
  check_sparsity(sparsity)
  flat = {n: np.asarray(v, np.float32) for n, v in flatten(params).items() if n in sparsity}
  if previous:
    flat = {n: np.where(previous[n], v, 0.0) for n, v in flat.items()}
  if scope == 'layer':
    return {n: _keep_top(v, int(round(sparsity[n] * v.size))) for n, v in flat.items()}
  layers = kernels(params)
  masks = {}
  for k in KINDS:
    names = [n for n in flat if layers[n] == k]
    if not names:
      continue
    joined = np.concatenate([flat[n].ravel() for n in names])
    keep = _keep_top(joined, int(round(sparsity[names[0]] * joined.size)))
    for n, part in zip(names, np.split(keep, np.cumsum([flat[n].size for n in names])[:-1])):
      masks[n] = part.reshape(flat[n].shape)
  return masks


def apply_masks(params, masks: dict[str, np.ndarray]):
  """params with the masked-out weights set to zero."""
  flat = flatten(params)
  return unflatten({n: (jnp.where(masks[n], v, jnp.zeros((), v.dtype)) if n in masks else v)
                    for n, v in flat.items()})


def mask_tree(params, masks: dict[str, np.ndarray]):
  """A params-shaped tree: the mask (float32 1/0) of pruned kernels, None elsewhere."""
  flat = flatten(params)
  return unflatten({n: (jnp.asarray(masks[n], jnp.float32) if n in masks else None)
                    for n in flat})


class MaskedState(NamedTuple):
  masks: Any   # params-shaped: 1/0 float32 for pruned kernels, None for the rest
  inner: Any


def masked(inner: optax.GradientTransformation, masks: dict[str, np.ndarray]
           ) -> optax.GradientTransformation:
  """`inner` with the pruned weights frozen at exactly zero: their gradients are zeroed before
  `inner` (no momentum builds up) and their updates after it (weight decay adds w * 0 = 0 and
  is zeroed anyway). The masks live in the optimizer state, so checkpoints carry them and a
  resumed run keeps the same connections."""

  def apply(tree, m):
    return jax.tree_util.tree_map(lambda x, mm: x if mm is None else x * mm, tree, m,
                                  is_leaf=lambda x: x is None)

  def init(params):
    return MaskedState(masks=mask_tree(params, masks), inner=inner.init(params))

  def update(grads, state, params=None):
    updates, inner_state = inner.update(apply(grads, state.masks), state.inner, params)
    return apply(updates, state.masks), MaskedState(masks=state.masks, inner=inner_state)

  return optax.GradientTransformation(init, update)


def report(params, masks: dict[str, np.ndarray] | None = None) -> list[dict]:
  """Per prunable layer: kind, shape, weights, nonzeros and sparsity (of the params themselves,
  so a layer that is exactly zero where its mask says reports the mask's sparsity)."""
  rows = []
  for n, k in kernels(params).items():
    v = np.asarray(flatten(params)[n])
    nz = int(np.count_nonzero(v)) if masks is None else int(np.count_nonzero(v * masks[n]))
    rows.append({'layer': n, 'kind': k, 'shape': 'x'.join(map(str, v.shape)), 'weights': v.size,
                 'nonzero': nz, 'sparsity': round(1 - nz / v.size, 4)})
  return rows


def iteration_sparsity(target: dict[str, float], i: int, iterations: int) -> dict[str, float]:
  """The sparsity of pruning round i (1..iterations): the kept fraction shrinks geometrically to
  the target's, so each round removes the same fraction of what is left (Han et al. prune
  iteratively; the schedule is this implementation's choice)."""
  return {n: 1.0 - (1.0 - s) ** (i / iterations) for n, s in target.items()}
