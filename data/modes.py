"""`--mode=augment`: a PNG grid of a config's training augmentations, to see what they do before
training. Each row is a training example (one per class first in memory; spread evenly over the split
when streaming), column 0 the image as read,
columns 1.. independent draws of the config's augmentation pipeline (the host-side crop for
streaming sources, then the device ops, as in training).

  python main.py --mode=augment --config=configs/default.py --workdir=runs/aug \
      --config.augment.vignetting=0.5   # -> runs/aug/augment.png
"""

from __future__ import annotations

import os

from absl import flags

flags.DEFINE_integer('augment_examples', 8, '--mode=augment: rows (training examples).')
flags.DEFINE_integer('augment_draws', 7, '--mode=augment: augmented draws per example.')
FLAGS = flags.FLAGS


def _pick(labels, n: int) -> list[int]:
  """Up to n indices: the first example of each class, then the next ones in order."""
  first = {}
  for i, y in enumerate(labels):
    first.setdefault(int(y), i)
  picked = sorted(first.values())[:n]
  rest = [i for i in range(len(labels)) if i not in set(picked)]
  return picked + rest[:n - len(picked)]


def grid(rows, scale: int):
  """uint8 (rows, cols, H, W, C) -> one uint8 image, cells upscaled and 2-px white gaps."""
  import numpy as np
  r, c, h, w, ch = rows.shape
  rows = rows.repeat(scale, axis=2).repeat(scale, axis=3)
  h, w, gap = h * scale, w * scale, 2
  out = np.full((r * (h + gap) + gap, c * (w + gap) + gap, ch), 255, np.uint8)
  for i in range(r):
    for j in range(c):
      out[gap + i * (h + gap):gap + i * (h + gap) + h, gap + j * (w + gap):gap + j * (w + gap) + w] = rows[i, j]
  return out


def augment(config, workdir: str) -> None:
  import jax
  import numpy as np
  from PIL import Image

  import util
  from data import augment as augment_lib, datasets
  from errors import UserError
  if FLAGS.augment_examples < 1 or FLAGS.augment_draws < 1:
    raise UserError('--augment_examples and --augment_draws must be positive')
  if not workdir:
    raise UserError('--workdir is required: augment.png is written there')
  info = datasets.info(config.dataset)
  if len(info.shape) != 3:
    raise UserError(f'--mode=augment shows images; {info.name} examples have shape {info.shape}')
  augment_lib.check(config.augment, info.shape[-1])
  util.check_workdir(workdir)
  n, draws = FLAGS.augment_examples, FLAGS.augment_draws
  pipe = datasets.pipeline(config.dataset, info)
  if pipe == 'memory':
    train = datasets.load_split(config.dataset, 'train')
    idx = _pick(train.labels, n)
    originals = train.images[idx]
    inputs = [originals] * draws
    skip = ()
    preprocess = augment_lib.Preprocess.from_images(train.images[:4096])
  else:
    rrc = augment_lib.resized_crop_setting(config.augment)
    train = datasets.Examples(config.dataset, info, 'train', rrc)
    plain = datasets.Examples(config.dataset, info, 'train')
    # Spread over the split (folders list class by class), reading nothing else.
    idx = sorted({int(i) for i in np.linspace(0, len(train) - 1, min(n, len(train)))})
    originals = np.stack([plain.load(i)[0] for i in idx])
    inputs = [np.stack([train.load(i, np.random.default_rng([config.seed, d, i]))[0]
                        for i in idx]) for d in range(draws)] if rrc else [originals] * draws
    skip = augment_lib.HOST_OPS
    preprocess = plain.preprocess(256)
  ops = augment_lib.pipeline(config.augment, skip=skip)
  # What the step feeds the net, back in pixels (cutout's zero shows as the mean).
  fn = jax.jit(lambda k, x: preprocess.to_pixels(augment_lib.apply(ops, k, x, preprocess)))

  def draw(d, x):
    y = fn(jax.random.fold_in(jax.random.key(config.seed), d), x)
    return np.asarray(np.clip(np.round(y), 0, 255), np.uint8)

  cols = [originals] + [draw(d, x) for d, x in enumerate(inputs)]
  rows = np.stack(cols, axis=1)
  scale = max(1, 96 // max(info.shape[:2]))
  image = grid(rows, scale)
  path = os.path.join(workdir, 'augment.png')
  Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(path)
  names = [op.name for op in ops] or ['none']
  if skip and augment_lib.resized_crop_setting(config.augment):
    names = ['resized_crop (host)'] + names
  util.write_json(os.path.join(workdir, 'augment.json'),
                  {'ops': names, 'examples': [int(i) for i in idx], 'draws': draws,
                   'pipeline': pipe, 'image': path})
  print(f'{path}: {len(idx)} training examples x {draws} draws of {", ".join(names)} '
        f'({pipe} pipeline)', flush=True)
