"""Side-by-side CPU train-step throughput: this project (`main.py --mode=benchmark`) vs the
PyTorch baseline (bench/pytorch_simplenet.py), alternating runs so both see the same machine.

  python bench/compare.py --torch_python=.venv-torch/bin/python --rounds=3 [--xla_flags=...]

Writes bench/results/compare.json and prints a markdown table (median of rounds).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASES = [('simplenet_cifar_310k', 128), ('simplenet_cifar_5m', 64)]


def jax_run(model: str, batch: int, steps: int, xla_flags: str, extra: list[str]) -> dict:
  with tempfile.TemporaryDirectory() as workdir:
    env = dict(os.environ, XLA_FLAGS=xla_flags)
    subprocess.run([sys.executable, 'main.py', '--mode=benchmark', f'--workdir={workdir}',
                    f'--config=configs/default.py:model={model},dataset=synthetic,'
                    f'batch_size={batch},augment.crop_padding=0,augment.flip=false',
                    f'--benchmark_steps={steps}', *extra],
                   cwd=REPO, env=env, check=True, capture_output=True)
    with open(os.path.join(workdir, 'benchmark.json')) as f:
      return json.load(f)


def torch_run(python: str, model: str, batch: int, steps: int) -> dict:
  out = subprocess.run([python, os.path.join(REPO, 'bench', 'pytorch_simplenet.py'),
                        f'--model={model}', f'--batch_size={batch}', f'--steps={steps}'],
                       check=True, capture_output=True, text=True).stdout
  return json.loads(out.strip().splitlines()[-1])


def main() -> None:
  p = argparse.ArgumentParser()
  p.add_argument('--torch_python', default=os.path.join(REPO, '.venv-torch', 'bin', 'python'))
  p.add_argument('--rounds', type=int, default=3)
  p.add_argument('--steps', type=int, default=20)
  p.add_argument('--xla_flags', default=os.environ.get('XLA_FLAGS', ''))
  p.add_argument('--models', default=','.join(m for m, _ in CASES))
  p.add_argument('--jax_args', default='', help='extra main.py flags, space separated')
  args = p.parse_args()
  rows = []
  for model, batch in CASES:
    if model not in args.models.split(','):
      continue
    jx, pt = [], []
    for _ in range(args.rounds):
      pt.append(torch_run(args.torch_python, model, batch, args.steps))
      jx.append(jax_run(model, batch, args.steps, args.xla_flags, args.jax_args.split()))
    j = statistics.median(r['images_per_sec'] for r in jx)
    t = statistics.median(r['images_per_sec'] for r in pt)
    peak = statistics.median(r['peak_gflops_per_sec'] for r in jx)
    frac = statistics.median(r['fraction_of_peak'] for r in jx)
    rows.append({'model': model, 'batch_size': batch, 'jax_images_per_sec': j,
                 'torch_images_per_sec': t, 'ratio': round(j / t, 3),
                 'jax_fraction_of_peak': frac, 'jax_peak_gflops': peak,
                 'torch_peak_gflops': statistics.median(r['peak_gflops_per_sec'] for r in pt),
                 'jax_runs': jx, 'torch_runs': pt, 'xla_flags': args.xla_flags})
  os.makedirs(os.path.join(REPO, 'bench', 'results'), exist_ok=True)
  with open(os.path.join(REPO, 'bench', 'results', 'compare.json'), 'w') as f:
    json.dump(rows, f, indent=2)
  print('| model | batch | this project img/s | PyTorch img/s | ratio | % of f32 matmul peak |')
  print('|---|---|---|---|---|---|')
  for r in rows:
    print(f"| {r['model']} | {r['batch_size']} | {r['jax_images_per_sec']:.1f} | "
          f"{r['torch_images_per_sec']:.1f} | {r['ratio']:.2f}x | {100 * r['jax_fraction_of_peak']:.0f}% |")


if __name__ == '__main__':
  main()
