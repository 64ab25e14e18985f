"""Trained quantization by weight sharing (Deep Compression, stage 2): k-means of each pruned
layer's remaining weights into 2^bits centroids, and an optax wrapper that fine-tunes the
centroids, never single weights.

Each layer is described by an int32 `assignment` of its kernel's shape: the cluster of every
kept weight, -1 where the weight is pruned.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from compress import prune
from errors import UserError


def check_bits(bits: dict[str, int]) -> None:
  for name, b in bits.items():
    if not 1 <= b <= 16:
      raise UserError(f'weight-sharing bits of {name} must be in 1..16 (2^bits shared values), '
                      f'got {b}')


def kmeans(values: np.ndarray, k: int, iterations: int = 100) -> tuple[np.ndarray, np.ndarray]:
  """1-D k-means of `values` into at most `k` centroids with linear initialization (evenly
  spaced between min and max, which Han et al. found best: it keeps centroids on the rare
  large weights). Returns (float32 centroids, sorted, int32 assignment per value). Lloyd's
  iterations, the nearest centroid found between sorted midpoints; a cluster left empty (a
  linear grid puts centroids in the gap that pruning leaves around zero) moves to the value
  farthest from its centroid, as scikit-learn's k-means does, so all 2^bits codes get used."""
  values = np.asarray(values, np.float32).ravel().astype(np.float64)
  if values.size == 0:
    return np.zeros(0, np.float32), np.zeros(0, np.int32)
  c = np.unique(np.linspace(values.min(), values.max(), min(k, np.unique(values).size)))
  assign = None
  for _ in range(iterations):
    c = np.sort(c)
    new = np.searchsorted((c[1:] + c[:-1]) / 2, values).astype(np.int32)
    counts = np.bincount(new, minlength=len(c))
    empty = np.flatnonzero(counts == 0)
    if len(empty):
      far = np.argsort(-(values - c[new]) ** 2, kind='stable')
      used, picks = set(c.tolist()), []
      for v in values[far].tolist():
        if len(picks) == len(empty):
          break
        if v not in used:
          used.add(v)
          picks.append(v)
      c[empty[:len(picks)]] = picks
      continue
    if assign is not None and np.array_equal(new, assign):
      break
    assign = new
    c = np.bincount(assign, values, minlength=len(c)) / counts
  c = np.sort(c)
  assign = np.searchsorted((c[1:] + c[:-1]) / 2, values).astype(np.int32)
  used = np.unique(assign)
  remap = np.full(len(c), -1, np.int32)
  remap[used] = np.arange(len(used), dtype=np.int32)
  return c[used].astype(np.float32), remap[assign]


def cluster(params, masks: dict[str, np.ndarray], bits: dict[str, int]
            ) -> tuple[Any, dict[str, np.ndarray], dict[str, np.ndarray]]:
  """(shared params, {layer: centroids}, {layer: assignment}): every kept weight of each layer
  in `masks` replaced by its centroid, pruned weights zero."""
  check_bits(bits)
  flat = prune.flatten(params)
  centroids, assignments, out = {}, {}, dict(flat)
  for n, m in masks.items():
    w = np.asarray(flat[n], np.float32)
    c, a = kmeans(w[m], 2 ** bits[n])
    assign = np.full(w.shape, -1, np.int32)
    assign[m] = a
    centroids[n], assignments[n] = c, assign
    out[n] = jnp.asarray(expand(c, assign))
  return prune.unflatten(out), centroids, assignments


def expand(centroids: np.ndarray, assignment: np.ndarray) -> np.ndarray:
  """The kernel a (centroids, assignment) pair stands for: centroid values, 0 where pruned."""
  return np.where(assignment >= 0, centroids[np.maximum(assignment, 0)], 0).astype(np.float32)


def first_members(assignment: np.ndarray) -> np.ndarray:
  """The flat index of each cluster's first member."""
  a = assignment.ravel()
  first = np.zeros(int(a.max(initial=-1)) + 1, np.int32)
  idx = np.flatnonzero(a >= 0)
  first[a[idx][::-1]] = idx[::-1]
  return first


def extract(params, assignments: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """{layer: centroids} read back from shared params (each cluster's value, from its first
  member)."""
  flat = prune.flatten(params)
  return {n: np.asarray(flat[n]).ravel()[first_members(a)].astype(np.float32)
          for n, a in assignments.items()}


class SharedState(NamedTuple):
  assign: Any   # params-shaped: int32 cluster per weight (-1 pruned) for shared kernels, None else
  first: Any    # params-shaped: int32 index of each cluster's first member, None else
  inner: Any    # the wrapped optimizer's state, over centroid vectors for shared kernels


def shared(inner: optax.GradientTransformation, assignments: dict[str, np.ndarray]
           ) -> optax.GradientTransformation:
  """`inner` run on the centroids: each centroid's gradient is the sum of its members'
  gradients (Deep Compression, eq. 3), `inner` updates the centroids (its momentum, weight
  decay and schedule apply to them), and every member of a cluster receives its centroid's
  update. Members start equal and get the same update, so they stay bitwise equal: a layer
  never holds more than 2^bits distinct values, and pruned weights (-1) stay zero."""

  def trees(params):
    flat = prune.flatten(params)
    assign = {n: (jnp.asarray(assignments[n]) if n in assignments else None) for n in flat}
    first = {n: (jnp.asarray(first_members(assignments[n])) if n in assignments else None)
             for n in flat}
    return prune.unflatten(assign), prune.unflatten(first)

  is_none = lambda x: x is None

  def centroid_params(params, first):
    return jax.tree_util.tree_map(lambda p, f: p if f is None else p.ravel()[f], params, first,
                                  is_leaf=is_none)

  def init(params):
    assign, first = trees(params)
    return SharedState(assign=assign, first=first, inner=inner.init(centroid_params(params, first)))

  def update(grads, state, params=None):
    def summed(g, a, f):
      if a is None:
        return g
      return jax.ops.segment_sum(g.ravel(), jnp.where(a >= 0, a, f.shape[0]).ravel(),
                                 num_segments=f.shape[0] + 1)[:-1]

    g_c = jax.tree_util.tree_map(summed, grads, state.assign, state.first, is_leaf=is_none)
    c = None if params is None else centroid_params(params, state.first)
    u_c, inner_state = inner.update(g_c, state.inner, c)

    def spread(u, a):
      if a is None:
        return u
      return jnp.where(a >= 0, u[jnp.maximum(a, 0)], jnp.zeros((), u.dtype))

    updates = jax.tree_util.tree_map(spread, u_c, state.assign, is_leaf=is_none)
    return updates, SharedState(assign=state.assign, first=state.first, inner=inner_state)

  return optax.GradientTransformation(init, update)


def distinct_values(params, names) -> dict[str, int]:
  """Distinct nonzero values per layer (the test of sharing)."""
  flat = prune.flatten(params)
  return {n: int(np.unique(np.asarray(flat[n])[np.asarray(flat[n]) != 0]).size) for n in names}
