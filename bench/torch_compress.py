"""The PyTorch / scikit-learn side of bench/compress_compare.py (runs in .venv-torch): magnitude
masks from torch.nn.utils.prune, k-means from scikit-learn, and Hinton's distillation loss from
torch's KL divergence, on the arrays the JAX side saved. Usage: torch_compress.py IN.npz OUT.npz"""

import sys

import numpy as np
import torch
from sklearn.cluster import KMeans
from torch.nn.utils import prune


def main(src: str, dst: str) -> None:
  d = dict(np.load(src))
  names = [k[len('w:'):] for k in d if k.startswith('w:')]
  out = {}
  layers = []
  for n in names:
    m = torch.nn.Module()
    m.weight = torch.nn.Parameter(torch.from_numpy(d['w:' + n]))
    amount = int(d['n_prune:' + n])
    prune.l1_unstructured(m, 'weight', amount=amount)
    out['layer_mask:' + n] = m.weight_mask.numpy().astype(bool)
    layers.append(m)
  for kind in ('conv', 'dense'):
    group = [(m, n) for m, n in zip(layers, names) if str(d['kind:' + n]) == kind]
    if not group:
      continue
    fresh = []
    for _, n in group:
      mm = torch.nn.Module()
      mm.weight = torch.nn.Parameter(torch.from_numpy(d['w:' + n]))
      fresh.append(mm)
    prune.global_unstructured([(mm, 'weight') for mm in fresh], pruning_method=prune.L1Unstructured,
                              amount=int(d['global_prune:' + kind]))
    for mm, (_, n) in zip(fresh, group):
      out['global_mask:' + n] = mm.weight_mask.numpy().astype(bool)
  for n in names:
    v = d['values:' + n].astype(np.float64).reshape(-1, 1)
    init = np.linspace(v.min(), v.max(), int(d['k:' + n])).reshape(-1, 1)
    km = KMeans(n_clusters=len(init), init=init, n_init=1, max_iter=300, tol=0,
                algorithm='lloyd').fit(v)
    out['centroids:' + n] = np.sort(km.cluster_centers_.ravel())
    out['inertia:' + n] = np.float64(km.inertia_)
  s, t, y = (torch.from_numpy(d[k]) for k in ('student', 'teacher', 'labels'))
  temp, w = float(d['temperature']), float(d['weight'])
  soft = torch.nn.functional.kl_div(torch.log_softmax(s / temp, -1), torch.softmax(t / temp, -1),
                                    reduction='none').sum(-1) * temp ** 2
  hard = torch.nn.functional.cross_entropy(s, y.long(), reduction='none')
  out['distill_loss'] = (w * soft + (1 - w) * hard).numpy()
  np.savez(dst, **out)


if __name__ == '__main__':
  main(sys.argv[1], sys.argv[2])
