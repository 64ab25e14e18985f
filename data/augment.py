"""Training-batch preparation: augmentations as named ops, and the input normalization.

Every op is pure JAX on a batch (N, *spatial, C) and takes its randomness from one key, so the
result does not depend on how the batch is sharded over devices. `pipeline(config.augment)` is
the list of ops a run applies, in order, and `apply` is the one place they run: ops on raw
pixels, then the normalization, then ops on normalized inputs (cutout's zero is the mean).
A new augmentation is a function here, an entry in OPS and an `augment.*` config key.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable

import dm_pix as pix
import jax
import jax.numpy as jnp
import numpy as np

from errors import UserError
import util


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


# ------------------------------------------------------------ geometry and photometry (float ops)
# These take uint8 or float pixels and return float32 pixels clipped to [0, 255]; each draws
# one random strength per example from its key, and is the identity at strength 0.


def _pixels(x: jax.Array) -> jax.Array:
  return x.astype(jnp.float32)


def _sample(img: jax.Array, rows: jax.Array, cols: jax.Array) -> jax.Array:
  """Bilinear samples of one (H, W, C) image at fractional (rows, cols), edges repeated."""
  return jnp.stack([jax.scipy.ndimage.map_coordinates(img[..., c], [rows, cols], order=1,
                                                      mode='nearest')
                    for c in range(img.shape[-1])], axis=-1)


def rrc_box(u: np.ndarray, height: int, width: int, scale, ratio, xp=np):
  """Inception-style crop boxes (Szegedy et al. 2015; torchvision's RandomResizedCrop rule):
  area fraction uniform in `scale`, aspect ratio log-uniform in `ratio`, 10 tries, else the
  largest central box of a clamped ratio. `u` is (..., 10, 4) uniforms in [0, 1); returns
  (top, left, h, w) as floats. Shared by the device op and the host pipeline (xp = jnp | np)."""
  area = height * width
  target = area * (scale[0] + (scale[1] - scale[0]) * u[..., 0])
  log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[..., 1]
  aspect = xp.exp(log_r)
  w = xp.round(xp.sqrt(target * aspect))
  h = xp.round(xp.sqrt(target / aspect))
  ok = (w > 0) & (h > 0) & (w <= width) & (h <= height)
  first = xp.argmax(ok, axis=-1)[..., None]
  take = lambda a: xp.take_along_axis(a, first, axis=-1)[..., 0]
  any_ok = ok.any(axis=-1)
  h_t, w_t = take(h), take(w)
  top_t = xp.floor(take(u[..., 2]) * (height - h_t + 1))
  left_t = xp.floor(take(u[..., 3]) * (width - w_t + 1))
  in_ratio = width / height  # the fallback box: the whole image, its ratio clamped to `ratio`
  if in_ratio < ratio[0]:
    fh, fw = round(width / ratio[0]), width
  elif in_ratio > ratio[1]:
    fh, fw = height, round(height * ratio[1])
  else:
    fh, fw = height, width
  h_f = xp.where(any_ok, h_t, fh)
  w_f = xp.where(any_ok, w_t, fw)
  top = xp.where(any_ok, top_t, (height - fh) // 2)
  left = xp.where(any_ok, left_t, (width - fw) // 2)
  return top, left, h_f, w_f


def random_resized_crop(key: jax.Array, x: jax.Array, scale, ratio) -> jax.Array:
  """A random box per example (`rrc_box`), resized bilinearly back to the input size."""
  n, height, width, _ = x.shape
  top, left, h, w = rrc_box(jax.random.uniform(key, (n, 10, 4)), height, width, scale, ratio,
                            xp=jnp)

  def one(img, t, l, bh, bw):
    # Pixel centres of the output grid mapped into the box (align-corners=False convention).
    rows = t + (jnp.arange(height) + 0.5) * bh / height - 0.5
    cols = l + (jnp.arange(width) + 0.5) * bw / width - 0.5
    r, c = jnp.meshgrid(rows, cols, indexing='ij')
    return _sample(img, r, c)

  return jnp.clip(jax.vmap(one)(_pixels(x), top, left, h, w), 0, 255)


def affine(img: jax.Array, theta: jax.Array, zoom: jax.Array) -> jax.Array:
  """One (H, W, C) image rotated by `theta` radians (clockwise as displayed, rows down) and zoomed by
  `zoom` about its centre: dm-pix's affine_transform, bilinear, edges repeated."""
  height, width = img.shape[:2]
  centre = jnp.array([(height - 1) / 2, (width - 1) / 2, 0.0])
  # Output coordinate -> input coordinate: the inverse rotation, divided by the zoom.
  cos, sin = jnp.cos(theta) / zoom, jnp.sin(theta) / zoom
  m = jnp.array([[cos, -sin, 0.0], [sin, cos, 0.0], [0.0, 0.0, 1.0]])
  return pix.affine_transform(img, m, offset=centre - m @ centre, order=1, mode='nearest')


def random_affine(key: jax.Array, x: jax.Array, degrees: float, scale: float) -> jax.Array:
  """`affine` with a rotation of U(-degrees, degrees) and a zoom of U(1 - scale, 1 + scale)."""
  n = x.shape[0]
  k1, k2 = jax.random.split(key)
  theta = jnp.deg2rad(jax.random.uniform(k1, (n,), minval=-degrees, maxval=degrees))
  zoom = jax.random.uniform(k2, (n,), minval=1 - scale, maxval=1 + scale)
  return jnp.clip(jax.vmap(affine)(_pixels(x), theta, zoom), 0, 255)


def color_jitter(key: jax.Array, x: jax.Array, brightness: float, contrast: float,
                 saturation: float) -> jax.Array:
  """dm-pix's random brightness (offset up to +-brightness of the full range), contrast and
  saturation (factors in 1 +- value), each drawn per example, on [0, 1] pixels."""
  keys = jax.random.split(key, (3, x.shape[0]))
  y = _pixels(x) / 255.0
  if brightness:
    y = jax.vmap(lambda k, im: pix.random_brightness(k, im, brightness))(keys[0], y)
  if contrast:
    y = jax.vmap(lambda k, im: pix.random_contrast(k, im, 1 - contrast, 1 + contrast))(keys[1], y)
  if saturation:
    y = jax.vmap(lambda k, im: pix.random_saturation(k, im, 1 - saturation, 1 + saturation))(
        keys[2], jnp.clip(y, 0, 1))
  return jnp.clip(y * 255.0, 0, 255)


def color_cast(key: jax.Array, x: jax.Array, max_offset: float) -> jax.Array:
  """Wu et al. 2015 (Deep Image) color casting: an offset U(-max, max) pixels added to each
  channel of each example (they used +-20 on R, G, B). On one channel it is a brightness shift."""
  n, c = x.shape[0], x.shape[-1]
  offsets = jax.random.uniform(key, (n,) + (1,) * (x.ndim - 2) + (c,), minval=-max_offset,
                               maxval=max_offset)
  return jnp.clip(_pixels(x) + offsets, 0, 255)


def _radius(height: int, width: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Offsets from the centre normalized by the half-diagonal: (dy, dx, r), r = 1 at the corners."""
  half = math.hypot((height - 1) / 2, (width - 1) / 2) or 1.0
  dy = (jnp.arange(height) - (height - 1) / 2)[:, None] / half
  dx = (jnp.arange(width) - (width - 1) / 2)[None, :] / half
  return dy, dx, jnp.sqrt(dy ** 2 + dx ** 2)


def vignetting(key: jax.Array, x: jax.Array, max_strength: float) -> jax.Array:
  """Wu et al.'s vignetting: pixels darkened by 1 - s * r^2 (r = distance from the centre, 1 at
  the corners), s ~ U(0, max_strength) per example: the centre keeps its value."""
  n, height, width = x.shape[:3]
  s = jax.random.uniform(key, (n, 1, 1, 1), maxval=max_strength)
  _, _, r = _radius(height, width)
  return jnp.clip(_pixels(x) * (1 - s * (r ** 2)[None, :, :, None]), 0, 255)


def lens_warp(img: jax.Array, k: jax.Array) -> jax.Array:
  """One (H, W, C) image under the radial model r_src = r (1 + k r^2) (r = 1 at the corners):
  k > 0 barrel (each output pixel samples farther out, so the content bulges toward the
  centre's scale and edges bend inward), k < 0 pincushion. The centre maps to itself."""
  height, width = img.shape[:2]
  dy, dx, r = _radius(height, width)
  half = math.hypot((height - 1) / 2, (width - 1) / 2) or 1.0
  f = 1 + k * r ** 2
  return _sample(img, (height - 1) / 2 + dy * f * half, (width - 1) / 2 + dx * f * half)


def lens_distortion(key: jax.Array, x: jax.Array, max_k: float) -> jax.Array:
  """Wu et al.'s lens distortion: `lens_warp` with k ~ U(-max_k, max_k) per example, bilinear
  with edges repeated."""
  k = jax.random.uniform(key, (x.shape[0],), minval=-max_k, maxval=max_k)
  return jnp.clip(jax.vmap(lens_warp)(_pixels(x), k), 0, 255)


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


# Each op's key from the step's augmentation key (crop/flip/cutout keep the derivation they have
# always used, so a run resumed across versions sees the same randomness).
_KEYS = {'crop': lambda k: jax.random.split(k)[0], 'flip': lambda k: jax.random.split(k)[1],
         'cutout': lambda k: jax.random.fold_in(k, 1)}
for _i, _name in enumerate(('resized_crop', 'affine', 'color', 'color_cast', 'vignetting',
                            'lens_distortion')):
  _KEYS[_name] = functools.partial(lambda k, i: jax.random.fold_in(k, 100 + i), i=_i)


def _range(text: str, key: str) -> tuple[float, float]:
  values = util.parse_list(f'augment.{key}', text, float, example='0.08,1')
  if len(values) != 2:
    raise UserError(f'augment.{key} must be two numbers lo,hi like 0.08,1, got {text!r}')
  return values[0], values[1]


def resized_crop_setting(aug_cfg) -> tuple[tuple[float, float], tuple[float, float]] | None:
  """(scale, ratio) of the random-resized crop, or None when `augment.rrc_scale` is off."""
  if not aug_cfg.rrc_scale:
    return None
  return _range(aug_cfg.rrc_scale, 'rrc_scale'), _range(aug_cfg.rrc_ratio, 'rrc_ratio')


def _resized_crop_op(c):
  scale, ratio = resized_crop_setting(c)
  return lambda k, x: random_resized_crop(k, x, scale, ratio)


def _color_op(c):
  return lambda k, x: color_jitter(k, x, c.brightness, c.contrast, c.saturation)


# name -> (config keys that switch it on, op builder from the config, on normalized inputs), in
# the order the ops run. Geometry first, then photometry, then Wu et al.'s camera effects.
OPS = {
    'resized_crop': (('rrc_scale',), _resized_crop_op, False),
    'crop': (('crop_padding',), lambda c: lambda k, x: random_crop(k, x, c.crop_padding), False),
    'flip': (('flip',), lambda c: random_flip, False),
    'affine': (('rotate', 'scale'), lambda c: lambda k, x: random_affine(k, x, c.rotate, c.scale),
               False),
    'color': (('brightness', 'contrast', 'saturation'), _color_op, False),
    'color_cast': (('color_cast',), lambda c: lambda k, x: color_cast(k, x, c.color_cast), False),
    'vignetting': (('vignetting',), lambda c: lambda k, x: vignetting(k, x, c.vignetting), False),
    'lens_distortion': (('lens_distortion',),
                        lambda c: lambda k, x: lens_distortion(k, x, c.lens_distortion), False),
    'cutout': (('cutout',), lambda c: lambda k, x: cutout(k, x, c.cutout), True),
}
# Ops that a streaming source applies on the host instead (they change the image size).
HOST_OPS = ('resized_crop',)


def check(aug_cfg, channels: int | None = None) -> None:
  for key in ('crop_padding', 'cutout', 'rotate', 'scale', 'brightness', 'contrast',
              'saturation', 'color_cast', 'vignetting', 'lens_distortion'):
    if aug_cfg[key] < 0:
      raise UserError(f'augment.{key} must be >= 0 (0 = off), got {aug_cfg[key]}')
  for key in ('scale', 'contrast', 'saturation', 'vignetting'):
    if aug_cfg[key] >= 1:
      raise UserError(f'augment.{key} must be below 1 (a factor range 1 +- it), got {aug_cfg[key]}')
  if aug_cfg.saturation and channels is not None and channels != 3:
    raise UserError(f'augment.saturation needs RGB images; this dataset has {channels} channel(s)')
  if aug_cfg.rrc_scale:
    (lo, hi), (rlo, rhi) = resized_crop_setting(aug_cfg)
    if not (0 < lo <= hi <= 1) or not (0 < rlo <= rhi):
      raise UserError(f'augment.rrc_scale must be 0 < lo <= hi <= 1 and rrc_ratio 0 < lo <= hi, '
                      f'got {aug_cfg.rrc_scale!r} and {aug_cfg.rrc_ratio!r}')


def pipeline(aug_cfg, skip: tuple[str, ...] = ()) -> tuple[Op, ...]:
  """The ops `config.augment` switches on, in the order they run (less those in `skip`)."""
  return tuple(Op(name, build(aug_cfg), normalized)
               for name, (keys, build, normalized) in OPS.items()
               if name not in skip and any(aug_cfg[k] for k in keys))


def on_pixels(ops: tuple[Op, ...], key: jax.Array, images: jax.Array) -> jax.Array:
  """The ops on raw pixels (what `--mode=augment` shows): uint8 in, [0, 255] pixels out."""
  x = images
  for op in ops:
    if not op.normalized:
      x = op.fn(_KEYS[op.name](key), x)
  return x


def apply(ops: tuple[Op, ...], key: jax.Array, images: jax.Array,
          preprocess: Callable[[jax.Array], jax.Array]) -> jax.Array:
  """uint8 images -> the normalized, augmented training inputs."""
  x = preprocess(on_pixels(ops, key, images))
  for op in ops:
    if op.normalized:
      x = op.fn(_KEYS[op.name](key), x)
  return x
