"""Runs in the PyTorch venv: torchmetrics' Fréchet distance (`torchmetrics.image.fid`, the
eigenvalue form of Tr((S1 S2)^(1/2))) of the (mu, sigma) pairs in an .npz that
bench/frechet_compare.py writes; the distances go to the output .npz."""

import sys

import numpy as np
import torch
from torchmetrics.image.fid import _compute_fid

src, dst = sys.argv[1:3]
data = dict(np.load(src))
names = sorted({k.split(':', 1)[1] for k in data if k.startswith('mu1:')})
t = lambda k: torch.from_numpy(data[k]).double()
np.savez(dst, **{n: np.array(float(_compute_fid(t('mu1:' + n), t('s1:' + n), t('mu2:' + n),
                                                 t('s2:' + n)))) for n in names})
