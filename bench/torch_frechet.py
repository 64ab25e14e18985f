"""Runs in the PyTorch venv: pytorch-fid's Fréchet distance of the (mu, sigma) pairs in an .npz
(bench/frechet_compare.py writes it); the distances go to the output .npz."""

import sys

import numpy as np
from pytorch_fid.fid_score import calculate_frechet_distance

src, dst = sys.argv[1:3]
data = dict(np.load(src))
names = sorted({k.split(':', 1)[1] for k in data if k.startswith('mu1:')})
np.savez(dst, **{n: np.array(calculate_frechet_distance(data['mu1:' + n], data['s1:' + n],
                                                         data['mu2:' + n], data['s2:' + n]))
                 for n in names})
