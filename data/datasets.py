"""Named datasets: what each one looks like, and loading it into host memory as uint8.

Sources, tried in this order when `dataset.source='auto'`:
  1. TFDS, from the user's TFDS data dir, when the dataset is prepared there;
  2. MNIST-format IDX files (`train-images-idx3-ubyte[.gz]` etc.) in `dataset.idx_dir`, or in
     the dataset's known location (Debian's `dataset-fashion-mnist` package for Fashion-MNIST).
     TFDS cannot use those files: their gzip checksums differ from the ones it registered.
`synthetic` makes class-conditional random data (learnable, so losses fall) of any shape.
`folder` is an image folder (data/images.py), and any other name a TFDS image-classification
dataset prepared in `dataset.data_dir`. Which path serves the batches (in memory or streaming,
data/streaming.py) is `pipeline(ds_cfg)`.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
from concurrent import futures
from typing import Optional

import numpy as np

import util
from data import augment, images as image_io, segmentation
from errors import UserError


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  name: str
  shape: tuple[int, ...]        # one example, channels last
  num_classes: int
  train_split: str = 'train'
  test_split: str = 'test'
  idx_dir: str = ''             # known location of IDX files ('' = none)
  install_hint: str = ''
  class_names: tuple[str, ...] = ()
  tfds_name: str = ''           # the TFDS builder ('' = name)
  num_train: int = 0            # training examples, when known without reading them (0 = not)


DIGITS = tuple(str(d) for d in range(10))
# Label names as the datasets' authors publish them (Fashion-MNIST: zalandoresearch's README;
# CIFAR-10: Krizhevsky's batches.meta), so figures and reports say "Sandal", not "class 5".
FASHION_MNIST_CLASSES = ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt',
                         'Sneaker', 'Bag', 'Ankle boot')
CIFAR10_CLASSES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship',
                   'truck')

DATASETS: dict[str, DatasetInfo] = {d.name: d for d in [
    DatasetInfo('mnist', (28, 28, 1), 10, class_names=DIGITS),
    DatasetInfo('fashion_mnist', (28, 28, 1), 10, idx_dir='/usr/share/datasets/fashion-mnist',
                install_hint='apt-get install dataset-fashion-mnist',
                class_names=FASHION_MNIST_CLASSES),
    DatasetInfo('cifar10', (32, 32, 3), 10, class_names=CIFAR10_CLASSES),
    DatasetInfo('cifar100', (32, 32, 3), 100),
    DatasetInfo('svhn_cropped', (32, 32, 3), 10, class_names=DIGITS),
    DatasetInfo('imagenet2012', (224, 224, 3), 1000, test_split='validation'),
    DatasetInfo('synthetic', (32, 32, 3), 10),
    # Generated segmentation scenes of Fashion-MNIST objects (data/segmentation.py).
    DatasetInfo('fashion_mnist_scenes', (64, 64, 1), len(segmentation.SCENE_CLASSES),
                idx_dir='/usr/share/datasets/fashion-mnist',
                install_hint='apt-get install dataset-fashion-mnist',
                class_names=segmentation.SCENE_CLASSES),
]}

IDX_FILES = {'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
             'test': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte')}


@dataclasses.dataclass
class Split:
  images: np.ndarray   # (N, *shape) uint8
  labels: np.ndarray   # (N,) int32

  def __len__(self) -> int:
    return int(self.labels.shape[0])


def info(ds_cfg) -> DatasetInfo:
  """The dataset's example shape and class count as a run sees it (synthetic: from the config;
  `dataset.classes` keeps a subset); also checks the dataset settings that need no data."""
  return _subset_info(ds_cfg, _raw_info(ds_cfg))


def _raw_info(ds_cfg) -> DatasetInfo:
  for key in ('train_size', 'test_size', 'train_offset', 'num_workers', 'prefetch_batches'):
    if ds_cfg.get(key, 0) < 0:
      raise UserError(f'dataset.{key} must be >= 0, got {ds_cfg[key]}')
  if ds_cfg.synthetic_size <= 0:
    raise UserError(f'dataset.synthetic_size must be positive, got {ds_cfg.synthetic_size}')
  name = ds_cfg.name
  if name == 'folder':
    return _folder_info(ds_cfg)
  if name == 'segmentation_folder':
    return _mask_folder_info(ds_cfg)
  if name == 'fashion_mnist_scenes':
    segmentation.check_scene_config(ds_cfg)
  d = DATASETS.get(name) or _tfds_info(ds_cfg)
  if name == 'synthetic':
    shape = _shape(ds_cfg.image_shape or '32,32,3', any_rank=True)
    if ds_cfg.num_classes < 2:
      raise UserError(f'dataset.num_classes must be at least 2, got {ds_cfg.num_classes}')
    return dataclasses.replace(d, shape=shape, num_classes=int(ds_cfg.num_classes))
  if ds_cfg.image_shape:
    shape = _shape(ds_cfg.image_shape)
    if shape[-1] != d.shape[-1] and d.shape[-1]:
      raise UserError(f'dataset.image_shape {ds_cfg.image_shape!r} has {shape[-1]} channels, '
                      f'{name} has {d.shape[-1]}; keep its channel count')
    d = dataclasses.replace(d, shape=shape)
  if None in d.shape:
    raise UserError(f'{name} has images of varying size; set --config.dataset.image_shape=H,W,C')
  return d


def _shape(text: str, any_rank: bool = False) -> tuple[int, ...]:
  try:
    shape = tuple(util.parse_list('dataset.image_shape', text, int))
  except UserError:
    shape = ()
  if len(shape) < 2 or min(shape) < 1 or (not any_rank and (len(shape) != 3 or shape[-1] not in (1, 3))):
    raise UserError(f"dataset.image_shape must be positive ints like '32,32,3' (height, width, "
                    f'then 1 or 3 channels), got {text!r}')
  return shape


def _folder_info(ds_cfg) -> DatasetInfo:
  folder = image_io.scan_folder(os.path.abspath(ds_cfg.data_dir) if ds_cfg.data_dir else '')
  if len(folder.class_names) < 2:
    raise UserError(f'{ds_cfg.data_dir}/train has {len(folder.class_names)} class folder(s) '
                    f'({", ".join(folder.class_names) or "none"}); a classifier needs at least 2 '
                    '(one sub-folder of images per class)')
  shape = _shape(ds_cfg.image_shape) if ds_cfg.image_shape else image_io.folder_shape(folder)
  return DatasetInfo('folder', shape, len(folder.class_names), test_split='val',
                     class_names=folder.class_names, num_train=len(folder.files['train']))


def _mask_folder_info(ds_cfg) -> DatasetInfo:
  if ds_cfg.num_classes < 2:
    raise UserError(f'dataset.num_classes must be at least 2 (background and one class), got '
                    f'{ds_cfg.num_classes}')
  folder = segmentation.scan_folder(os.path.abspath(ds_cfg.data_dir) if ds_cfg.data_dir else '',
                                    int(ds_cfg.num_classes))
  shape = _shape(ds_cfg.image_shape) if ds_cfg.image_shape else folder.shape
  return DatasetInfo('segmentation_folder', shape, int(ds_cfg.num_classes), test_split='val',
                     num_train=len(folder.images['train']))


def _tfds_info(ds_cfg) -> DatasetInfo:
  """A TFDS image-classification dataset that is not in DATASETS, from its prepared metadata."""
  name = ds_cfg.name
  known = ', '.join(sorted(DATASETS))
  if not _tfds_prepared(ds_cfg):
    raise UserError(f'unknown dataset {name!r}: not one of {known}, not folder, and no TFDS '
                    f'dataset of that name is prepared in {ds_cfg.data_dir or "~/tensorflow_datasets"}')
  import tensorflow_datasets as tfds  # heavy (TensorFlow): only when TFDS data is read
  builder = tfds.builder(name, data_dir=ds_cfg.data_dir or None)
  keys = builder.info.supervised_keys or ('image', 'label')
  features = builder.info.features
  try:
    shape, num_classes = tuple(features[keys[0]].shape), int(features[keys[1]].num_classes)
  except (KeyError, AttributeError, TypeError):
    raise UserError(f'TFDS dataset {name} is not image classification (needs an image feature and '
                    'a class label)') from None
  splits = list(builder.info.splits)
  test = next((s for s in ('test', 'validation', 'val') if s in splits), None)
  if 'train' not in splits or test is None:
    raise UserError(f'TFDS dataset {name} needs a train split and a test or validation split; it '
                    f'has {", ".join(splits)}')
  return DatasetInfo(name, shape, num_classes, test_split=test,
                     class_names=tuple(getattr(features[keys[1]], 'names', ()) or ()),
                     num_train=int(builder.info.splits['train'].num_examples))


def num_train(ds_cfg, d: DatasetInfo) -> int:
  """Training examples the run will see, without reading them (for the pipeline choice)."""
  n = d.num_train
  if not n and d.name != 'synthetic' and resolve_source(ds_cfg) == 'tfds':
    import tensorflow_datasets as tfds  # heavy (TensorFlow): only when TFDS data is read
    try:
      n = int(tfds.builder(d.tfds_name or d.name, data_dir=ds_cfg.data_dir or None)
              .info.splits[d.train_split].num_examples)
    except KeyError:  # no split metadata (tfds.testing.mock_data): size unknown, taken as small
      n = 0
  n = n or int(ds_cfg.synthetic_size if d.name == 'synthetic' else 0)
  n = max(0, n - int(ds_cfg.train_offset))
  return min(n, ds_cfg.train_size) if ds_cfg.train_size else n


PIPELINES = ('auto', 'memory', 'streaming')


def pipeline(ds_cfg, d: DatasetInfo | None = None) -> str:
  """'memory' or 'streaming': the config's choice, or for 'auto' memory when the training split
  fits in `dataset.memory_limit_mb` as uint8 (IDX files and synthetic data always do)."""
  if ds_cfg.pipeline not in PIPELINES:
    raise UserError(f'unknown dataset.pipeline {ds_cfg.pipeline!r}; use {" | ".join(PIPELINES)}')
  d = d or info(ds_cfg)
  source = resolve_source(ds_cfg)
  if ds_cfg.pipeline == 'streaming' and source in ('idx', 'synthetic', 'scenes'):
    raise UserError(f'dataset.pipeline=streaming reads TFDS datasets and image folders; {d.name} '
                    f'comes from {source} data, use pipeline=memory')
  if ds_cfg.pipeline != 'auto':
    chosen = ds_cfg.pipeline
  elif source in ('idx', 'synthetic', 'scenes'):
    chosen = 'memory'
  else:
    size_mb = num_train(ds_cfg, d) * int(np.prod(d.shape)) / 2 ** 20
    chosen = 'memory' if size_mb <= ds_cfg.memory_limit_mb else 'streaming'
  subset = [k for k in SUBSET_KEYS if ds_cfg.get(k, '')]
  if chosen == 'streaming' and subset:
    raise UserError(f'dataset.{subset[0]} selects examples in memory; it needs '
                    '--config.dataset.pipeline=memory (the selected examples must fit in memory)')
  return chosen


SUBSET_KEYS = ('classes', 'per_class', 'extra_train')


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
  """Which source will serve the dataset: 'synthetic', 'folder', 'tfds' or 'idx'. Fails with
  one line saying what to install or where to put which files when none can."""
  if ds_cfg.name in ('synthetic', 'folder', 'segmentation_folder'):
    info(ds_cfg)  # checks the settings (the folder's layout)
    return ds_cfg.name
  if ds_cfg.name == 'fashion_mnist_scenes':
    d = info(ds_cfg)
    if not all(_find_idx(_idx_dir(ds_cfg, d), s) for s in IDX_FILES['train'] + IDX_FILES['test']):
      raise UserError(f'fashion_mnist_scenes draws Fashion-MNIST objects; their IDX files are not '
                      f'in {_idx_dir(ds_cfg, d)}: `{d.install_hint}` or set '
                      '--config.dataset.idx_dir')
    return 'scenes'
  if ds_cfg.name not in DATASETS:
    info(ds_cfg)
    return 'tfds'
  d = DATASETS[ds_cfg.name]
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


def _load_tfds(ds_cfg, d: DatasetInfo, split: str, n: int) -> Split:
  """The first `n` examples (0 = all) of a TFDS split whose images have the run's shape."""
  import tensorflow as tf  # heavy: only when TFDS data is read or JPEG-coded
  import tensorflow_datasets as tfds  # heavy (TensorFlow): only when TFDS data is read
  tf.config.set_visible_devices([], 'GPU')  # keep TF off the accelerators JAX uses
  tfds_split = _tfds_split(d, split) + (f'[:{n}]' if n else '')
  ds = tfds.load(d.tfds_name or d.name, split=tfds_split, data_dir=ds_cfg.data_dir or None,
                 as_supervised=True, batch_size=4096, download=False)
  images, labels = [], []
  for x, y in tfds.as_numpy(ds):  # batch_size=-1 crashes under tfds.testing.mock_data
    images.append(x)
    labels.append(y)
  return Split(np.concatenate(images).astype(np.uint8).reshape(-1, *d.shape),
               np.concatenate(labels).astype(np.int32))


def _tfds_split(d: DatasetInfo, split: str) -> str:
  return d.train_split if split == 'train' else d.test_split


def supervised_keys(ds_cfg, d: DatasetInfo) -> tuple[str, str]:
  """The (image, label) feature names of a TFDS dataset."""
  import tensorflow_datasets as tfds  # heavy (TensorFlow): only when TFDS data is read
  builder = tfds.builder(d.tfds_name or d.name, data_dir=ds_cfg.data_dir or None)
  return tuple(builder.info.supervised_keys or ('image', 'label'))[:2]


def _decoded_one_by_one(ds_cfg, d: DatasetInfo, source: str) -> bool:
  """Whether images go through the host transform (a folder; a TFDS dataset with a configured
  size or crop, or of varying sizes) rather than tf.data's batches."""
  if source in ('folder', 'segmentation_folder'):
    return True
  native = DATASETS[d.name].shape if d.name in DATASETS else None
  return source == 'tfds' and (bool(ds_cfg.image_shape) or native is None or
                               ds_cfg.crop_fraction < 1)


def _synthetic(d: DatasetInfo, n: int, seed: int) -> Split:
  """Each class is a fixed random prototype; examples are prototypes plus noise."""
  protos = np.random.default_rng(1234).integers(0, 256, (d.num_classes, *d.shape))
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, d.num_classes, n).astype(np.int32)
  noise = rng.normal(0, 48, (n, *d.shape))
  return Split(np.clip(protos[labels] + noise, 0, 255).astype(np.uint8), labels)


def parse_classes(text: str) -> list[int]:
  """'5-9' or '0,2,4' or '0-2,7' -> the class ids in that order ('' = [])."""
  out = []
  for item in (s.strip() for s in str(text).split(',') if s.strip()):
    try:
      lo, _, hi = item.partition('-')
      out += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
    except ValueError:
      raise UserError(f"dataset.classes must be class ids and ranges like '5-9' or '0,2,4', got "
                      f'{text!r}') from None
  return out


def _classes(ds_cfg, num_classes: int) -> list[int]:
  ids = parse_classes(ds_cfg.get('classes', ''))
  if not ids:
    return []
  if len(set(ids)) != len(ids) or len(ids) < 2 or min(ids) < 0 or max(ids) >= num_classes:
    raise UserError(f'dataset.classes {ds_cfg.classes!r} must name at least 2 distinct classes of '
                    f'0-{num_classes - 1}')
  return ids


def _subset_info(ds_cfg, d: DatasetInfo) -> DatasetInfo:
  """`dataset.classes` keeps a subset of the classes, relabelled 0.. in the order given."""
  if ds_cfg.get('per_class', 0) < 0 or ds_cfg.get('extra_per_class', 0) < 0:
    raise UserError('dataset.per_class and dataset.extra_per_class must be >= 0')
  if d.name in segmentation.DENSE_DATASETS:
    subset = [k for k in SUBSET_KEYS if ds_cfg.get(k, '')]
    if subset:
      raise UserError(f'dataset.{subset[0]} selects whole images by class; {d.name} has a class '
                      'per pixel: leave it empty')
    return d
  ids = _classes(ds_cfg, d.num_classes)
  if not ids:
    return d
  names = tuple(d.class_names[i] for i in ids) if d.class_names else ()
  return dataclasses.replace(d, num_classes=len(ids), class_names=names)


def _select(ds_cfg, split: str, out: Split, num_classes: int) -> Split:
  """The class subset (relabelled), the first `per_class` training examples of each class, and
  the extra (generated) training examples of `dataset.extra_train`, in that order."""
  ids = _classes(ds_cfg, num_classes)
  if ids:
    keep = np.isin(out.labels, ids)
    relabel = np.full(num_classes, -1, np.int32)
    relabel[ids] = np.arange(len(ids), dtype=np.int32)
    out = Split(out.images[keep], relabel[out.labels[keep]])
  if split != 'train':
    return out
  if ds_cfg.get('per_class', 0):
    out = _per_class(out, int(ds_cfg.per_class))
  if ds_cfg.get('extra_train', ''):
    extra = load_extra(ds_cfg.extra_train, out.images.shape[1:], len(ids) or num_classes)
    if ds_cfg.get('extra_per_class', 0):
      extra = _per_class(extra, int(ds_cfg.extra_per_class), 'dataset.extra_per_class',
                         ds_cfg.extra_train)
    out = Split(np.concatenate([out.images, extra.images]),
                np.concatenate([out.labels, extra.labels]))
  return out


def _per_class(split: Split, n: int, key: str = 'dataset.per_class', where: str = '') -> Split:
  """The first `n` examples of every class, in the split's order (so every method and seed of a
  study sees the same examples)."""
  idx = np.concatenate([np.flatnonzero(split.labels == c)[:n] for c in np.unique(split.labels)])
  counts = np.bincount(split.labels[idx])
  if counts.min() < n:
    raise UserError(f'{key}={n} but class {int(counts.argmin())} has only {int(counts.min())} '
                    f'examples{" in " + where if where else ""}; use a smaller {key}')
  idx.sort()
  return Split(split.images[idx], split.labels[idx])


def load_extra(path: str, shape, num_classes: int) -> Split:
  """Extra training examples from an .npz with uint8 `images` (N, *shape) and int `labels`
  (what --mode=gan writes to W/gan/samples.npz)."""
  try:
    with np.load(path) as f:
      images, labels = f['images'], f['labels'].astype(np.int32)
  except (OSError, KeyError, ValueError) as e:
    raise UserError(f'dataset.extra_train {path}: cannot read images and labels from it ({e}); '
                    'pass an .npz like the W/gan/samples.npz that --mode=gan writes') from None
  top = int(labels.max()) if len(labels) else 0
  if images.dtype != np.uint8 or tuple(images.shape[1:]) != tuple(shape) or \
      len(labels) != len(images) or (len(labels) and (labels.min() < 0 or top >= num_classes)):
    raise UserError(f'dataset.extra_train {path} holds {images.dtype} images of shape '
                    f'{tuple(images.shape[1:])} with labels up to {top}; the run needs uint8 '
                    f'{tuple(shape)} with labels 0-{num_classes - 1}')
  return Split(images, labels)


def load_split(ds_cfg, split: str) -> Split:
  """One split ('train' or 'test') in host memory, uint8 images and int32 labels, as a run sees
  it: cut to `dataset.train_size` / `test_size`, then the class subset, `per_class` and the
  extra training examples (`_select`)."""
  d = _raw_info(ds_cfg)  # read once (a folder is scanned once); the subset settings checked
  _subset_info(ds_cfg, d)
  return _select(ds_cfg, split, _load_split(ds_cfg, split, d), d.num_classes)


def _load_split(ds_cfg, split: str, d: DatasetInfo) -> Split:
  source = resolve_source(ds_cfg)
  if _decoded_one_by_one(ds_cfg, d, source):  # the streaming reader, every example the run uses
    return Examples(ds_cfg, d, split).head()
  start = int(ds_cfg.get('train_offset', 0)) if split == 'train' else 0
  size = ds_cfg.train_size if split == 'train' else ds_cfg.test_size
  if source == 'synthetic':
    n = int(ds_cfg.synthetic_size)
    out = _synthetic(d, n, 0) if split == 'train' else _synthetic(d, max(1, n // 4), 1)
  elif source == 'scenes':
    objects = _load_idx(ds_cfg, DATASETS['fashion_mnist'], split)
    out = Split(*segmentation.scene_split(ds_cfg, d.shape, split, objects.images[..., 0],
                                          objects.labels))
  elif source == 'idx':
    if d.shape != DATASETS[d.name].shape:
      raise UserError(f'dataset.image_shape resizes TFDS and folder images; the IDX files of '
                      f'{d.name} are {DATASETS[d.name].shape}: leave image_shape empty')
    out = _load_idx(ds_cfg, d, split)
  else:
    out = _load_tfds(ds_cfg, d, split, start + size if size else 0)
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
          'train_offset': int(ds_cfg.get('train_offset', 0)),
          'pipeline': pipeline(ds_cfg, d), 'class_names': list(d.class_names),
          'classes': parse_classes(ds_cfg.get('classes', '')),
          'per_class': int(ds_cfg.get('per_class', 0)),
          'extra_train': os.path.abspath(ds_cfg.extra_train) if ds_cfg.get('extra_train') else '',
          'extra_per_class': int(ds_cfg.get('extra_per_class', 0)),
          'data_dir': os.path.abspath(ds_cfg.data_dir) if ds_cfg.data_dir else ''}


class Examples:
  """Random access to one split as the run sees it (offset and size applied): `load(i)` gives
  (uint8 image of the run's shape, label). Training examples get the random-resized crop when
  `rrc` is set; evaluation examples the resize / centre crop of `dataset.crop_fraction`."""

  def __init__(self, ds_cfg, d: DatasetInfo, split: str, rrc=None, aug=None):
    self.shape, self.crop_fraction, self.rrc = d.shape, float(ds_cfg.crop_fraction), rrc
    source = resolve_source(ds_cfg)
    start = int(ds_cfg.train_offset) if split == 'train' else 0
    size = int(ds_cfg.train_size if split == 'train' else ds_cfg.test_size)
    self._dense = None
    if source == 'segmentation_folder':  # (image, mask) pairs, augmented together
      folder = segmentation.scan_folder(os.path.abspath(ds_cfg.data_dir), d.num_classes)
      self._dense = segmentation.FolderExamples(folder, split, d.shape, aug)
      total = len(self._dense)
    elif source == 'folder':
      folder = image_io.scan_folder(os.path.abspath(ds_cfg.data_dir))
      self._paths, total = folder.files[split], len(folder.files[split])
      self._labels = folder.labels[split]
      self._strict = not ds_cfg.image_shape
      self._reader = None
    elif source == 'tfds':
      self._reader = image_io.tfds_reader(d.tfds_name or d.name, ds_cfg.data_dir,
                                        d.train_split if split == 'train' else d.test_split)
      self._keys = supervised_keys(ds_cfg, d)
      self._paths, total = None, len(self._reader)
    else:
      raise UserError(f'dataset.pipeline=streaming reads TFDS datasets and image folders; '
                      f'{d.name} comes from {source} data, use --config.dataset.pipeline=memory')
    if start >= total:
      raise UserError(f'dataset.train_offset {start} leaves none of the {total} training examples')
    self._start = start
    self.num_examples = min(total - start, size) if size else total - start

  def __len__(self) -> int:
    return self.num_examples

  def load(self, i: int, rng: np.random.Generator | None = None) -> tuple[np.ndarray, int]:
    """Example i; with `rng` (training) cropped by the random-resized crop when it is on."""
    k, strict = self._start + i, ''
    if self._dense is not None:
      return self._dense.load(k, rng)
    if self._reader is None:
      raw, label = image_io.open_image(self._paths[k]), self._labels[k]
      strict = self._paths[k] if self._strict and rng is None else ''
    else:
      ex = self._reader[k]
      raw, label = ex[self._keys[0]], ex[self._keys[1]]
    crop = self.rrc if rng is not None else None
    return image_io.transform(raw, self.shape, self.crop_fraction, crop, rng, strict), int(label)

  def head(self, n: int | None = None) -> Split:
    """The first n examples (all by default) in memory, as evaluated; decoded by threads, as
    PIL releases the GIL while decoding."""
    n = self.num_examples if n is None else min(n, self.num_examples)
    images_ = np.empty((n, *self.shape), np.uint8)
    labels = None  # int32 class labels, or uint8 masks (H, W) of a segmentation folder
    with futures.ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
      for i, (image, label) in enumerate(pool.map(self.load, range(n), chunksize=64)):
        if labels is None:
          labels = np.empty((n, *np.shape(label)), np.uint8 if np.ndim(label) else np.int32)
        images_[i], labels[i] = image, label
    labels = np.empty(0, np.int32) if labels is None else labels
    return Split(images_, labels)

  def preprocess(self, max_examples: int = 2048) -> augment.Preprocess:
    """Per-channel statistics of up to `max_examples` training images spread evenly over the
    split (every process computes the same ones)."""
    idx = np.unique(np.linspace(0, self.num_examples - 1, min(max_examples, self.num_examples))
                    .astype(int))
    return augment.Preprocess.from_images(np.stack([self.load(int(i))[0] for i in idx]))
