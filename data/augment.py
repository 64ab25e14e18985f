"""On-device batch preparation: augmentation and normalization inside the jitted step.

All functions are pure JAX on a batch (N, *spatial, C); per-example randomness comes from
one key, so the result does not depend on how the batch is sharded over devices.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


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


def augment(key: jax.Array, x: jax.Array, crop_padding: int, flip: bool) -> jax.Array:
  k_crop, k_flip = jax.random.split(key)
  x = random_crop(k_crop, x, crop_padding)
  return random_flip(k_flip, x) if flip else x


def normalize(x: jax.Array, mean: jax.Array, std: jax.Array) -> jax.Array:
  """uint8 -> float32, per-channel standardized with the training set's statistics."""
  return (x.astype(jnp.float32) - mean) / std
