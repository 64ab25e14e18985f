"""Named datasets: what each one looks like, and loading it into host memory as uint8.

Sources, tried in this order when `dataset.source='auto'`:
  1. TFDS, from the user's TFDS data dir, when the dataset is prepared there;
  2. MNIST-format IDX files (`train-images-idx3-ubyte[.gz]` etc.) in `dataset.idx_dir`, or in
     the dataset's known location (Debian's `dataset-fashion-mnist` package for Fashion-MNIST).
     TFDS cannot use those files: their gzip checksums differ from the ones it registered.
`synthetic` makes class-conditional random data (learnable, so losses fall) of any shape.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
from typing import Optional

import numpy as np

from errors import UserError
import util


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  name: str
  shape: tuple[int, ...]        # one example, channels last
  num_classes: int
  train_split: str = 'train'
  test_split: str = 'test'
  idx_dir: str = ''             # known location of IDX files ('' = none)
  trainable: bool = True        # False: summary/benchmark only (too big to hold in memory)
  install_hint: str = ''


DATASETS: dict[str, DatasetInfo] = {d.name: d for d in [
    DatasetInfo('mnist', (28, 28, 1), 10),
    DatasetInfo('fashion_mnist', (28, 28, 1), 10, idx_dir='/usr/share/datasets/fashion-mnist',
                install_hint='apt-get install dataset-fashion-mnist'),
    DatasetInfo('cifar10', (32, 32, 3), 10),
    DatasetInfo('cifar100', (32, 32, 3), 100),
    DatasetInfo('svhn_cropped', (32, 32, 3), 10),
    DatasetInfo('imagenet2012', (224, 224, 3), 1000, test_split='validation', trainable=False),
    DatasetInfo('synthetic', (32, 32, 3), 10),
]}

IDX_FILES = {'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
             'test': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte')}


@dataclasses.dataclass
class Split:
  images: np.ndarray   # (N, *shape) uint8
  labels: np.ndarray   # (N,) int32


def info(ds_cfg) -> DatasetInfo:
  """The dataset's example shape and class count (synthetic: from the config); also checks
  the dataset settings that need no data."""
  for key in ('train_size', 'test_size', 'train_offset'):
    if ds_cfg[key] < 0:
      raise UserError(f'dataset.{key} must be >= 0, got {ds_cfg[key]}')
  if ds_cfg.synthetic_size <= 0:
    raise UserError(f'dataset.synthetic_size must be positive, got {ds_cfg.synthetic_size}')
  name = ds_cfg.name
  if name not in DATASETS:
    raise UserError(f'unknown dataset {name!r}; known datasets: {", ".join(sorted(DATASETS))}')
  d = DATASETS[name]
  if name == 'synthetic':
    try:
      shape = tuple(util.parse_list('dataset.image_shape', ds_cfg.image_shape, int))
    except UserError:
      shape = ()
    if len(shape) < 2 or min(shape) < 1:
      raise UserError(f"dataset.image_shape must be positive ints like '32,32,3' (spatial dims, "
                      f'then channels), got {ds_cfg.image_shape!r}')
    if ds_cfg.num_classes < 2:
      raise UserError(f'dataset.num_classes must be at least 2, got {ds_cfg.num_classes}')
    d = dataclasses.replace(d, shape=shape, num_classes=int(ds_cfg.num_classes))
  return d


def _find_idx(directory: str, stem: str) -> Optional[str]:
  for candidate in (stem, stem + '.gz'):
    path = os.path.join(directory, candidate)
    if os.path.exists(path):
      return path
  return None


def _idx_dir(ds_cfg, d: DatasetInfo) -> str:
  return ds_cfg.idx_dir or d.idx_dir


def _tfds_prepared(ds_cfg) -> bool:
  import tensorflow_datasets as tfds  # heavy import: only when TFDS is actually asked about
  try:
    return tfds.builder(ds_cfg.name, data_dir=ds_cfg.data_dir or None).is_prepared()
  except Exception:  # unknown builder version, unreadable dir: treat as not prepared
    return False


def resolve_source(ds_cfg) -> str:
  """Which source will serve the dataset: 'synthetic', 'tfds' or 'idx'. Fails with one line
  saying what to install or where to put which files when none can."""
  d = info(ds_cfg)
  if d.name == 'synthetic':
    return 'synthetic'
  if not d.trainable:
    raise UserError(f'{d.name} is too large to hold in memory and is supported for '
                    '--mode=summary only; train on mnist, fashion_mnist, cifar10, cifar100 or svhn_cropped')
  source = ds_cfg.source
  if source not in ('auto', 'tfds', 'idx'):
    raise UserError(f'unknown dataset.source {source!r}; use auto, tfds or idx')
  idx_dir = _idx_dir(ds_cfg, d)
  has_idx = bool(idx_dir) and all(_find_idx(idx_dir, s) for pair in IDX_FILES.values() for s in pair)
  if source == 'idx' or (source == 'auto' and has_idx and not _tfds_prepared(ds_cfg)):
    if not has_idx:
      raise UserError(f'{d.name}: IDX files not found in {idx_dir or "(no dataset.idx_dir set)"}; '
                      f'put {", ".join(s + "[.gz]" for p in IDX_FILES.values() for s in p)} there '
                      f'and set --config.dataset.idx_dir')
    return 'idx'
  if source == 'tfds' or _tfds_prepared(ds_cfg):
    return 'tfds'
  where = ds_cfg.data_dir or '~/tensorflow_datasets'
  hints = [f'prepare it with TFDS in {where} (`tfds build {d.name}` on a machine with internet, '
           'then copy the folder)']
  if d.install_hint:
    hints.insert(0, f'`{d.install_hint}`')
  hints.append('or point --config.dataset.idx_dir at a directory with MNIST-format IDX files')
  raise UserError(f'dataset {d.name} not found: ' + '; '.join(hints))


def read_idx(path: str) -> np.ndarray:
  """Reads an IDX file (optionally gzipped): magic 0x00 0x00 <type> <ndim>, big-endian dims."""
  opener = gzip.open if path.endswith('.gz') else open
  with opener(path, 'rb') as f:
    raw = f.read()
  if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
    raise UserError(f'{path} is not an unsigned-byte IDX file')
  ndim = raw[3]
  dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], 'big') for i in range(ndim))
  data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
  if data.size != int(np.prod(dims)):
    raise UserError(f'{path} is truncated: header says {dims}, found {data.size} bytes')
  return data.reshape(dims)


def _load_idx(ds_cfg, d: DatasetInfo, split: str) -> Split:
  directory = _idx_dir(ds_cfg, d)
  images = read_idx(_find_idx(directory, IDX_FILES[split][0]))
  labels = read_idx(_find_idx(directory, IDX_FILES[split][1]))
  images = images.reshape(images.shape[0], *d.shape)
  return Split(images, labels.astype(np.int32))


def _load_tfds(ds_cfg, d: DatasetInfo, split: str) -> Split:
  import tensorflow as tf
  import tensorflow_datasets as tfds
  tf.config.set_visible_devices([], 'GPU')  # keep TF off the accelerators JAX uses
  tfds_split = d.train_split if split == 'train' else d.test_split
  ds = tfds.load(d.name, split=tfds_split, data_dir=ds_cfg.data_dir or None, as_supervised=True,
                 batch_size=4096, download=False)
  images, labels = [], []
  for x, y in tfds.as_numpy(ds):  # batch_size=-1 crashes under tfds.testing.mock_data
    images.append(x)
    labels.append(y)
  return Split(np.concatenate(images).astype(np.uint8).reshape(-1, *d.shape),
               np.concatenate(labels).astype(np.int32))


def _synthetic(d: DatasetInfo, n: int, seed: int) -> Split:
  """Each class is a fixed random prototype; examples are prototypes plus noise."""
  protos = np.random.default_rng(1234).integers(0, 256, (d.num_classes, *d.shape))
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, d.num_classes, n).astype(np.int32)
  noise = rng.normal(0, 48, (n, *d.shape))
  return Split(np.clip(protos[labels] + noise, 0, 255).astype(np.uint8), labels)


def load_split(ds_cfg, split: str) -> Split:
  """One split ('train' or 'test') in host memory, uint8 images and int32 labels, cut to
  `dataset.train_size` / `test_size` as a run sees it."""
  d = info(ds_cfg)
  source = resolve_source(ds_cfg)
  if source == 'synthetic':
    n = int(ds_cfg.synthetic_size)
    out = _synthetic(d, n, 0) if split == 'train' else _synthetic(d, max(1, n // 4), 1)
  else:
    out = (_load_idx if source == 'idx' else _load_tfds)(ds_cfg, d, split)
  start = int(ds_cfg.get('train_offset', 0)) if split == 'train' else 0
  size = ds_cfg.train_size if split == 'train' else ds_cfg.test_size
  if start >= len(out.labels):
    raise UserError(f'dataset.train_offset {start} leaves none of the {len(out.labels)} '
                    'training examples; use a smaller offset')
  end = start + size if size else len(out.labels)
  return Split(out.images[start:end], out.labels[start:end]) if start or size else out


def load(ds_cfg) -> tuple[Split, Split, DatasetInfo]:
  """(train, test, info) in host memory, uint8 images and int32 labels."""
  return load_split(ds_cfg, 'train'), load_split(ds_cfg, 'test'), info(ds_cfg)


def identity(ds_cfg, d: DatasetInfo, num_train: int, num_test: int) -> dict:
  """What results.json and the checkpoints record of a run's data: enough to get its test
  split back and to know which data it was."""
  return {'name': d.name, 'shape': list(d.shape), 'num_classes': d.num_classes,
          'source': resolve_source(ds_cfg), 'test_split': d.test_split,
          'num_train': num_train, 'num_test': num_test,
          'train_size': int(ds_cfg.train_size), 'test_size': int(ds_cfg.test_size),
          'train_offset': int(ds_cfg.get('train_offset', 0))}
