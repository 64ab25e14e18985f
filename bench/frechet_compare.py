"""gan/frechet.py's distance (scipy's matrix square root) side by side with torchmetrics' FID
formula (eigenvalues of S1 S2) on the same feature statistics: real test images vs other real
test images, vs a GAN's samples, and vs uniform noise, on the penultimate features of a
classifier run. Writes bench/results/frechet_compare.json.

  .venv/bin/python bench/frechet_compare.py --classifier=runs/default --gan=runs/dcgan

Needs the PyTorch venv of README "Speed" plus `pip install --no-deps torchmetrics==1.9.0
lightning-utilities==0.15.3` (pytorch-fid would need torchvision, whose PyPI build does not
load against the CPU torch).
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
  p.add_argument('--classifier', required=True)
  p.add_argument('--gan', required=True, help='a --mode=gan workdir (its gan/samples.npz)')
  p.add_argument('--n', type=int, default=5000)
  p.add_argument('--torch_python', default=os.path.join(REPO, '.venv-torch', 'bin', 'python'))
  args = p.parse_args()

  from gan import frechet
  from store import runs
  run = runs.load_run(args.classifier)
  test = run.test_split()
  order = np.random.default_rng(0).permutation(len(test))
  real_a = frechet.features(run, test.images[order[:args.n]])
  real_b = frechet.features(run, test.images[order[args.n:2 * args.n]])
  with np.load(os.path.join(args.gan, 'gan', 'samples.npz')) as f:
    gen = f['images']
  pick = np.random.default_rng(1).permutation(len(gen))[:args.n]
  noise = np.random.default_rng(2).integers(0, 256, (args.n, *test.images.shape[1:]), np.uint8)
  sets = {'real_vs_real': real_b, 'real_vs_generated': frechet.features(run, gen[pick]),
          'real_vs_noise': frechet.features(run, noise)}
  mu1, s1 = frechet.statistics(real_a)
  arrays, ours = {}, {}
  for name, f in sets.items():
    mu2, s2 = frechet.statistics(f)
    arrays.update({f'mu1:{name}': mu1, f's1:{name}': s1, f'mu2:{name}': mu2, f's2:{name}': s2})
    ours[name] = frechet.distance(mu1, s1, mu2, s2)
  with tempfile.TemporaryDirectory() as tmp:
    src, dst = os.path.join(tmp, 'in.npz'), os.path.join(tmp, 'out.npz')
    np.savez(src, **arrays)
    subprocess.run([args.torch_python, os.path.join(REPO, 'bench', 'torch_frechet.py'), src, dst],
                   check=True)
    theirs = {k: float(v) for k, v in np.load(dst).items()}
  rows = [{'pair': n, 'ours': ours[n], 'torchmetrics': theirs[n],
           'relative_difference': abs(ours[n] - theirs[n]) / max(abs(theirs[n]), 1e-12)}
          for n in sets]
  result = {'classifier': os.path.abspath(args.classifier), 'gan': os.path.abspath(args.gan),
            'images_per_set': args.n, 'feature_dim': int(real_a.shape[1]), 'rows': rows}
  os.makedirs(os.path.join(REPO, 'bench', 'results'), exist_ok=True)
  with open(os.path.join(REPO, 'bench', 'results', 'frechet_compare.json'), 'w') as f:
    json.dump(result, f, indent=2)
  print('| pair | ours | torchmetrics | relative difference |\n|---|---|---|---|')
  for r in rows:
    print(f"| {r['pair']} | {r['ours']:.6g} | {r['torchmetrics']:.6g} | {r['relative_difference']:.2e} |")


if __name__ == '__main__':
  main()
