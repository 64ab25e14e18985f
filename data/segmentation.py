"""Data for dense prediction: per-pixel class masks next to the images.

A mask is uint8 (H, W) of class indices; `IGNORE` (255, the Pascal VOC convention) marks pixels
that count in no loss and no metric (VOC's object borders, padding added by augmentation).

* `fashion_mnist_scenes` (generated, ships with the code): Fashion-MNIST objects (Debian's
  `dataset-fashion-mnist`) pasted on larger canvases with striped, noisy backgrounds, possibly
  overlapping (the later object occludes), with their exact masks: class 1 + the Fashion-MNIST
  label where an object's pixel was drawn (its intensity above OBJECT_THRESHOLD), 0 elsewhere.
  Training scenes use Fashion-MNIST's training images and seed 0, test scenes its test images
  and seed 1: deterministic, and the test split never shares an object with training.
* `segmentation_folder`: users' data as Pascal VOC and most segmentation code lay it out,
  `DIR/{train,val}/images/NAME.(png|jpg)` with `DIR/{train,val}/masks/NAME.png` (class-index
  PNGs, palette or grayscale), read through the same in-memory / streaming paths as images.

Training augmentation moves image and mask together: on the device for data in memory
(`augment` below: flip, pad-and-crop, zoom), on the host while streaming (`FolderExamples.load`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from concurrent import futures

import dm_pix as pix
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from data import augment as augment_lib
from data import images as image_io
from errors import UserError

IGNORE = 255
OBJECT_THRESHOLD = 40  # Fashion-MNIST pixels above this are the object (its background is ~0)
SCENE_CLASSES = ('background', 'T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal',
                 'Shirt', 'Sneaker', 'Bag', 'Ankle boot')
DENSE_DATASETS = ('fashion_mnist_scenes', 'segmentation_folder')
# Geometric augmentations that would move pixels without their labels.
UNSUPPORTED_AUGMENT = ('rrc_scale', 'rotate', 'lens_distortion')


# ----------------------------------------------------------------------------- generated scenes


def scenes(objects: np.ndarray, labels: np.ndarray, n: int, height: int, width: int,
           max_objects: int, texture: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """n canvases (uint8 (n, H, W, 1), masks uint8 (n, H, W)) of 1..max_objects objects drawn from
  `objects` (uint8 (M, h, w)) at random scales (0.8-1.6x, capped by the canvas) and positions,
  over a background of stripes at a random angle and period plus noise, whose contrast
  `texture` (0-1) sets."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
  out = np.empty((n, height, width, 1), np.uint8)
  masks = np.zeros((n, height, width), np.uint8)
  oh = objects.shape[1]
  for i in range(n):
    theta, period, phase = rng.uniform(0, math.pi), rng.uniform(4, 16), rng.uniform(0, 2 * math.pi)
    stripes = 0.5 + 0.5 * np.sin(2 * math.pi * (xx * math.cos(theta) + yy * math.sin(theta))
                                 / period + phase)
    background = rng.uniform(0, 40) + texture * (90 * stripes + rng.normal(0, 20, (height, width)))
    canvas = np.clip(background, 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(1, max_objects + 1))):
      j = int(rng.integers(len(objects)))
      size = min(int(round(oh * rng.uniform(0.8, 1.6))), height, width)
      obj = np.asarray(Image.fromarray(objects[j]).resize((size, size), Image.BILINEAR))
      top, left = int(rng.integers(0, height - size + 1)), int(rng.integers(0, width - size + 1))
      drawn = obj > OBJECT_THRESHOLD
      canvas[top:top + size, left:left + size][drawn] = obj[drawn]
      masks[i, top:top + size, left:left + size][drawn] = labels[j] + 1
    out[i, ..., 0] = canvas
  return out, masks


def scene_split(ds_cfg, shape, split: str, objects: np.ndarray, labels: np.ndarray):
  """The generated split as a run sees it: `synthetic_size` training scenes, a quarter of that
  for test (at least one), `max_objects` and `texture` from the config."""
  n = int(ds_cfg.synthetic_size) if split == 'train' else max(1, int(ds_cfg.synthetic_size) // 4)
  return scenes(objects, labels, n, shape[0], shape[1], int(ds_cfg.max_objects),
                float(ds_cfg.texture), 0 if split == 'train' else 1)


def check_scene_config(ds_cfg) -> None:
  if ds_cfg.max_objects < 1:
    raise UserError(f'dataset.max_objects must be at least 1, got {ds_cfg.max_objects}')
  if not 0 <= ds_cfg.texture <= 1:
    raise UserError(f'dataset.texture must be in [0, 1], got {ds_cfg.texture}')


# ----------------------------------------------------------------------------- users' folders


@dataclasses.dataclass(frozen=True)
class MaskFolder:
  root: str
  images: dict   # 'train' | 'test' -> tuple of image paths
  masks: dict    # 'train' | 'test' -> tuple of mask paths (same order)
  shape: tuple   # (H, W, C) of the first training image


def _read_mask(path: str) -> np.ndarray:
  img = image_io.open_image(path)
  if img.mode not in ('L', 'P', '1', 'I', 'I;16'):
    raise UserError(f'mask {path} is a {img.mode} image; masks are single-channel class-index '
                    'PNGs (grayscale or palette), one value per class and 255 for ignore')
  return np.asarray(img).astype(np.int64)


def _check_pair(image_path: str, mask_path: str, num_classes: int) -> None:
  with Image.open(image_path) as img:
    size = img.size
  mask = _read_mask(mask_path)
  if (mask.shape[1], mask.shape[0]) != size:
    raise UserError(f'mask {mask_path} is {mask.shape[0]}x{mask.shape[1]}, its image '
                    f'{image_path} is {size[1]}x{size[0]}; a mask must have its image\'s size')
  bad = np.unique(mask[(mask >= num_classes) & (mask != IGNORE)])
  if bad.size:
    raise UserError(f'mask {mask_path} has value {int(bad[0])}, which is neither a class '
                    f'(0-{num_classes - 1}, dataset.num_classes={num_classes}) nor the ignore '
                    f'label {IGNORE}; fix the mask or set --config.dataset.num_classes')


@functools.lru_cache(maxsize=8)
def scan_folder(root: str, num_classes: int) -> MaskFolder:
  """Lists DIR/{train,val}/{images,masks} and checks every pair (size, mask values) once per
  process, before anything is trained or written: a layout mistake is one UserError."""
  if not root:
    raise UserError('dataset.name=segmentation_folder needs --config.dataset.data_dir=DIR, the '
                    'folder that holds train/images, train/masks, val/images and val/masks')
  files, masks = {}, {}
  for split, sub in image_io.SPLITS.items():
    image_dir, mask_dir = (os.path.join(root, sub, k) for k in ('images', 'masks'))
    if not os.path.isdir(image_dir):
      raise UserError(f'{image_dir} not found; a segmentation folder holds {root}/train/images, '
                      f'{root}/train/masks, {root}/val/images and {root}/val/masks')
    found = sorted(e.path for e in os.scandir(image_dir)
                   if e.is_file() and e.name.lower().endswith(image_io.EXTENSIONS))
    if not found:
      raise UserError(f'{image_dir} holds no images (.png, .jpg, ...)')
    if not os.path.isdir(mask_dir):
      raise UserError(f'{image_dir} has images but {mask_dir} does not exist; put a class-index '
                      'PNG mask of the same name for every image there')
    pairs = []
    for path in found:
      stem = os.path.splitext(os.path.basename(path))[0]
      mask = os.path.join(mask_dir, stem + '.png')
      if not os.path.exists(mask):
        raise UserError(f'image {path} has no mask {mask}; every image needs a class-index PNG '
                        'mask of the same name')
      pairs.append(mask)
    files[split], masks[split] = tuple(found), tuple(pairs)
  with futures.ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:  # PIL frees the GIL
    for split in files:
      list(pool.map(lambda p: _check_pair(*p, num_classes), zip(files[split], masks[split])))
  first = image_io.open_image(files['train'][0])
  shape = (first.height, first.width, 1 if first.mode in ('L', 'I', 'I;16', '1') else 3)
  return MaskFolder(root, files, masks, shape)


def _resize_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
  if mask.shape == (height, width):
    return mask
  return np.asarray(Image.fromarray(mask).resize((width, height), Image.NEAREST))


class FolderExamples:
  """Random access to a segmentation folder's split: `load(i)` gives (uint8 image (H, W, C),
  uint8 mask (H, W)) at the run's shape (image bilinear, mask nearest). With `rng` (training)
  image and mask get the same zoom (1 +- augment.scale), crop (after padding by
  augment.crop_padding; the mask padded with IGNORE) and horizontal flip."""

  def __init__(self, folder: MaskFolder, split: str, shape, aug_cfg=None):
    self.images, self.masks = folder.images[split], folder.masks[split]
    self.shape, self.aug = tuple(shape), aug_cfg

  def __len__(self) -> int:
    return len(self.images)

  def load(self, i: int, rng: np.random.Generator | None = None):
    h, w, c = self.shape
    img = image_io.to_pil(image_io.open_image(self.images[i]), c)
    mask = _read_mask(self.masks[i]).astype(np.uint8)
    if rng is not None and self.aug is not None:
      return self._augmented(img, mask, rng)
    image = np.asarray(img.resize((w, h), Image.BILINEAR) if img.size != (w, h) else img, np.uint8)
    return (image[..., None] if image.ndim == 2 else image), _resize_mask(mask, h, w)

  def _augmented(self, img, mask: np.ndarray, rng: np.random.Generator):
    h, w, _ = self.shape
    zoom = 1 + rng.uniform(-self.aug.scale, self.aug.scale) if self.aug.scale else 1.0
    sh, sw = max(1, round(h * zoom)), max(1, round(w * zoom))
    image = np.asarray(img.resize((sw, sh), Image.BILINEAR), np.uint8)
    image = image[..., None] if image.ndim == 2 else image
    mask = _resize_mask(mask, sh, sw)
    pad = int(self.aug.crop_padding)
    ph, pw = max(pad, (h - sh + 1) // 2 + 1), max(pad, (w - sw + 1) // 2 + 1)
    image = np.pad(image, ((ph, ph), (pw, pw), (0, 0)))
    mask = np.pad(mask, ((ph, ph), (pw, pw)), constant_values=IGNORE)
    top = int(rng.integers(0, image.shape[0] - h + 1)) if pad or sh != h else ph
    left = int(rng.integers(0, image.shape[1] - w + 1)) if pad or sw != w else pw
    image, mask = image[top:top + h, left:left + w], mask[top:top + h, left:left + w]
    if self.aug.flip and rng.random() < 0.5:
      image, mask = image[:, ::-1], mask[:, ::-1]
    return np.ascontiguousarray(image), np.ascontiguousarray(mask)


# ----------------------------------------------------------------------------- device augmentation


def check_augment(aug_cfg) -> None:
  on = [k for k in UNSUPPORTED_AUGMENT if aug_cfg[k]]
  if on:
    raise UserError(f'augment.{on[0]} moves image pixels without their mask labels; a '
                    'segmentation run takes crop_padding, flip and scale (zoom), which move both, '
                    'and the photometric augmentations')


def _zoom(img: jax.Array, z: jax.Array, order: int) -> jax.Array:
  height, width = img.shape[:2]
  centre = jnp.array([(height - 1) / 2, (width - 1) / 2, 0.0])
  m = jnp.diag(jnp.array([1 / z, 1 / z, 1.0]))
  return pix.affine_transform(img, m, offset=centre - m @ centre, order=order, mode='nearest')


def augment(aug_cfg, geometry: bool):
  """`fn(key, images, masks, preprocess) -> (inputs, masks)` of a training batch: the same flip,
  pad-and-crop and zoom for image and mask (when `geometry`; a streaming source did them on the
  host), then the config's photometric ops and cutout on the image only."""
  photometric = augment_lib.pipeline(aug_cfg, skip=('crop', 'flip', 'affine'))

  def fn(key, images, masks, preprocess):
    x, y = images, masks
    if geometry:
      k_crop, k_flip, k_zoom = jax.random.split(jax.random.fold_in(key, 7), 3)
      n = x.shape[0]
      if aug_cfg.scale:
        z = jax.random.uniform(k_zoom, (n,), minval=1 - aug_cfg.scale, maxval=1 + aug_cfg.scale)
        x = jnp.clip(jax.vmap(lambda im, zz: _zoom(im, zz, 1))(x.astype(jnp.float32), z), 0, 255)
        y = jax.vmap(lambda m, zz: _zoom(m[..., None].astype(jnp.float32), zz, 0))(y, z)[..., 0]
        y = jnp.round(y).astype(masks.dtype)
      pad = int(aug_cfg.crop_padding)
      if pad:
        window = (*x.shape[1:-1], x.shape[-1] + 1)  # an example's image and mask channels
        padded = jnp.concatenate([
            jnp.pad(x.astype(jnp.float32), ((0, 0), (pad, pad), (pad, pad), (0, 0))),
            jnp.pad(y[..., None].astype(jnp.float32), ((0, 0), (pad, pad), (pad, pad), (0, 0)),
                    constant_values=IGNORE)], -1)
        offsets = jax.random.randint(k_crop, (n, 2), 0, 2 * pad + 1)
        both = jax.vmap(lambda im, o: jax.lax.dynamic_slice(im, (o[0], o[1], 0), window))(
            padded, offsets)
        x, y = both[..., :-1], both[..., -1].astype(masks.dtype)
      if aug_cfg.flip:
        flip = jax.random.bernoulli(k_flip, 0.5, (n,))
        x = jnp.where(flip[:, None, None, None], jnp.flip(x, 2), x)
        y = jnp.where(flip[:, None, None], jnp.flip(y, 2), y)
    return augment_lib.apply(photometric, key, x, preprocess), y

  return fn
