"""Side-by-side CPU train-step throughput: this project (`main.py --mode=benchmark`) vs the
PyTorch baseline (bench/pytorch_simplenet.py), alternating runs so both see the same machine.

  python bench/compare.py --torch_python=.venv-torch/bin/python --rounds=3 [--xla_flags=...]

Each round runs PyTorch with glibc's malloc and with tcmalloc preloaded (this project's main.py
preloads tcmalloc itself, with TCMALLOC_RELEASE_RATE=0, and the second run gets the same, so it
is the like-for-like one), then this project once per `--conv_impls` entry: a conv_impl value,
optionally with a conv_algorithm after a slash (`auto,onednn/direct,xla`; by default the default
settings and XLA's convolutions). Writes bench/results/compare.json and prints a markdown table
(median of rounds). The FLOPs behind "% of peak" are a direct convolution's (XLA's count);
Winograd layers do fewer multiplications, so with them the share is an effective one.
"""

import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TCMALLOC = next(iter(sorted(glob.glob('/usr/lib/*/libtcmalloc_minimal.so.4'))), '')
CASES = [('simplenet_cifar_310k', 128), ('simplenet_cifar_5m', 64)]


def jax_run(model: str, batch: int, steps: int, xla_flags: str, conv: str,
            extra: list[str]) -> dict:
  conv_impl, _, algorithm = conv.partition('/')
  with tempfile.TemporaryDirectory() as workdir:
    env = dict(os.environ, XLA_FLAGS=xla_flags)
    subprocess.run([sys.executable, 'main.py', '--mode=benchmark', f'--workdir={workdir}',
                    f'--config=configs/default.py:model={model},dataset=synthetic,'
                    f'batch_size={batch},augment.crop_padding=0,augment.flip=false,'
                    f'conv_impl={conv_impl},conv_algorithm={algorithm or "auto"}',
                    f'--benchmark_steps={steps}', *extra],
                   cwd=REPO, env=env, check=True, capture_output=True)
    with open(os.path.join(workdir, 'benchmark.json')) as f:
      return json.load(f)


def torch_run(python: str, model: str, batch: int, steps: int, preload: str = '',
              script: str = 'pytorch_simplenet.py') -> dict:
  # With tcmalloc, the settings main.py gives itself (no release of freed memory to the OS).
  env = (dict(os.environ, LD_PRELOAD=preload,
              TCMALLOC_RELEASE_RATE=os.environ.get('TCMALLOC_RELEASE_RATE', '0'))
         if preload else None)
  out = subprocess.run([python, os.path.join(REPO, 'bench', script),
                        f'--model={model}', f'--batch_size={batch}', f'--steps={steps}'],
                       check=True, capture_output=True, text=True, env=env).stdout
  return json.loads(out.strip().splitlines()[-1])


def main() -> None:
  p = argparse.ArgumentParser()
  p.add_argument('--torch_python', default=os.path.join(REPO, '.venv-torch', 'bin', 'python'))
  p.add_argument('--rounds', type=int, default=3)
  p.add_argument('--steps', type=int, default=20)
  p.add_argument('--xla_flags', default=os.environ.get('XLA_FLAGS', ''))
  p.add_argument('--models', default=','.join(m for m, _ in CASES))
  p.add_argument('--conv_impls', default='auto,xla',
                 help='conv_impl[/conv_algorithm] settings to run, comma separated')
  p.add_argument('--jax_args', default='', help='extra main.py flags, space separated')
  args = p.parse_args()
  impls = args.conv_impls.split(',')
  rows = []
  for model, batch in CASES:
    if model not in args.models.split(','):
      continue
    jx, pt, pt_tc = {i: [] for i in impls}, [], []
    for _ in range(args.rounds):
      pt.append(torch_run(args.torch_python, model, batch, args.steps))
      if TCMALLOC:
        pt_tc.append(torch_run(args.torch_python, model, batch, args.steps, TCMALLOC))
      for impl in impls:
        jx[impl].append(jax_run(model, batch, args.steps, args.xla_flags, impl,
                                args.jax_args.split()))
    t = statistics.median(r['images_per_sec'] for r in pt)
    t_tc = statistics.median(r['images_per_sec'] for r in pt_tc) if pt_tc else None
    for impl in impls:
      j = statistics.median(r['images_per_sec'] for r in jx[impl])
      rows.append({'model': model, 'batch_size': batch, 'conv_impl': impl,
                   'jax_images_per_sec': j, 'torch_images_per_sec': t,
                   'ratio': round(j / t, 3),
                   'torch_tcmalloc_images_per_sec': t_tc,
                   'ratio_tcmalloc': round(j / t_tc, 3) if t_tc else None,
                   'jax_fraction_of_peak': statistics.median(
                       r['fraction_of_peak'] for r in jx[impl]),
                   'jax_peak_gflops': statistics.median(
                       r['peak_gflops_per_sec'] for r in jx[impl]),
                   'torch_peak_gflops': statistics.median(
                       r['peak_gflops_per_sec'] for r in pt),
                   'jax_runs': jx[impl], 'torch_runs': pt, 'torch_tcmalloc_runs': pt_tc,
                   'xla_flags': args.xla_flags})
  os.makedirs(os.path.join(REPO, 'bench', 'results'), exist_ok=True)
  with open(os.path.join(REPO, 'bench', 'results', 'compare.json'), 'w') as f:
    json.dump(rows, f, indent=2)
  print('| model | batch | convolutions | this project img/s | PyTorch img/s | ratio | '
        'PyTorch + tcmalloc img/s | ratio | % of f32 matmul peak |')
  print('|---|---|---|---|---|---|---|---|---|')
  for r in rows:
    tc = (f"{r['torch_tcmalloc_images_per_sec']:.1f} | {r['ratio_tcmalloc']:.2f}x"
          if r['ratio_tcmalloc'] else 'n/a | n/a')
    print(f"| {r['model']} | {r['batch_size']} | {r['conv_impl']} | {r['jax_images_per_sec']:.1f} | "
          f"{r['torch_images_per_sec']:.1f} | {r['ratio']:.2f}x | {tc} | "
          f"{100 * r['jax_fraction_of_peak']:.0f}% |")


if __name__ == '__main__':
  main()
