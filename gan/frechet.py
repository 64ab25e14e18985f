"""Fréchet distance between image sets, on the penultimate-layer features of a trained
classifier run (the input of its head; spatial maps averaged).

FID (Heusel et al. 2017) is this distance on Inception-v3 pool features; those weights cannot
be downloaded here and do not suit 28x28 grayscale images, so the features are those of a
classifier trained on the real data. Numbers are comparable only between sets of the same
size on the same classifier (the estimate is biased by sample size), which is why every
distance the GAN reports uses the same number of images.
"""

from __future__ import annotations

import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg

from models import summary


def feature_fn(run):
  """A jitted (variables, uint8 or [0, 255] images) -> penultimate features of `run`."""
  head = summary.layer_order(run.model, run.variables, run.info.shape)[-1]

  def fn(variables, images):
    store = {}

    def grab(next_fun, args, kwargs, context):
      if context.method_name == '__call__' and tuple(context.module.path) == (head,):
        store['x'] = args[0]
      return next_fun(*args, **kwargs)

    with nn.intercept_methods(grab):
      run.model.apply(variables, run.preprocess(images.astype(jnp.float32)), train=False)
    x = store['x'].astype(jnp.float32)
    return x.reshape(x.shape[0], -1, x.shape[-1]).mean(1) if x.ndim > 2 else x

  return jax.jit(fn), head


def features(run, images: np.ndarray, batch: int = 500, fn=None) -> np.ndarray:
  fn = fn or feature_fn(run)[0]
  return np.concatenate([np.asarray(fn(run.variables, images[i:i + batch]))
                         for i in range(0, len(images), batch)]).astype(np.float64)


def statistics(f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Mean and covariance (unbiased) of feature rows."""
  return f.mean(0), np.cov(f, rowvar=False)


def distance(mu1, sigma1, mu2, sigma2) -> float:
  """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)), the Fréchet distance of two Gaussians
  (Dowson & Landau 1982). A near-singular product gets a small ridge on both covariances, and
  the square root's imaginary round-off is dropped."""
  diff = mu1 - mu2
  with warnings.catch_warnings():  # singular products are handled below
    warnings.simplefilter('ignore')
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
      ridge = np.eye(len(mu1)) * 1e-6
      covmean = scipy.linalg.sqrtm((sigma1 + ridge) @ (sigma2 + ridge))
  covmean = np.real(covmean)
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def between(f1: np.ndarray, f2: np.ndarray) -> float:
  return distance(*statistics(f1), *statistics(f2))
