"""Training-batch preparation: augmentations as named ops, and the input normalization.

Every op is pure JAX on a batch (N, *spatial, C) and takes its randomness from one key, so the
result does not depend on how the batch is sharded over devices. `pipeline(config.augment)` is
the list of ops a run applies, in order, and `apply` is the one place they run: ops on raw
pixels, then the normalization, then ops on normalized inputs (cutout's zero is the mean).
A new augmentation is a function here, an entry in OPS and an `augment.*` config key.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from errors import UserError


def random_crop(key: jax.Array, x: jax.Array, padding: int) -> jax.Array:
  """Zero-pads every spatial dim by `padding` and crops back at a random offset per example."""
  if padding <= 0:
    return x
  n, *spatial, c = x.shape
  pad = [(0, 0)] + [(padding, padding)] * len(spatial) + [(0, 0)]
  xp = jnp.pad(x, pad)
  offsets = jax.random.randint(key, (n, len(spatial)), 0, 2 * padding + 1)

  def crop(img, off):
    return jax.lax.dynamic_slice(img, (*off, 0), (*spatial, c))

  return jax.vmap(crop)(xp, offsets)


def random_flip(key: jax.Array, x: jax.Array) -> jax.Array:
  """Mirrors a random half of the examples along the last spatial axis (width)."""
  flip = jax.random.bernoulli(key, 0.5, (x.shape[0],) + (1,) * (x.ndim - 1))
  return jnp.where(flip, jnp.flip(x, axis=-2), x)


def cutout(key: jax.Array, x: jax.Array, size: int) -> jax.Array:
  """Zeroes one `size`-wide square (cube, segment: every spatial dim) per example, centred
  uniformly over the input so it may hang over the border (DeVries & Taylor 2017, "Improved
  Regularization of Convolutional Neural Networks with Cutout"). Applied to normalized inputs,
  zero is the training set's mean."""
  if size <= 0:
    return x
  n, *spatial, _ = x.shape
  cut = jnp.ones((n,) + (1,) * (x.ndim - 1), bool)
  for axis, (k, extent) in enumerate(zip(jax.random.split(key, len(spatial)), spatial)):
    start = jax.random.randint(k, (n,), 0, extent) - size // 2
    pos = jnp.arange(extent)
    inside = (pos >= start[:, None]) & (pos < start[:, None] + size)   # (n, extent)
    shape = [n] + [1] * (x.ndim - 1)
    shape[axis + 1] = extent
    cut = cut & inside.reshape(shape)
  return jnp.where(cut, jnp.zeros((), x.dtype), x)


@dataclasses.dataclass(frozen=True)
class Preprocess:
  """The input normalization a run trained with: uint8-range pixels -> per-channel
  standardized float32, with the training set's mean and std in pixel units (0-255).
  Saved with every checkpoint and in results.json, so an analysis feeds a trained net exactly
  what it saw; `x` may be uint8 or float pixels in [0, 255] (attacks work in that range)."""
  mean: tuple[float, ...]
  std: tuple[float, ...]

  def __call__(self, x: jax.Array) -> jax.Array:
    mean = jnp.asarray(np.asarray(self.mean, np.float32))
    std = jnp.asarray(np.asarray(self.std, np.float32))
    return (x.astype(jnp.float32) - mean) / std

  def to_pixels(self, x: jax.Array) -> jax.Array:
    """The inverse: normalized inputs back to float pixels in [0, 255]."""
    return x * jnp.asarray(np.asarray(self.std, np.float32)) + jnp.asarray(
        np.asarray(self.mean, np.float32))

  @classmethod
  def from_images(cls, images: np.ndarray) -> 'Preprocess':
    """Per-channel statistics of uint8 training images (std at least 1, as for constant data)."""
    axes = tuple(range(images.ndim - 1))
    mean = images.mean(axis=axes, dtype=np.float64).astype(np.float32)
    std = np.maximum(images.std(axis=axes, dtype=np.float64), 1.0).astype(np.float32)
    return cls(tuple(float(m) for m in mean), tuple(float(s) for s in std))

  def to_json(self) -> dict:
    return {'mean': list(self.mean), 'std': list(self.std), 'pixel_range': [0, 255]}

  @classmethod
  def from_json(cls, d: dict) -> 'Preprocess':
    return cls(tuple(float(m) for m in d['mean']), tuple(float(s) for s in d['std']))


@dataclasses.dataclass(frozen=True)
class Op:
  """One augmentation: `fn(key, x)`, on raw pixels or after the normalization."""
  name: str
  fn: Callable[[jax.Array, jax.Array], jax.Array]
  normalized: bool = False


# Each op's key from the step's augmentation key (the derivation the ops have always used,
# so a run resumed across versions sees the same randomness).
_KEYS = {'crop': lambda k: jax.random.split(k)[0], 'flip': lambda k: jax.random.split(k)[1],
         'cutout': lambda k: jax.random.fold_in(k, 1)}

# name -> (config key that switches it on, op builder from that value, on normalized inputs)
OPS = {
    'crop': ('crop_padding', lambda v: lambda k, x: random_crop(k, x, v), False),
    'flip': ('flip', lambda v: random_flip, False),
    'cutout': ('cutout', lambda v: lambda k, x: cutout(k, x, v), True),
}


def check(aug_cfg) -> None:
  for key in ('crop_padding', 'cutout'):
    if aug_cfg[key] < 0:
      raise UserError(f'augment.{key} must be >= 0 (0 = off), got {aug_cfg[key]}')


def pipeline(aug_cfg) -> tuple[Op, ...]:
  """The ops `config.augment` switches on, in the order they run."""
  return tuple(Op(name, build(aug_cfg[key]), normalized)
               for name, (key, build, normalized) in OPS.items() if aug_cfg[key])


def apply(ops: tuple[Op, ...], key: jax.Array, images: jax.Array,
          preprocess: Callable[[jax.Array], jax.Array]) -> jax.Array:
  """uint8 images -> the normalized, augmented training inputs."""
  x = images
  for op in ops:
    if not op.normalized:
      x = op.fn(_KEYS[op.name](key), x)
  x = preprocess(x)
  for op in ops:
    if op.normalized:
      x = op.fn(_KEYS[op.name](key), x)
  return x
