"""Attribution speed side by side with captum: Integrated Gradients (50 steps, black baseline,
trapezoid rule) and occlusion (6x6 patches, stride 2, probability drop) on the same trained
SimpleNet and the same test images, this project's jitted batched functions
(analysis/visualize.py) against captum 0.9 on the bench's PyTorch copy of the network with the
run's weights. Also checks that both give the same maps.

  .venv/bin/python bench/explain_compare.py --workdir=runs/default \\
      [--torch_python=.venv-torch/bin/python] [--images=16] [--repeats=3]

Needs a trained SimpleNet run (`make run`) and the PyTorch venv with captum
(`.venv-torch/bin/pip install -r bench/requirements-torch.txt`). Writes
bench/results/explain_compare.json and prints a table.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def export(run, images, labels, args) -> dict:
  """The run's SimpleNet weights in the order the PyTorch copy builds its layers."""
  params, stats = run.variables['params'], run.variables['batch_stats']
  convs = sorted((k for k in params if k.startswith('ConvNormAct_')), key=lambda k: int(k[12:]))
  from models import layout
  out = {'layout': layout.format_layout(list(run.model.layout)), 'in_channels': run.info.shape[-1],
      'num_classes': run.info.num_classes, 'mean': np.float32(run.preprocess.mean),
      'std': np.float32(run.preprocess.std), 'images': images, 'labels': labels,
      'ig_steps': args.ig_steps, 'occ_size': 6, 'occ_stride': 2, 'repeats': args.repeats,
      'dense_kernel': np.asarray(params['Dense_0']['kernel']),
      'dense_bias': np.asarray(params['Dense_0']['bias'])}
  for i, name in enumerate(convs):
    out[f'conv{i}_kernel'] = np.asarray(params[name]['Conv_0']['kernel'])
    out[f'conv{i}_bias'] = np.asarray(params[name]['Conv_0']['bias'])
    out[f'bn{i}_scale'] = np.asarray(params[name]['BatchNorm_0']['scale'])
    out[f'bn{i}_bias'] = np.asarray(params[name]['BatchNorm_0']['bias'])
    out[f'bn{i}_mean'] = np.asarray(stats[name]['BatchNorm_0']['mean'])
    out[f'bn{i}_var'] = np.asarray(stats[name]['BatchNorm_0']['var'])
  return out


def timed(fn, repeats: int):
  import jax
  result = jax.block_until_ready(fn())  # compile
  best = float('inf')
  for _ in range(repeats):
    t = time.perf_counter()
    result = jax.block_until_ready(fn())
    best = min(best, time.perf_counter() - t)
  return np.asarray(result), best


def main() -> None:
  p = argparse.ArgumentParser()
  p.add_argument('--workdir', default=os.path.join(REPO, 'runs', 'default'))
  p.add_argument('--torch_python', default=os.path.join(REPO, '.venv-torch', 'bin', 'python'))
  p.add_argument('--images', type=int, default=16)
  p.add_argument('--ig_steps', type=int, default=50)
  p.add_argument('--repeats', type=int, default=3)
  args = p.parse_args()

  import jax
  import jax.numpy as jnp
  from analysis import common, visualize
  from store import runs
  run = runs.load_run(args.workdir)
  if not getattr(run.model, 'layout', None):
    sys.exit('error: explain_compare needs a SimpleNet-family run (the PyTorch copy is SimpleNet)')
  images, labels, _ = common.test_examples(run, args.images, seed=0, per_class=True)
  images = images.astype(np.float32)
  # Both sides at their fastest: the run's own convolutions (oneDNN where the CPU has them).
  net = runs.Net(run.model, run.preprocess)
  x, y = jnp.asarray(images), jnp.asarray(labels)
  ig_fn = jax.jit(lambda v, x, y: visualize.integrated_gradients(net, v, x, y, jnp.zeros_like(x),
                                                               args.ig_steps)[0])
  occ_fn = jax.jit(lambda v, x, y: visualize.occlusion(net, v, x, y, 6, 2))
  ours_ig, t_ig = timed(lambda: ig_fn(run.variables, x, y), args.repeats)
  ours_occ, t_occ = timed(lambda: occ_fn(run.variables, x, y), args.repeats)
  logits = np.asarray(net.logits(run.variables, x))
  with tempfile.TemporaryDirectory() as tmp:
    np.savez(os.path.join(tmp, 'export.npz'), **export(run, images, labels, args))
    proc = subprocess.run([args.torch_python, os.path.join(REPO, 'bench', 'captum_explain.py'),
                           os.path.join(tmp, 'export.npz'), os.path.join(tmp, 'out.npz')],
                          capture_output=True, text=True, check=True)
    theirs = json.loads(proc.stdout.strip().splitlines()[-1])
    maps = np.load(os.path.join(tmp, 'out.npz'))
    their_logits, their_ig, their_occ = maps['logits'], maps['ig'], maps['occlusion']
  rel = lambda a, b: float(np.abs(a - b).max() / (np.abs(b).max() + 1e-12))
  result = {
      'workdir': os.path.basename(os.path.abspath(args.workdir)), 'model': run.config.model.name,
      'images': len(images), 'ig_steps': args.ig_steps, 'conv_impl': run.convolutions.impl,
      'ours_ig_maps_per_sec': len(images) / t_ig, 'captum_ig_maps_per_sec': len(images) / theirs['ig_seconds'],
      'ours_occlusion_maps_per_sec': len(images) / t_occ,
      'captum_occlusion_maps_per_sec': len(images) / theirs['occlusion_seconds'],
      'logits_max_rel_diff': rel(logits, their_logits),
      'ig_max_rel_diff': rel(ours_ig, their_ig),
      # ReLU gates that flip on float-level differences at a few path points move single
      # pixels; the mean difference says whether the maps agree overall.
      'ig_mean_rel_diff': float(np.abs(ours_ig - their_ig).mean() / np.abs(their_ig).mean()),
      # captum's riemann_trapezoid weights the n path points 1/n (ends 1/2n) over linspace(0, 1,
      # n): they sum to (n - 1)/n, not 1, so its maps are ours scaled by that factor.
      'ig_max_rel_diff_at_captum_scale': rel(ours_ig * (args.ig_steps - 1) / args.ig_steps,
                                             their_ig),
      'occlusion_max_rel_diff': rel(ours_occ, their_occ.sum(-1) / their_occ.shape[-1]),
      'torch': theirs['torch'], 'torch_threads': theirs['threads'],
  }
  result['ig_ratio'] = result['ours_ig_maps_per_sec'] / result['captum_ig_maps_per_sec']
  result['occlusion_ratio'] = (result['ours_occlusion_maps_per_sec'] /
                               result['captum_occlusion_maps_per_sec'])
  os.makedirs(os.path.join(REPO, 'bench', 'results'), exist_ok=True)
  with open(os.path.join(REPO, 'bench', 'results', 'explain_compare.json'), 'w') as f:
    json.dump(result, f, indent=2)
  print('| method | this project maps/s | captum maps/s | ratio | max relative map difference |')
  print('|---|---|---|---|---|')
  print(f"| integrated gradients ({args.ig_steps} steps) | {result['ours_ig_maps_per_sec']:.1f} | "
        f"{result['captum_ig_maps_per_sec']:.1f} | {result['ig_ratio']:.2f}x | "
        f"{result['ig_max_rel_diff_at_captum_scale']:.1e} (after captum's (n-1)/n) |")
  print(f"| occlusion (6x6, stride 2) | {result['ours_occlusion_maps_per_sec']:.1f} | "
        f"{result['captum_occlusion_maps_per_sec']:.1f} | {result['occlusion_ratio']:.2f}x | "
        f"{result['occlusion_max_rel_diff']:.1e} |")


if __name__ == '__main__':
  main()
