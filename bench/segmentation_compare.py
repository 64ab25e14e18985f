"""Side-by-side CPU train-step throughput of the segmentation networks: this project
(`main.py --mode=benchmark --config=configs/segmentation.py:model=M`) vs the same networks in
PyTorch (bench/pytorch_segmentation.py; parameter counts equal), alternating runs so both see
the same machine. PyTorch runs with tcmalloc preloaded and TCMALLOC_RELEASE_RATE=0, as main.py
runs itself. Writes bench/results/segmentation_compare.json and prints a markdown table
(medians of the rounds).

  python bench/segmentation_compare.py --torch_python=.venv-torch/bin/python --rounds=3
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

from compare import REPO, TCMALLOC, torch_run

MODELS = ('fcn8s', 'unet')


def jax_run(model: str, batch: int, steps: int) -> dict:
  with tempfile.TemporaryDirectory() as workdir:
    subprocess.run([sys.executable, 'main.py', '--mode=benchmark', f'--workdir={workdir}',
                    f'--config=configs/segmentation.py:model={model},batch_size={batch}',
                    f'--benchmark_steps={steps}'], cwd=REPO, check=True, capture_output=True)
    with open(os.path.join(workdir, 'benchmark.json')) as f:
      return json.load(f)


def main() -> None:
  p = argparse.ArgumentParser()
  p.add_argument('--torch_python', default=os.path.join(REPO, '.venv-torch', 'bin', 'python'))
  p.add_argument('--rounds', type=int, default=3)
  p.add_argument('--steps', type=int, default=20)
  p.add_argument('--batch_size', type=int, default=32)
  p.add_argument('--models', default=','.join(MODELS))
  args = p.parse_args()
  rows = []
  for model in args.models.split(','):
    jx, pt = [], []
    for _ in range(args.rounds):
      pt.append(torch_run(args.torch_python, model, args.batch_size, args.steps, TCMALLOC,
                          'pytorch_segmentation.py'))
      jx.append(jax_run(model, args.batch_size, args.steps))
    j = statistics.median(r['images_per_sec'] for r in jx)
    t = statistics.median(r['images_per_sec'] for r in pt)
    rows.append({'model': model, 'batch_size': args.batch_size, 'jax_images_per_sec': j,
                 'torch_images_per_sec': t, 'ratio': round(j / t, 3),
                 'jax_params': jx[0].get('num_params'), 'torch_params': pt[0]['num_params'],
                 'jax_runs': jx, 'torch_runs': pt})
  os.makedirs(os.path.join(REPO, 'bench', 'results'), exist_ok=True)
  with open(os.path.join(REPO, 'bench', 'results', 'segmentation_compare.json'), 'w') as f:
    json.dump(rows, f, indent=2)
  print('| model (64x64x1, 11 classes) | batch | params | this project img/s | PyTorch img/s | '
        'ratio |')
  print('|---|---|---|---|---|---|')
  for r in rows:
    print(f"| {r['model']} | {r['batch_size']} | {r['torch_params']:,} | "
          f"{r['jax_images_per_sec']:.1f} | {r['torch_images_per_sec']:.1f} | {r['ratio']:.2f}x |")


if __name__ == '__main__':
  main()
