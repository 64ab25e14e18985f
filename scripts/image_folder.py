"""Writes a dataset this machine has as an image folder (DIR/train/<class>/*.png|jpg and
DIR/val/<class>/...), the layout `--config.dataset.name=folder` reads: a real folder to try
the streaming pipeline, the ImageNet configs' small variants and the benchmarks on.

  python scripts/image_folder.py --dataset=fashion_mnist --size=64 --out=/tmp/fm64 \
      --per_class=600 --val_per_class=100 [--format=jpg] [--channels=3]
"""

import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

flags.DEFINE_string('dataset', 'fashion_mnist', 'Dataset name (as dataset.name in a config).')
flags.DEFINE_string('out', None, 'Folder to write (must not exist or be empty).')
flags.DEFINE_integer('size', 0, 'Resize to size x size (0 = keep).')
flags.DEFINE_enum('format', 'png', ['png', 'jpg'], 'Image file format.')
flags.DEFINE_integer('channels', 3, 'Write 1 (grayscale) or 3 (RGB) channels.')
flags.DEFINE_integer('per_class', 0, 'Training images per class (0 = all).')
flags.DEFINE_integer('val_per_class', 0, 'Validation (test split) images per class (0 = all).')
FLAGS = flags.FLAGS


def main(argv):
  del argv
  from PIL import Image
  from configs import default
  from data import datasets
  from errors import UserError
  try:
    if not FLAGS.out:
      raise UserError('--out is required: the folder to write')
    if os.path.isdir(FLAGS.out) and os.listdir(FLAGS.out):
      raise UserError(f'{FLAGS.out} is not empty; pass a new --out')
    c = default.get_config()
    c.dataset.name = FLAGS.dataset
    names = None
    for split, sub, limit in (('train', 'train', FLAGS.per_class),
                              ('test', 'val', FLAGS.val_per_class)):
      data = datasets.load_split(c.dataset, split)
      info = datasets.info(c.dataset)
      names = names or list(info.class_names) or [f'{i:03d}' for i in range(info.num_classes)]
      count = {}
      for image, label in zip(data.images, data.labels):
        label = int(label)
        if limit and count.get(label, 0) >= limit:
          continue
        count[label] = count.get(label, 0) + 1
        img = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
        img = img.convert('L' if FLAGS.channels == 1 else 'RGB')
        if FLAGS.size:
          img = img.resize((FLAGS.size, FLAGS.size), Image.BILINEAR)
        d = os.path.join(FLAGS.out, sub, names[label])
        os.makedirs(d, exist_ok=True)
        img.save(os.path.join(d, f'{count[label]:06d}.{FLAGS.format}'),
                 **({'quality': 90} if FLAGS.format == 'jpg' else {}))
      print(f'{FLAGS.out}/{sub}: {sum(count.values())} images in {len(count)} classes')
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  app.run(main)
