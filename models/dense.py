"""Dense prediction: networks that give every pixel a score per class, (N, H, W) -> (N, H', W',
classes). Every model here sets `dense = True`; the segmentation task refuses any other.

FCN-32s / 16s / 8s (Long, Shelhamer & Darrell, CVPR 2015) over a backbone of the zoo: the
backbone's conv layout (models/layout.py, so `widths`, `width_multiplier`, `depth` and
`one_by_one` rewrite it as they do the classifier), its dense layers as convolutions (VGG-16's
fc6 7x7x4096 and fc7 1x1x4096; SimpleNet has none), a 1x1 class-score layer, then upsampling:
  fcn32s  the coarsest scores upsampled by the backbone's whole stride;
  fcn16s  2x upsampled and summed with 1x1 scores of the last pool but one ("pool4");
  fcn8s   again 2x and summed with scores of the pool before it ("pool3").
`backbone=vgg16` (5 pools: strides 32/16/8, as in the paper) | `simplenet` (the 310K CIFAR
layout, 4 pools: strides 16/8/4). `upsampling=learned` is the paper's: the 2x steps are
transposed convolutions initialized to bilinear interpolation (class to same class) and learned,
the final upsampling is fixed bilinear; `bilinear` fixes every step (`jax.image.resize`). The skip scores start at zero, as in the paper, so every variant starts as
FCN-32s. Deviation: fc6 pads its 7x7 convolution ('SAME') where the paper pads the input by 100
pixels and crops; it keeps the parameter count and works at any input size divisible by the stride.

U-Net (Ronneberger, Fischer & Brox, MICCAI 2015): `depth` 2x2 max-pool steps (4), two 3x3 convs
per level starting at 64 filters doubling per level (`width_multiplier` scales them), 2x2 up-
convolutions halving the filters, skip features concatenated (centre-cropped under valid
padding), a 1x1 class-score layer: 23 convolutions at depth 4. `padding=valid` is the paper's
(572x572 in -> 388x388 out, 31,030,658 parameters for 1 channel in and 2 classes);
`padding=same` keeps the size (for small images; the input must divide by 2**depth).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from errors import UserError
from models import layers, simplenet, vgg
from models.layout import POOL, resolve_layout
from models.registry import register

UPSAMPLING = ('learned', 'bilinear')


def bilinear_kernel(factor: int, classes: int) -> np.ndarray:
  """The (2f, 2f, classes, classes) transposed-convolution kernel of bilinear upsampling by an
  even factor f, class c to class c only (FCN's `upsample_filt` rule): with the output cropped
  by f/2 on each side it interpolates at half-pixel centres, as `jax.image.resize` does, except
  within f/2 pixels of the border, where resize repeats the edge and this fades to zero."""
  size = 2 * factor
  centre = factor - 0.5
  og = np.arange(size)
  w1 = 1 - np.abs(og - centre) / factor
  k = np.zeros((size, size, classes, classes), np.float32)
  k[:, :, np.arange(classes), np.arange(classes)] = np.outer(w1, w1)[:, :, None]
  return k


class Upsample(nn.Module):
  """Scores upsampled by an even `factor`: learned (initialized bilinear) or fixed bilinear."""
  factor: int
  learned: bool

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    n, h, w, c = x.shape
    f = self.factor
    if not self.learned:
      return jax.image.resize(x, (n, h * f, w * f, c), 'bilinear')
    kernel = self.param('kernel', lambda key: jnp.asarray(bilinear_kernel(f, c)))
    y = jax.lax.conv_transpose(x, kernel.astype(x.dtype), (f, f), 'VALID',
                               dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    return y[:, f // 2: f // 2 + h * f, f // 2: f // 2 + w * f, :]


# backbone -> (conv layout, fc layers as (width, kernel), family's reference knobs)
BACKBONES = {
    'vgg16': (vgg.CONFIGS[16], ((4096, 7), (4096, 1)),
              dict(norm='none', act='relu', init='he', pool='max', dropout=0.5)),
    'simplenet': (simplenet.CIFAR_LAYOUTS['simplenet_cifar_310k'], (),
                  dict(norm='batch', act='relu', init='xavier_relu', pool='max', dropout=0.0,
                       bn_momentum=0.95)),
}


class FCN(nn.Module):
  """See the module docstring. `skips` is 0 (32s), 1 (16s) or 2 (8s)."""
  layout: tuple
  fc: tuple
  k: layers.Knobs
  num_classes: int
  skips: int
  learned: bool
  dense = True

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    k = self.k
    height, width = x.shape[1:3]
    x = x.astype(k.dtype)
    pooled = []  # the output of every pool, finest first
    for t in self.layout:
      if t == POOL:
        x = k.downsample(x, train)
        pooled.append(x)
      else:
        x = k.conv(t.width, kernel=t.kernel, stride=t.stride,
                   norm=k.norm if t.norm else 'none')(x, train)
    stride = 2 ** len(pooled)
    if height % stride or width % stride:
      raise UserError(f'{self.name or "fcn"}: input {height}x{width} must be divisible by the '
                      f'backbone stride {stride}; set --config.dataset.image_shape to a multiple')
    for i, (w, kernel) in enumerate(self.fc):
      x = k.conv(k.width(w), kernel=kernel, norm='none', name=f'fc{6 + i}')(x, train)
      x = nn.Dropout(k.dropout, deterministic=not train)(x)
    score = nn.Conv(self.num_classes, (1, 1), kernel_init=nn.initializers.zeros if self.fc else
                    layers.initializer(k.init), dtype=k.dtype, name='score')(x)
    for i in range(self.skips):  # fuse with the scores of earlier pools, 2x at a time
      feat = pooled[-2 - i]
      score = Upsample(2, self.learned, name=f'upscore{i}')(score)
      score = score + nn.Conv(self.num_classes, (1, 1), kernel_init=nn.initializers.zeros,
                              dtype=k.dtype, name=f'score_pool{len(pooled) - 1 - i}')(feat)
    factor = stride // 2 ** self.skips
    out = Upsample(factor, False, name='upscore_final')(score) if factor > 1 else score
    return out.astype(jnp.float32)


def build_fcn(knobs: dict, num_classes: int, dtype: Any, *, skips: int) -> FCN:
  name = knobs.get('backbone') or 'vgg16'
  if name not in BACKBONES:
    raise UserError(f'unknown FCN backbone {name!r}; use {" | ".join(BACKBONES)}')
  upsampling = knobs.get('upsampling') or 'learned'
  if upsampling not in UPSAMPLING:
    raise UserError(f'unknown upsampling {upsampling!r}; use {" | ".join(UPSAMPLING)}')
  layout, fc, ref = BACKBONES[name]
  k = layers.resolve_knobs(knobs, dtype, one_by_one=None, global_pool=None,
                           uses=('depth', 'widths', 'layers', 'one_by_one', 'num_one_by_one'),
                           **ref)
  if k.pool == 'conv':
    raise UserError('FCN taps its skip scores after pooling layers; use pool=max or avg')
  resolved = tuple(resolve_layout(layout, knobs))
  pools = sum(t == POOL for t in resolved)
  if pools < skips + 1:
    raise UserError(f'fcn with {skips} skip(s) needs at least {skips + 1} pools in the backbone '
                    f'layout; it has {pools}')
  return FCN(layout=resolved, fc=fc, k=k, num_classes=num_classes, skips=skips,
             learned=upsampling == 'learned')


for _skips, _name in enumerate(('fcn32s', 'fcn16s', 'fcn8s')):
  register(_name, build_fcn, skips=_skips)


class UpConv(nn.Module):
  """U-Net's 2x2 stride-2 up-convolution as one matmul: each input pixel writes its own 2x2
  output block (no overlap), so no convolution is needed. Same parameters, initialization and
  outputs as `nn.ConvTranspose(features, (2, 2), strides=(2, 2))` (tested); XLA:CPU's gradient
  of that transposed convolution took ~20x this matmul's time (46 vs 2.3 ms at 32x32x32 -> 16)."""
  features: int
  kernel_init: Any
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param('kernel', self.kernel_init, (2, 2, x.shape[-1], self.features))
    bias = self.param('bias', nn.initializers.zeros, (self.features,))
    # ConvTranspose without transpose_kernel applies the kernel flipped in space.
    y = jnp.einsum('nhwc,abcd->nhawbd', x.astype(self.dtype),
                   kernel[::-1, ::-1].astype(self.dtype))
    n, h, _, w, _, d = y.shape
    return y.reshape(n, 2 * h, 2 * w, d) + bias.astype(self.dtype)


def _centre_crop(x: jax.Array, height: int, width: int) -> jax.Array:
  top, left = (x.shape[1] - height) // 2, (x.shape[2] - width) // 2
  return x[:, top: top + height, left: left + width, :]


class UNet(nn.Module):
  """See the module docstring."""
  k: layers.Knobs
  num_classes: int
  depth: int = 4
  valid: bool = True
  dense = True

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    k = self.k
    pad = 'VALID' if self.valid else 'SAME'

    def block(x, features, name):  # a local function, not a method: no extra name scope
      for i in range(2):
        x = k.conv(features, kernel=3, padding=pad, name=f'{name}_conv{i}')(x, train)
      return x

    size = x.shape[1:3]
    if not self.valid and (size[0] % 2 ** self.depth or size[1] % 2 ** self.depth):
      raise UserError(f'unet (padding=same, depth {self.depth}): input {size[0]}x{size[1]} must '
                      f'be divisible by {2 ** self.depth}')
    if self.valid:
      s = np.array(size)
      for _ in range(self.depth):
        s = s - 4
        if (s % 2).any() or (s < 2).any():
          raise UserError(f'unet (padding=valid, depth {self.depth}): input {size[0]}x{size[1]} '
                          'does not halve evenly through valid convolutions (572x572 as in the '
                          'paper works); use another size or --config.model.padding=same')
        s = s // 2
      if (s - 4 < 1).any():
        raise UserError(f'unet (padding=valid): input {size[0]}x{size[1]} is too small for '
                        f'depth {self.depth}; use --config.model.padding=same')
    x = x.astype(k.dtype)
    skips = []
    for level in range(self.depth):
      x = block(x, k.width(64 * 2 ** level), f'down{level}')
      skips.append(x)
      x = layers.pool(x, 'max', 2, 2)
    x = block(x, k.width(64 * 2 ** self.depth), 'bottom')
    x = nn.Dropout(k.dropout, deterministic=not train)(x)
    for level in reversed(range(self.depth)):
      features = k.width(64 * 2 ** level)
      x = UpConv(features, layers.initializer(k.init), k.dtype, name=f'upconv{level}')(x)
      skip = _centre_crop(skips[level], x.shape[1], x.shape[2])
      x = block(jnp.concatenate([skip, x], axis=-1), features, f'up{level}')
    return nn.Conv(self.num_classes, (1, 1), kernel_init=layers.initializer(k.init),
                   dtype=k.dtype, name='score')(x).astype(jnp.float32)


def build_unet(knobs: dict, num_classes: int, dtype: Any) -> UNet:
  padding = knobs.get('padding') or 'valid'
  if padding not in ('valid', 'same'):
    raise UserError(f'unknown unet padding {padding!r}; use valid | same')
  k = layers.resolve_knobs(knobs, dtype, norm='none', act='relu', init='he', pool=None,
                           global_pool=None, uses=('depth',))
  return UNet(k=k, num_classes=num_classes, depth=k.depth or 4, valid=padding == 'valid')


register('unet', build_unet)
