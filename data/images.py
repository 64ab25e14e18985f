"""Image files and encoded examples -> fixed-size uint8 arrays, on the host.

Two readers feed both data paths (in memory and streaming):
  * `Folder`: the ImageNet / torchvision ImageFolder layout, `DIR/train/<class>/*.jpg|png` and
    `DIR/val/<class>/...`, classes from the folder names, sorted;
  * `tfds_reader`: any TFDS image-classification dataset, random access through
    `tfds.data_source` (ArrayRecord) or, for TFRecord-only preparations, an index of record
    offsets built by a scan of the record headers (data read by seek).
Every image then goes through `transform`: Inception-style random-resized crop for training
(the sampling rule of data/augment.py's device op), or a resize (and centre crop) for
evaluation, to the run's `image_shape`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import struct
from typing import Any, Optional, Sequence

import numpy as np
from PIL import Image

from data import augment
from errors import UserError

EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.ppm', '.pgm', '.webp')
SPLITS = {'train': 'train', 'test': 'val'}


def _channels(mode: str) -> int:
  return 1 if mode in ('1', 'L', 'LA', 'I', 'I;16', 'F') else 3


def open_image(path: str):
  """The decoded PIL image at `path`; an unreadable file is a UserError naming it."""
  try:
    with Image.open(path) as img:
      img.load()
      return img
  except Exception as e:  # PIL raises many types for bad files: report them all the same way
    raise UserError(f'cannot read image {path} ({type(e).__name__}: {e}); fix or remove the '
                    'file') from None


@dataclasses.dataclass(frozen=True)
class Folder:
  root: str
  class_names: tuple[str, ...]
  files: dict            # 'train' | 'test' -> tuple of paths
  labels: dict           # 'train' | 'test' -> int32 array

  def __len__(self):
    return len(self.files['train'])


@functools.lru_cache(maxsize=8)
def scan_folder(root: str) -> Folder:
  """Lists an image folder; every layout mistake is one UserError naming the path."""
  if not root:
    raise UserError('dataset.name=folder needs --config.dataset.data_dir=DIR, the folder that '
                    'holds train/<class>/ and val/<class>/')
  if not os.path.isdir(root):
    raise UserError(f'image folder {root} not found; point --config.dataset.data_dir at a folder '
                    'with train/<class>/*.png|jpg and val/<class>/...')
  classes, files, labels = {}, {}, {}
  for split, sub in SPLITS.items():
    d = os.path.join(root, sub)
    if not os.path.isdir(d):
      raise UserError(f'image folder {d} not found; expected {root}/train/<class>/*.png|jpg and '
                      f'{root}/val/<class>/...')
    names = sorted(e.name for e in os.scandir(d) if e.is_dir())
    if not names:
      raise UserError(f'{d} has no class folders; put each class\'s images in {d}/<class>/')
    paths, ys = [], []
    for i, name in enumerate(names):
      found = sorted(e.path for e in os.scandir(os.path.join(d, name))
                     if e.is_file() and e.name.lower().endswith(EXTENSIONS))
      if not found:
        raise UserError(f'empty class {os.path.join(d, name)}: no {"/".join(EXTENSIONS)} files')
      paths += found
      ys += [i] * len(found)
    classes[split], files[split], labels[split] = names, tuple(paths), np.asarray(ys, np.int32)
  if classes['train'] != classes['test']:
    only_t = sorted(set(classes['train']) - set(classes['test']))
    only_v = sorted(set(classes['test']) - set(classes['train']))
    raise UserError(f'classes differ between {root}/train and {root}/val (only in train: '
                    f'{", ".join(only_t) or "none"}; only in val: {", ".join(only_v) or "none"}); '
                    'both need the same class folders')
  return Folder(root, tuple(classes['train']), files, labels)


def folder_shape(folder: Folder) -> tuple[int, int, int]:
  """(H, W, C) of the first training image: the folder's size when image_shape is unset."""
  img = open_image(folder.files['train'][0])
  return img.height, img.width, _channels(img.mode)


# ----------------------------------------------------------------------------- TFDS readers


class _TFRecordSource:
  """Random access into TFRecord files: record offsets come from one scan of the record headers
  (8-byte length, 4-byte CRC; the data is skipped by seek), examples are read by seek and
  parsed with the dataset's own TFDS features. The scan (about 10,000 records/s from a cold
  disk, so ~2 minutes for ImageNet's 1.28M) is cached under ~/.cache/cnn_lab, keyed by the
  files' paths, sizes and modification times."""

  CACHE = os.path.expanduser('~/.cache/cnn_lab/tfrecord_index')

  def __init__(self, paths: Sequence[str], features):
    self._paths, self._features = list(paths), features
    stats = [(p, os.path.getsize(p), os.path.getmtime(p)) for p in self._paths]
    key = hashlib.sha1(repr(stats).encode()).hexdigest()
    cached = os.path.join(self.CACHE, key + '.npy')
    if os.path.exists(cached):
      self._index = np.load(cached)
      return
    index = []
    for f, path in enumerate(self._paths):
      with open(path, 'rb') as fh:
        pos = 0
        size = os.fstat(fh.fileno()).st_size
        while pos < size:
          fh.seek(pos)
          length = struct.unpack('<Q', fh.read(8))[0]
          index.append((f, pos + 12, length))
          pos += 12 + length + 4
    self._index = np.asarray(index, np.int64).reshape(-1, 3)
    try:  # atomically, as several processes of one host may write it at once
      os.makedirs(self.CACHE, exist_ok=True)
      tmp = f'{cached}.{os.getpid()}.tmp.npy'
      np.save(tmp, self._index)
      os.replace(tmp, cached)
    except OSError:  # an unwritable home: scan again next time
      pass

  def __len__(self):
    return len(self._index)

  def __getitem__(self, i):
    f, offset, length = (int(v) for v in self._index[i])
    with open(self._paths[f], 'rb') as fh:
      fh.seek(offset)
      raw = fh.read(length)
    return self._features.deserialize_example_np(raw)


def tfds_reader(name: str, data_dir: str, split: str):
  """A random-access sequence of example dicts of a prepared TFDS split."""
  import tensorflow_datasets as tfds  # heavy (TensorFlow): only when TFDS data is read
  builder = tfds.builder(name, data_dir=data_dir or None)
  fmt = str(getattr(builder.info, 'file_format', '') or '')
  try:
    paths = [str(p) for p in builder.info.splits[split].filepaths]
  except KeyError:  # no split metadata: only tfds.data_source can serve it (tfds mock data)
    paths = []
  if 'tfrecord' in fmt.lower() and paths and all(os.path.exists(p) for p in paths):
    return _TFRecordSource(paths, builder.info.features)
  return tfds.data_source(name, split=split, data_dir=data_dir or None, download=False)


# ----------------------------------------------------------------------------- transforms


def to_pil(image: Any, channels: int):
  """A decoded array or PIL image in the run's channel mode ('L' or 'RGB')."""
  if isinstance(image, np.ndarray):
    arr = image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image
    image = Image.fromarray(arr.astype(np.uint8))
  mode = 'L' if channels == 1 else 'RGB'
  return image if image.mode == mode else image.convert(mode)


def transform(image, shape: tuple[int, int, int], crop_fraction: float = 1.0,
              rrc: Optional[tuple] = None, rng: Optional[np.random.Generator] = None,
              strict_size: str = '') -> np.ndarray:
  """One image -> uint8 (H, W, C) of `shape`.

  Training with `rrc=(scale, ratio)`: an Inception-style box (augment.rrc_box) resized to the
  shape. Otherwise the whole image resized to the shape, or, with `crop_fraction` < 1, resized so
  the centre crop of that fraction fills the shape (ImageNet: 256 -> 224 at 0.875).
  `strict_size`: a path; the image must already have the shape (no size was configured)."""
  h, w, c = shape
  img = to_pil(image, c)
  if strict_size and (img.height, img.width) != (h, w):
    raise UserError(f'image {strict_size} is {img.height}x{img.width}, the folder\'s first image '
                    f'{h}x{w}; set --config.dataset.image_shape=H,W,C to resize them all')
  if rrc is not None:
    top, left, bh, bw = augment.rrc_box(rng.random((10, 4)), img.height, img.width, *rrc)
    box = (float(left), float(top), float(left + bw), float(top + bh))
    img = img.resize((w, h), Image.BILINEAR, box=box)
  elif crop_fraction < 1.0:
    s = max(h, w) / crop_fraction / min(img.height, img.width)
    rh, rw = max(h, round(img.height * s)), max(w, round(img.width * s))
    img = img.resize((rw, rh), Image.BILINEAR)
    t, l = (rh - h) // 2, (rw - w) // 2
    img = img.crop((l, t, l + w, t + h))
  elif (img.height, img.width) != (h, w):
    img = img.resize((w, h), Image.BILINEAR)
  arr = np.asarray(img, np.uint8)
  return arr[..., None] if arr.ndim == 2 else arr
