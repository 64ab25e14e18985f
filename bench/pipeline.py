"""Benchmark of the streaming input pipeline (data/streaming.py) on real image files.

1. Writes Fashion-MNIST as two image folders: 64x64 RGB PNGs and 224x224 RGB JPEGs
   (scripts/image_folder.py; the test split's images are the val folder).
2. The pipeline alone: decode + host crop + batch, images/s per process, with threads and with
   worker processes, ImageNet-style random-resized crops on the 224 folder.
3. `--mode=benchmark` of a SimpleNet fed by it at 64x64: training img/s and the share of
   training time lost to input (steps fed by the pipeline vs the same steps on a batch already
   on the device, timed in one process).

  python bench/pipeline.py --out=bench/results/pipeline.json [--work=/tmp/pipeline_bench]

Keep the machine otherwise quiet: every number is a rate measured in this one run.
"""

import json
import os
import subprocess
import sys

from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

flags.DEFINE_string('out', 'bench/results/pipeline.json', 'Where to write the results.')
flags.DEFINE_string('work', '/tmp/pipeline_bench', 'Folder for the image folders and runs.')
flags.DEFINE_integer('per_class', 300, 'Training images per class in each folder.')
flags.DEFINE_integer('batches', 30, 'Timed batches of the pipeline alone.')
flags.DEFINE_integer('warmup', 12, 'Untimed batches first (more than the prefetch buffers hold).')
FLAGS = flags.FLAGS


def _folder(name: str, size: int, fmt: str) -> str:
  path = os.path.join(FLAGS.work, name)
  if not os.path.isdir(path):
    subprocess.run([sys.executable, 'scripts/image_folder.py', '--dataset=fashion_mnist',
                    f'--size={size}', f'--format={fmt}', f'--out={path}',
                    f'--per_class={FLAGS.per_class}', '--val_per_class=20'],
                   cwd=REPO, check=True, capture_output=True)
  return path


def _pipeline_rate(root: str, shape: str, rrc: str, workers: int, batch: int) -> float:
  from configs import default
  from data import augment, datasets, streaming
  from train import distributed
  c = default.get_config()
  c.dataset.name, c.dataset.data_dir, c.dataset.image_shape = 'folder', root, shape
  c.dataset.num_workers, c.augment.rrc_scale = workers, rrc
  info = datasets.info(c.dataset)
  ex = datasets.Examples(c.dataset, info, 'train', augment.resized_crop_setting(c.augment))
  src = streaming.StreamingTrain(ex, c.dataset, batch, 10 * FLAGS.batches, distributed.mesh(), 0)
  rate = src.rate(FLAGS.batches, FLAGS.warmup)
  src.close()
  return round(rate, 1)


def main(argv):
  del argv
  os.makedirs(FLAGS.work, exist_ok=True)
  png64 = _folder('fm_png64', 64, 'png')
  jpg224 = _folder('fm_jpg224', 224, 'jpg')
  results = {'host_cpus': os.cpu_count(), 'per_class': FLAGS.per_class, 'alone': []}
  for root, label, shape, rrc in ((png64, '64x64 PNG', '', ''),
                                  (png64, '64x64 PNG + random-resized crop', '', '0.08,1'),
                                  (jpg224, '224x224 JPEG + random-resized crop', '', '0.08,1')):
    for workers in (0, 2):
      rate = _pipeline_rate(root, shape, rrc, workers, 128 if '64' in label else 64)
      results['alone'].append({'folder': label, 'num_workers': workers, 'images_per_sec': rate})
      print(f'pipeline alone  {label:38s} workers={workers}: {rate:8.1f} img/s', flush=True)
  results['training_64'] = []
  for workers in (0, 1, 2):
    bench_dir = os.path.join(FLAGS.work, f'bench64_w{workers}')
    proc = subprocess.run([sys.executable, 'main.py', '--mode=benchmark',
                           '--config=configs/default.py', f'--workdir={bench_dir}',
                           '--config.dataset.name=folder', f'--config.dataset.data_dir={png64}',
                           '--config.dataset.pipeline=streaming',
                           f'--config.dataset.num_workers={workers}', '--benchmark_steps=30'],
                          cwd=REPO, capture_output=True, text=True)
    if proc.returncode:
      raise SystemExit(proc.stderr[-3000:])
    with open(os.path.join(bench_dir, 'benchmark.json')) as f:
      b = json.load(f)
    results['training_64'].append({'num_workers': workers, **{k: b[k] for k in (
        'model', 'batch_size', 'images_per_sec', 'input_wait_fraction', 'host_blocked_fraction',
        'pipeline_images_per_sec', 'conv_impl')}})
    print(f"SimpleNet-310K at 64x64 fed by the pipeline, workers={workers}: "
          f"{b['images_per_sec']} img/s, {100 * b['input_wait_fraction']:.1f}% of training time "
          'lost to input', flush=True)
  with open(FLAGS.out, 'w') as f:
    json.dump(results, f, indent=2)
  print(f'wrote {FLAGS.out}')


if __name__ == '__main__':
  app.run(main)
