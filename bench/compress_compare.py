"""compress/ side by side with maintained implementations on a trained run's weights: magnitude
masks (per layer and global) against torch.nn.utils.prune, k-means with linear initialization
against scikit-learn's KMeans, and the distillation loss against torch's KL divergence with
Hinton et al.'s T^2. Writes bench/results/compress_compare.json and prints a table.

  .venv/bin/python bench/compress_compare.py --workdir=W [--sparsity=0.9] [--bits=5]

Needs the PyTorch venv of README "Speed" (bench/requirements-torch.txt has scikit-learn).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def main() -> None:
  p = argparse.ArgumentParser()
  p.add_argument('--workdir', required=True)
  p.add_argument('--torch_python', default=os.path.join(REPO, '.venv-torch', 'bin', 'python'))
  p.add_argument('--sparsity', type=float, default=0.9)
  p.add_argument('--bits', type=int, default=5)
  args = p.parse_args()

  import jax.numpy as jnp
  from compress import prune, share
  from train.objectives import distill
  from store import runs
  run = runs.load_run(args.workdir)
  params = run.variables['params']
  layers = prune.kernels(params)
  flat = {n: np.asarray(v, np.float32) for n, v in prune.flatten(params).items() if n in layers}
  sparsity = {n: args.sparsity for n in layers}
  ours_layer = prune.magnitude_masks(params, sparsity, 'layer')
  ours_global = prune.magnitude_masks(params, sparsity, 'global')
  arrays = {}
  for n, w in flat.items():
    arrays['w:' + n] = w
    arrays['kind:' + n] = np.array(layers[n])
    arrays['n_prune:' + n] = np.array(int(round(args.sparsity * w.size)))
    arrays['values:' + n] = w[ours_layer[n]]
    arrays['k:' + n] = np.array(2 ** args.bits)
  for kind in ('conv', 'dense'):
    size = sum(w.size for n, w in flat.items() if layers[n] == kind)
    arrays['global_prune:' + kind] = np.array(int(round(args.sparsity * size)))
  rng = np.random.default_rng(0)
  student, teacher = rng.normal(size=(2, 256, 10)).astype(np.float32) * 3
  labels = rng.integers(0, 10, 256).astype(np.int32)
  arrays.update(student=student, teacher=teacher, labels=labels, temperature=np.array(4.0),
                weight=np.array(0.9))
  with tempfile.TemporaryDirectory() as tmp:
    src, dst = os.path.join(tmp, 'in.npz'), os.path.join(tmp, 'out.npz')
    np.savez(src, **arrays)
    subprocess.run([args.torch_python, os.path.join(REPO, 'bench', 'torch_compress.py'), src, dst],
                   check=True)
    theirs = dict(np.load(dst))
  rows = []
  for n, w in flat.items():
    values = w[ours_layer[n]].astype(np.float64)
    c, a = share.kmeans(values, 2 ** args.bits)
    inertia = float(((values - c[a]) ** 2).sum())
    row = {'layer': n, 'weights': int(w.size),
           'layer_masks_equal': bool(np.array_equal(ours_layer[n], theirs['layer_mask:' + n])),
           'global_masks_equal': bool(np.array_equal(ours_global[n], theirs['global_mask:' + n])),
           'centroids': len(c),
           'max_centroid_diff': float(np.abs(np.sort(c) - theirs['centroids:' + n][:len(c)]).max())
           if len(c) == len(theirs['centroids:' + n]) else None,
           'inertia_ours': inertia, 'inertia_sklearn': float(theirs['inertia:' + n])}
    row['inertia_ratio'] = round(inertia / max(row['inertia_sklearn'], 1e-30), 6)
    rows.append(row)
  loss = np.asarray(distill.loss(jnp.asarray(student), jnp.asarray(teacher), jnp.asarray(labels),
                                 4.0, 0.9))
  result = {'workdir': os.path.abspath(args.workdir), 'model': run.config.model.name,
            'sparsity': args.sparsity, 'bits': args.bits, 'layers': rows,
            'distill_loss_max_abs_diff': float(np.abs(loss - theirs['distill_loss']).max()),
            'distill_loss_mean': float(loss.mean())}
  os.makedirs(os.path.join(REPO, 'bench', 'results'), exist_ok=True)
  with open(os.path.join(REPO, 'bench', 'results', 'compress_compare.json'), 'w') as f:
    json.dump(result, f, indent=2)
  print('| layer | weights | layer masks = torch | global masks = torch | centroids | max |c - sklearn| | inertia ours / sklearn |')
  print('|---|---|---|---|---|---|---|')
  for r in rows:
    print(f"| {r['layer']} | {r['weights']} | {r['layer_masks_equal']} | {r['global_masks_equal']} | "
          f"{r['centroids']} | {r['max_centroid_diff']} | {r['inertia_ratio']} |")
  print(f"distillation loss: max |ours - torch| = {result['distill_loss_max_abs_diff']:.2e} "
        f"(mean {result['distill_loss_mean']:.4f})")


if __name__ == '__main__':
  main()
