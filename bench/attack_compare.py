"""FGSM, PGD, APGD-CE, APGD-T and Square side by side with torchattacks on the same trained SimpleNet, weights and test
images: adversarial examples per second, FGSM perturbations compared element by element, and
robust accuracies (analysis/attack.py against torchattacks 3.5.1 on the bench's PyTorch copy).

  .venv/bin/python bench/attack_compare.py --workdir=runs/default [--images=256] [--eps=0.00784]

Needs a trained SimpleNet run (`make run`) and the PyTorch venv with torchattacks, installed
without its dependencies (they would replace the pinned CPU torch with a CUDA build):
`.venv-torch/bin/pip install --no-deps torchattacks==3.5.1`. Writes
bench/results/attack_compare.json and prints a table.
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
sys.path.insert(0, os.path.join(REPO, 'bench'))


def main() -> None:
  p = argparse.ArgumentParser()
  p.add_argument('--workdir', default=os.path.join(REPO, 'runs', 'default'))
  p.add_argument('--torch_python', default=os.path.join(REPO, '.venv-torch', 'bin', 'python'))
  p.add_argument('--images', type=int, default=256)
  p.add_argument('--eps', type=float, default=2 / 255)
  p.add_argument('--steps', type=int, default=20)
  p.add_argument('--apgd_steps', type=int, default=20)
  p.add_argument('--square_queries', type=int, default=500)
  args = p.parse_args()

  import jax
  import jax.numpy as jnp
  import attacks
  from analysis import common
  from explain_compare import export
  from store import runs
  run = runs.load_run(args.workdir)
  images, labels, _ = common.test_examples(run, args.images, seed=0)
  images = images.astype(np.float32)
  f = runs.Net(run.model, run.preprocess).logits01(run.variables)
  x, y = jnp.asarray(images) / 255.0, jnp.asarray(labels)
  fns = {
      'fgsm': jax.jit(lambda x, y: attacks.fgsm(f, x, y, args.eps)),
      'pgd': jax.jit(lambda x, y: attacks.pgd(f, x, y, args.eps, steps=args.steps)),
      'apgd_ce': jax.jit(lambda x, y: attacks.apgd(f, x, y, args.eps, steps=args.apgd_steps)[0]),
      # torchattacks' APGDT runs 9 targets, capped at classes - 1 as ours is.
      'apgd_t': jax.jit(lambda x, y: attacks.apgd_targeted(f, x, y, args.eps,
                                                          steps=args.apgd_steps)[0]),
      'square': jax.jit(lambda x, y: attacks.square_linf(f, x, y, args.eps,
                                                        args.square_queries)[0]),
  }
  ours = {}
  for name, fn in fns.items():
    jax.block_until_ready(fn(x[:8], y[:8]))  # compile for the warm-up shape, like theirs
    jax.block_until_ready(fn(x, y))          # and for the timed one
    t = time.perf_counter()
    ours[name] = np.asarray(jax.block_until_ready(fn(x, y)))
    ours[f'{name}_seconds'] = time.perf_counter() - t
  clean = attacks.accuracy(f, x, y)
  with tempfile.TemporaryDirectory() as tmp:
    exported = export(run, images, labels, argparse.Namespace(ig_steps=0, repeats=0))
    np.savez(os.path.join(tmp, 'export.npz'), eps=args.eps, steps=args.steps,
             apgd_steps=args.apgd_steps, square_queries=args.square_queries,
             **exported)
    proc = subprocess.run([args.torch_python, os.path.join(REPO, 'bench', 'torchattacks_attack.py'),
                           os.path.join(tmp, 'export.npz'), os.path.join(tmp, 'out.npz')],
                          capture_output=True, text=True)
    if proc.returncode:
      sys.exit(f'the torchattacks side failed:\n{proc.stderr[-3000:]}')
    theirs = json.loads(proc.stdout.strip().splitlines()[-1])
    adv = dict(np.load(os.path.join(tmp, 'out.npz')))
  labels_np = np.asarray(labels)
  ours_delta, their_delta = ours['fgsm'] - np.asarray(x), adv['fgsm'] - np.asarray(x)
  result = {
      'workdir': os.path.basename(os.path.abspath(args.workdir)), 'images': len(images),
      'eps': args.eps, 'steps': args.steps, 'conv_impl': run.convolutions.impl,
      'clean_accuracy': clean,
      'fgsm_same_sign_fraction': float(np.mean(np.sign(ours_delta) == np.sign(their_delta))),
      # Where both moved a pixel; the rest is mostly max-pool ties on the black background,
      # whose gradient each framework hands to a different pixel of the window.
      'fgsm_same_sign_where_both_moved': float(np.mean(
          (np.sign(ours_delta) == np.sign(their_delta))[(ours_delta != 0) & (their_delta != 0)])),
      **{k: v for name in fns for k, v in (
          (f'{name}_accuracy', attacks.accuracy(f, jnp.asarray(ours[name]), y)),
          (f'torchattacks_{name}_accuracy', float(np.mean(adv[f'{name}_pred'] == labels_np))),
          (f'ours_{name}_examples_per_sec', len(images) / ours[f'{name}_seconds']),
          (f'torchattacks_{name}_examples_per_sec', len(images) / theirs[f'{name}_seconds']))},
      'apgd_steps': args.apgd_steps, 'square_queries': args.square_queries,
      'torch': theirs['torch'], 'torchattacks': theirs['torchattacks'],
  }
  result['pgd_ratio'] = (result['ours_pgd_examples_per_sec'] /
                         result['torchattacks_pgd_examples_per_sec'])
  os.makedirs(os.path.join(REPO, 'bench', 'results'), exist_ok=True)
  with open(os.path.join(REPO, 'bench', 'results', 'attack_compare.json'), 'w') as fh:
    json.dump(result, fh, indent=2)
  print(f"clean {100 * clean:.1f}%, eps {args.eps:.4f}, {len(images)} images, "
        f"{run.convolutions.impl} convolutions")
  print('| attack | this project: accuracy, examples/s | torchattacks: accuracy, examples/s | ratio |')
  print('|---|---|---|---|')
  for name in fns:
    r = result[f'ours_{name}_examples_per_sec'] / result[f'torchattacks_{name}_examples_per_sec']
    budget = {'pgd': f'-{args.steps}', 'apgd_ce': f'-{args.apgd_steps}',
              'apgd_t': f'-{args.apgd_steps}', 'square': f'-{args.square_queries}q'}
    print(f"| {name}{budget.get(name, '')} | "
          f"{100 * result[f'{name}_accuracy']:.1f}%, {result[f'ours_{name}_examples_per_sec']:.0f} | "
          f"{100 * result[f'torchattacks_{name}_accuracy']:.1f}%, "
          f"{result[f'torchattacks_{name}_examples_per_sec']:.0f} | {r:.2f}x |")
  print(f"FGSM perturbations with the same sign: {100 * result['fgsm_same_sign_fraction']:.3f}% "
        f"({100 * result['fgsm_same_sign_where_both_moved']:.3f}% where both moved the pixel)")


if __name__ == '__main__':
  main()
