"""Seeing inside a trained CNN: attribution maps, feature-map projections, activation
maximization and feature inversion, and the numbers that say how far to trust a map.

Every method is a batched JAX function of (net, variables, images, classes) with images in the
data's pixel range [0, 255] (the run's normalization happens inside `store.runs.Net.logits`), so the
variables are an argument and one compiled function serves the trained net and its randomized
copies alike. Intermediate layers are reached with Flax's `nn.intercept_methods` on the
`ConvNormAct` blocks every family is built of: nothing in models/ is edited for it.

Methods (all 2-D image models; the gradient ones for any rank):
  gradient, grad_x_input, smoothgrad (Smilkov et al. 2017), integrated_gradients (Sundararajan
  et al. 2017, with the completeness delta per image), occlusion (Zeiler & Fergus 2014),
  gradcam / gradcam_pp (Selvaraju et al. 2017; Chattopadhay et al. 2018), guided_backprop and
  deconvnet (Springenberg et al. 2015; Zeiler & Fergus 2014, through ReLU backward rules).
Measures: deletion / insertion AUC (Petsiuk et al. 2018), cascading model randomization
(Adebayo et al. 2018), fragility under random and targeted perturbations (Ghorbani et al. 2019).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import time
import warnings
from typing import Any, Callable

import dm_pix
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from scipy import stats

import util
from analysis import common, options
from errors import UserError
from kernels import convolutions
from models import layers as layers_lib
from models import summary
from store import runs
from train import tasks

PIXEL_MAX = 255.0


# ----------------------------------------------------------------------------- the network


def conv_layers(net: runs.Net, variables, example_shape) -> list[tuple[str, tuple[int, ...]]]:
  """(name, output shape of one example) of every conv block, in forward order."""
  found = []

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == '__call__' and isinstance(context.module, layers_lib.ConvNormAct):
      found.append(('/'.join(context.module.path), tuple(out.shape[1:])))
    return out

  x = jax.ShapeDtypeStruct((1, *example_shape), jnp.float32)
  with nn.intercept_methods(interceptor):
    jax.eval_shape(net.logits, variables, x)
  return found


def _class_score(logits: jax.Array, classes: jax.Array) -> jax.Array:
  return jnp.take_along_axis(logits, classes[:, None], axis=1)[:, 0]


def _input_grad(net: runs.Net, variables, x, classes):
  """d logit[class] / d x for every image (inference BatchNorm: images are independent)."""
  return jax.grad(lambda x: _class_score(net.logits(variables, x), classes).sum())(x)


# ----------------------------------------------------------------------------- ReLU rules


@jax.custom_vjp
def _guided_relu(x):
  return jnp.maximum(x, 0)


_guided_relu.defvjp(lambda x: (jnp.maximum(x, 0), x),
                    lambda x, g: (jnp.where((x > 0) & (g > 0), g, 0.0),))


@jax.custom_vjp
def _deconv_relu(x):
  return jnp.maximum(x, 0)


_deconv_relu.defvjp(lambda x: (jnp.maximum(x, 0), x), lambda x, g: (jnp.maximum(g, 0.0),))

RELU_RULES = {'guided': _guided_relu, 'deconvnet': _deconv_relu,
              'softplus': lambda x: jax.nn.softplus(10.0 * x) / 10.0}


@contextlib.contextmanager
def relu_rule(rule: str | None):
  """Traces the models with ReLU's backward pass replaced ('guided', 'deconvnet') or ReLU made
  smooth ('softplus', beta 10: second derivatives exist, for the targeted fragility attack).
  The activation table is read when a model is traced, so no model file changes."""
  if rule is None:
    yield
    return
  saved = layers_lib.ACTIVATIONS['relu']
  layers_lib.ACTIVATIONS['relu'] = RELU_RULES[rule]
  try:
    yield
  finally:
    layers_lib.ACTIVATIONS['relu'] = saved


# ----------------------------------------------------------------------------- attributions


def gradient(net, variables, x, classes):
  """Vanilla gradient of the class logit (Simonyan et al. 2014)."""
  return _input_grad(net, variables, x, classes)


def grad_x_input(net, variables, x, classes):
  return _input_grad(net, variables, x, classes) * x


def smoothgrad(net, variables, x, classes, noise: jax.Array):
  """Mean gradient over `noise` samples (S, *x.shape) added to the images (Smilkov et al.);
  the caller draws the noise, so a comparison can feed two implementations the same draws."""
  grads = jax.lax.map(lambda n: _input_grad(net, variables, x + n, classes), noise)
  return grads.mean(axis=0)


def smoothgrad_noise(key, x, samples: int, noise_level: float) -> jax.Array:
  """Gaussian noise with stdev noise_level * (max - min) of each image (PAIR's stdev_spread)."""
  spread = (x.max(axis=tuple(range(1, x.ndim)), keepdims=True) -
            x.min(axis=tuple(range(1, x.ndim)), keepdims=True))
  return jax.random.normal(key, (samples, *x.shape)) * noise_level * spread


def ig_alphas(steps: int, rule: str = 'trapezoid') -> tuple[np.ndarray, np.ndarray]:
  """Path points and weights: 'trapezoid' (exact for linear paths, the default) or 'uniform'
  (linspace with equal weights, PAIR saliency's rule)."""
  alphas = np.linspace(0.0, 1.0, steps)
  if rule == 'uniform':
    return alphas, np.full(steps, 1.0 / steps)
  if rule != 'trapezoid':
    raise UserError(f"unknown integration rule {rule!r}; use 'trapezoid' or 'uniform'")
  w = np.full(steps, 1.0 / (steps - 1))
  w[0] = w[-1] = 0.5 / (steps - 1)
  return alphas, w


def integrated_gradients(net, variables, x, classes, baseline, steps: int = 50,
                         rule: str = 'trapezoid', max_batch: int = 128):
  """(attributions, delta): IG along the straight path from `baseline`; delta is the
  completeness error sum(attr) - (f(x) - f(baseline)) per image."""
  if steps < 2:
    raise UserError(f'integrated gradients needs at least 2 steps, got {steps}')
  alphas, weights = ig_alphas(steps, rule)
  # Path points go through the net `per_call` at a time, all images each: big batches keep a
  # CPU's cores busy, and the chunking bounds memory.
  per_call = max(1, min(steps, max_batch // len(x)))
  pad = -steps % per_call
  alphas = np.concatenate([alphas, np.zeros(pad)]).reshape(-1, per_call)
  weights = np.concatenate([weights, np.zeros(pad)]).reshape(-1, per_call)

  def chunk(aw):
    a, w = aw
    points = baseline[None] + a.reshape((-1,) + (1,) * x.ndim) * (x - baseline)[None]
    grads = _input_grad(net, variables, points.reshape(-1, *x.shape[1:]),
                        jnp.tile(classes, per_call)).reshape(per_call, *x.shape)
    return jnp.tensordot(w, grads, axes=1)

  total = jax.lax.map(chunk, (jnp.asarray(alphas, jnp.float32),
                               jnp.asarray(weights, jnp.float32))).sum(axis=0)
  attr = total * (x - baseline)
  gap = (_class_score(net.logits(variables, x), classes) -
         _class_score(net.logits(variables, baseline), classes))
  return attr, attr.reshape(len(x), -1).sum(axis=1) - gap


def baseline(kind: str, x: jax.Array, mean: tuple[float, ...], key=None) -> jax.Array:
  """IG baselines: 'black' (zeros), 'mean' (the training mean), 'blur', 'uniform' noise."""
  if kind == 'black':
    return jnp.zeros_like(x)
  if kind == 'mean':
    return jnp.broadcast_to(jnp.asarray(mean, x.dtype), x.shape)
  if kind == 'blur':
    return blur(x, sigma=max(x.shape[1:-1]) / 8)
  if kind == 'uniform':
    return jax.random.uniform(key if key is not None else jax.random.key(0), x.shape) * PIXEL_MAX
  raise UserError(f"unknown IG baseline {kind!r}; use black, mean, blur or uniform")


def blur(x: jax.Array, sigma: float) -> jax.Array:
  """Gaussian blur of a batch of 2-D images (dm-pix works on [0, 1] floats)."""
  size = int(2 * round(3 * sigma) + 1)
  return jax.vmap(lambda im: dm_pix.gaussian_blur(im / PIXEL_MAX, sigma, size))(x) * PIXEL_MAX


def occlusion(net, variables, x, classes, size: int = 6, stride: int = 2, fill: float = 0.0,
              chunk: int = 512):
  """Zeiler & Fergus's occlusion map: the drop of the class probability when a `size` square
  of `fill` covers each position (every `stride` pixels), spread back over the pixels it
  covered. All positions of all images go through the net in chunks of `chunk` inputs."""
  n, h, w = x.shape[:3]
  if x.ndim != 4:
    raise UserError('occlusion needs 2-D images (N, H, W, C)')
  if not (0 < size <= min(h, w)) or stride <= 0:
    raise UserError(f'occlusion patch size must be in 1..{min(h, w)} and stride positive, got '
                    f'size={size}, stride={stride}')
  ys = sorted(set(range(0, h - size + 1, stride)) | {h - size})
  xs = sorted(set(range(0, w - size + 1, stride)) | {w - size})
  masks = np.zeros((len(ys) * len(xs), h, w), np.float32)
  for i, (y0, x0) in enumerate((a, b) for a in ys for b in xs):
    masks[i, y0:y0 + size, x0:x0 + size] = 1
  masks = jnp.asarray(masks)
  probs0 = _class_score(jax.nn.softmax(net.logits(variables, x)), classes)
  pairs = np.stack(np.meshgrid(np.arange(n), np.arange(len(masks)), indexing='ij'), -1).reshape(-1, 2)
  pad = -len(pairs) % chunk
  pairs = jnp.asarray(np.concatenate([pairs, pairs[:1].repeat(pad, 0)]).reshape(-1, chunk, 2))

  def run(p):
    m = masks[p[:, 1]][..., None]
    occluded = x[p[:, 0]] * (1 - m) + fill * m
    return _class_score(jax.nn.softmax(net.logits(variables, occluded)), classes[p[:, 0]])

  probs = jax.lax.map(run, pairs).reshape(-1)[:n * len(masks)].reshape(n, len(masks))
  drop = probs0[:, None] - probs
  cover = masks.sum(axis=0)
  return jnp.einsum('np,phw->nhw', drop, masks) / jnp.maximum(cover, 1)


def gradcam(net, variables, x, classes, layer: str, plus_plus: bool = False):
  """Grad-CAM on `layer`: ReLU of the activation maps weighted by their mean gradient
  (Grad-CAM++: by positive gradients with the closed-form alpha), resized to the image."""
  _, a = net.with_layer(variables, x, layer)
  if a.ndim != 4:
    raise UserError(f'Grad-CAM needs a 2-D conv layer; {layer} has shape {a.shape[1:]}')
  g = jax.grad(lambda d: _class_score(net.with_layer(variables, x, layer, d)[0], classes).sum())(
      jnp.zeros_like(a))
  if plus_plus:
    g2, g3 = g ** 2, g ** 3
    alpha = g2 / jnp.where(g != 0, 2 * g2 + a.sum(axis=(1, 2), keepdims=True) * g3, 1.0)
    weights = (alpha * jax.nn.relu(g)).sum(axis=(1, 2))
  else:
    weights = g.mean(axis=(1, 2))
  cam = jax.nn.relu(jnp.einsum('nhwc,nc->nhw', a, weights))
  return jax.image.resize(cam, (x.shape[0], *x.shape[1:3]), 'bilinear')


def relu_rule_gradient(net, variables, x, classes, rule: str):
  """The class logit's gradient with guided-backprop or deconvnet ReLU rules."""
  with relu_rule(rule):
    return _input_grad(net, variables, x, classes)


def to_map(attr: jax.Array) -> jax.Array:
  """Importance per position (N, *spatial) of a per-channel attribution: |attr| summed over
  channels."""
  return jnp.abs(attr).sum(axis=-1)


# ----------------------------------------------------------------------------- projections


def top_activating(net, variables, images, layer: str, channel: int, k: int = 9,
                   batch: int = 500) -> tuple[np.ndarray, np.ndarray]:
  """(indices, values) of the `k` images whose `layer` channel `channel` peaks highest."""
  fn = jax.jit(lambda v, x: net.with_layer(v, x, layer)[1][..., channel].reshape(len(x), -1).max(1))
  peaks = np.concatenate([np.asarray(fn(variables, images[i:i + batch]))
                          for i in range(0, len(images), batch)])
  order = np.argsort(-peaks)[:k]
  return order, peaks[order]


def project(net, variables, x, layer: str, channel: int, rule: str = 'deconvnet'):
  """Zeiler & Fergus projection: the strongest activation of `channel` in `layer`, taken back
  to pixels with the deconvnet (or guided) ReLU rule; max-pool switches come from the forward
  pass (the pooling's own gradient routes to the argmax)."""
  def strongest(x):
    _, a = net.with_layer(variables, x, layer)
    return a[..., channel].reshape(len(x), -1).max(axis=1).sum()
  with relu_rule(rule):
    return jax.grad(strongest)(x)


# ----------------------------------------------------------------------------- synthesis


def total_variation(x: jax.Array) -> jax.Array:
  return (jnp.abs(jnp.diff(x, axis=1)).mean(axis=(1, 2, 3)) +
          jnp.abs(jnp.diff(x, axis=2)).mean(axis=(1, 2, 3)))


def _fourier_image(latent, shape):
  """Decorrelated parameterization: a spectrum scaled by 1/frequency -> an image in [0, 255]."""
  h, w, c = shape
  fy = np.fft.fftfreq(h)[:, None]
  fx = np.fft.rfftfreq(w)[None, :]
  scale = 1.0 / np.maximum(np.sqrt(fy ** 2 + fx ** 2), 1.0 / max(h, w))
  spec = (latent[..., 0] + 1j * latent[..., 1]) * jnp.asarray(scale)[None, :, :, None]
  img = jnp.fft.irfft2(spec, s=(h, w), axes=(1, 2)) * np.sqrt(h * w)
  return jax.nn.sigmoid(img) * PIXEL_MAX


def maximize(net, variables, shape, score: Callable, starts: int = 4, steps: int = 256,
             lr: float = 0.05, jitter: int = 2, blur_every: int = 0, fourier: bool = False,
             seed: int = 0):
  """Activation maximization (Inceptionism / feature visualization): images of `shape` that
  maximize `score(logits, activation_or_None, x)` per start, optimized with Adam over a latent
  (pixels through a sigmoid, or a Fourier spectrum), with random jitter each step and an
  optional blur every `blur_every` steps. Returns (images, score at start, score at end)."""
  h, w, c = shape
  key = jax.random.key(seed)
  if fourier:
    latent = 0.01 * jax.random.normal(key, (starts, h, w // 2 + 1, c, 2))
    decode = lambda z: _fourier_image(z, shape)
  else:
    latent = 0.1 * jax.random.normal(key, (starts, h, w, c))
    decode = lambda z: jax.nn.sigmoid(z) * PIXEL_MAX
  tx = optax.adam(lr)

  def objective(z, k):
    x = decode(z)
    if jitter:
      dy, dx = jax.random.randint(k, (2,), -jitter, jitter + 1)
      x = jnp.roll(x, (dy, dx), axis=(1, 2))
    return -score(variables, x).sum()

  @jax.jit
  def step(z, opt, k):
    loss, g = jax.value_and_grad(objective)(z, k)
    updates, opt = tx.update(g, opt, z)
    return optax.apply_updates(z, updates), opt

  measure = jax.jit(lambda z: score(variables, decode(z)))
  start = np.asarray(measure(latent))
  opt = tx.init(latent)
  for i in range(steps):
    latent, opt = step(latent, opt, jax.random.fold_in(key, i))
    if blur_every and not fourier and (i + 1) % blur_every == 0:  # blur the image, re-encode it
      p = jnp.clip(blur(decode(latent), 0.5) / PIXEL_MAX, 1e-4, 1 - 1e-4)
      latent = jnp.log(p / (1 - p))
  return np.asarray(decode(latent)), start, np.asarray(measure(latent))


def invert(net, variables, x, layer: str, steps: int = 300, lr: float = 0.05,
           tv_weight: float = 0.05, seed: int = 0):
  """Mahendran & Vedaldi: images whose `layer` representation matches that of `x`, found by
  Adam on a sigmoid latent (the range prior) with a total-variation prior; the loss is the
  feature error relative to the target's norm."""
  target = net.with_layer(variables, x, layer)[1]
  norm = jnp.sum(target ** 2, axis=tuple(range(1, target.ndim))) + 1e-8
  z = 0.1 * jax.random.normal(jax.random.key(seed), x.shape)
  tx = optax.adam(lr)

  def loss(z):
    img = jax.nn.sigmoid(z) * PIXEL_MAX
    a = net.with_layer(variables, img, layer)[1]
    err = jnp.sum((a - target) ** 2, axis=tuple(range(1, a.ndim))) / norm
    return (err + tv_weight * total_variation(img / PIXEL_MAX)).sum()

  @jax.jit
  def run(z):
    def body(carry, _):
      z, opt = carry
      g = jax.grad(loss)(z)
      updates, opt = tx.update(g, opt, z)
      return (optax.apply_updates(z, updates), opt), None
    (z, _), _ = jax.lax.scan(body, (z, tx.init(z)), None, length=steps)
    return jax.nn.sigmoid(z) * PIXEL_MAX

  return run(z)


def psnr_ssim(a: jax.Array, b: jax.Array) -> tuple[np.ndarray, np.ndarray]:
  """Per-image PSNR (dB) and SSIM of pixel-range images, through dm-pix on [0, 1]."""
  a, b = a / PIXEL_MAX, b / PIXEL_MAX
  size = min(11, *a.shape[1:3])
  psnr = jax.vmap(lambda p, q: dm_pix.psnr(p, q))(a, b)
  ssim = jax.vmap(lambda p, q: dm_pix.ssim(p, q, filter_size=size))(a, b)
  return np.asarray(psnr), np.asarray(ssim)


# ----------------------------------------------------------------------------- measures


def deletion_insertion(net, variables, x, classes, maps, steps: int = 20,
                       blur_sigma: float = 4.0):
  """RISE's curves: the class probability as the most important pixels (by `maps`, N x H x W)
  are set to black (deletion) or copied into a blurred image (insertion), in `steps` equal
  shares; returns (deletion curves, insertion curves, deletion AUC, insertion AUC)."""
  n, h, w = maps.shape
  order = jnp.argsort(-maps.reshape(n, -1), axis=1)
  ranks = jnp.argsort(order, axis=1).reshape(n, h, w)  # 0 = most important pixel
  fractions = jnp.linspace(0.0, 1.0, steps + 1)
  shown = ranks[:, None] < (fractions * h * w)[None, :, None, None]  # (N, S+1, H, W)
  shown = shown[..., None]
  blurred = blur(x, blur_sigma)

  def curve(images):
    flat = images.reshape(-1, *x.shape[1:])
    probs = jax.nn.softmax(net.logits(variables, flat)).reshape(n, steps + 1, -1)
    return jnp.take_along_axis(probs, classes[:, None, None], axis=2)[..., 0]

  deletion = curve(jnp.where(shown, 0.0, x[:, None]))
  insertion = curve(jnp.where(shown, x[:, None], blurred[:, None]))
  auc = lambda c: jnp.trapezoid(c, fractions, axis=1)
  return deletion, insertion, auc(deletion), auc(insertion)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
  """Mean over images of the rank correlation of two maps (N x ...)."""
  with warnings.catch_warnings():  # a constant map (all-zero gradient) has no ranks: NaN
    warnings.simplefilter('ignore')
    out = [stats.spearmanr(p.ravel(), q.ravel()).statistic for p, q in zip(a, b)]
    return float(np.nanmean(out)) if not np.isnan(out).all() else float('nan')


def topk_intersection(a: np.ndarray, b: np.ndarray, fraction: float = 0.1) -> float:
  """Mean share of the top `fraction` pixels of map `a` that are also in the top of `b`."""
  n = a.shape[0]
  k = max(1, int(round(fraction * a[0].size)))
  ta = np.argsort(-a.reshape(n, -1), axis=1)[:, :k]
  tb = np.argsort(-b.reshape(n, -1), axis=1)[:, :k]
  return float(np.mean([len(np.intersect1d(p, q)) / k for p, q in zip(ta, tb)]))


def module_order(net: runs.Net, variables, example_shape) -> list[str]:
  """The top-level modules holding parameters, in forward order (models/summary.layer_order)."""
  return summary.layer_order(net.model, variables, example_shape)


def cascading_randomization(variables, random_variables,
                            order: list[str] | None = None) -> list[tuple[str, dict]]:
  """Adebayo et al.'s cascade: (module, variables) with the weights of the top module, then the
  top two, ... down to every module, replaced by their freshly initialized values. `order` is
  the forward order of the modules (module_order); by default the parameter dict's."""
  names = order or list(variables['params'])
  out = []
  params = dict(variables['params'])
  stats = dict(variables.get('batch_stats', {}))
  for name in reversed(names):
    params[name] = random_variables['params'][name]
    if name in stats:
      stats[name] = random_variables['batch_stats'][name]
    out.append((name, {'params': dict(params), 'batch_stats': dict(stats)}))
  return out


def targeted_perturbation(net, variables, x, classes, map_fn: Callable, eps: float = 8.0,
                          steps: int = 10, fraction: float = 0.1):
  """Ghorbani et al.'s attack: sign-gradient steps within an L-inf ball of `eps` pixels that
  push the map's mass off its original top `fraction` pixels, each step kept only where the
  predicted class stays the same. `map_fn(variables, x)` must be differentiable in x (the
  caller traces it with smooth ReLUs)."""
  n = x.shape[0]
  base = map_fn(variables, x)
  k = max(1, int(round(fraction * base[0].size)))
  top = base.reshape(n, -1) >= jnp.sort(base.reshape(n, -1), axis=1)[:, -k][:, None]
  predicted = jnp.argmax(net.logits(variables, x), axis=1)

  def mass(xp):
    m = map_fn(variables, xp).reshape(n, -1)
    return (jnp.sum(m * top, axis=1) / (jnp.sum(m, axis=1) + 1e-8)).sum()

  step_size = eps / steps * 2

  @jax.jit
  def step(xp):
    g = jax.grad(mass)(xp)
    cand = jnp.clip(jnp.clip(xp - step_size * jnp.sign(g), x - eps, x + eps), 0, PIXEL_MAX)
    same = jnp.argmax(net.logits(variables, cand), axis=1) == predicted
    return jnp.where(same.reshape((n,) + (1,) * (x.ndim - 1)), cand, xp)

  xp = x
  for _ in range(steps):
    xp = step(xp)
  return xp


# ----------------------------------------------------------------------------- --mode=explain

METHODS = options.METHODS
PARTS = options.EXPLAIN_PARTS
Options = options.Explain  # the mode's options and their defaults (analysis/options.py)
# Methods whose map is a smooth function of the input once ReLU is made smooth, so the
# targeted fragility attack can follow its gradient; the others are too costly or piecewise.
ATTACKABLE = ('gradient', 'grad_x_input', 'smoothgrad', 'integrated_gradients', 'gradcam')


def check_options(o: Options) -> None:
  bad = [m for m in o.methods if m not in METHODS]
  if bad:
    raise UserError(f'unknown explain method {bad[0]!r}; choose from {", ".join(METHODS)}')
  bad = [p for p in o.parts if p not in PARTS]
  if bad:
    raise UserError(f'unknown explain part {bad[0]!r}; choose from {", ".join(PARTS)}')
  for name in ('num_images', 'ig_steps', 'smoothgrad_samples', 'occlusion_size',
               'occlusion_stride', 'maximize_steps', 'invert_steps', 'invert_images'):
    if getattr(o, name) <= 0:
      raise UserError(f'--explain_{name} must be positive, got {getattr(o, name)}')
  if o.ig_steps < 2:
    raise UserError(f'--explain_ig_steps must be at least 2, got {o.ig_steps}')


def _method_fns(o: Options, mean, layer: str | None, noise):
  """name -> f(net, variables, x, classes) -> (N, H, W) map: sensitivities (gradients) as
  absolute values summed over channels, contributions (grad x input, IG) with their sign."""
  base = lambda x: baseline(o.ig_baseline, x, mean, jax.random.key(o.seed))
  fns = {
      'gradient': lambda n, v, x, c: to_map(gradient(n, v, x, c)),
      'grad_x_input': lambda n, v, x, c: grad_x_input(n, v, x, c).sum(-1),
      'smoothgrad': lambda n, v, x, c: to_map(smoothgrad(n, v, x, c, noise)),
      'integrated_gradients': lambda n, v, x, c: integrated_gradients(
          n, v, x, c, base(x), o.ig_steps)[0].sum(-1),
      'occlusion': lambda n, v, x, c: occlusion(n, v, x, c, o.occlusion_size,
                                                o.occlusion_stride, o.occlusion_fill),
      'guided_backprop': lambda n, v, x, c: to_map(relu_rule_gradient(n, v, x, c, 'guided')),
      'deconvnet': lambda n, v, x, c: to_map(relu_rule_gradient(n, v, x, c, 'deconvnet')),
  }
  if layer:
    fns['gradcam'] = lambda n, v, x, c: gradcam(n, v, x, c, layer)
    fns['gradcam_pp'] = lambda n, v, x, c: gradcam(n, v, x, c, layer, plus_plus=True)
  return fns


def _overlay_grid(plt, images, maps: dict, labels, path: str) -> None:
  names = list(maps)
  n = len(images)
  fig, axes = plt.subplots(n, len(names) + 1, figsize=(1.6 * (len(names) + 1), 1.6 * n),
                           squeeze=False)
  gray = images.shape[-1] == 1
  for i in range(n):
    img = images[i, ..., 0] if gray else images[i].astype(np.uint8)
    axes[i, 0].imshow(img, cmap='gray' if gray else None)
    axes[i, 0].set_title(f'class {labels[i]}', fontsize=7)
    for j, name in enumerate(names):
      m = maps[name][i]
      axes[i, j + 1].imshow(img, cmap='gray' if gray else None)
      axes[i, j + 1].imshow(m, cmap='inferno', alpha=0.6)
      if i == 0:
        axes[i, j + 1].set_title(name.replace('_', ' '), fontsize=7)
  for ax in axes.ravel():
    ax.axis('off')
  fig.tight_layout()
  common.save_figure(fig, path)


def image_grid(plt, rows: list[np.ndarray], row_labels: list[str], path: str,
                col_labels: list[str] | None = None) -> None:
  n_cols = max(len(r) for r in rows)
  fig, axes = plt.subplots(len(rows), n_cols, figsize=(1.4 * n_cols, 1.5 * len(rows)),
                           squeeze=False)
  for i, row in enumerate(rows):
    for j in range(n_cols):
      ax = axes[i, j]
      ax.axis('off')
      if j < len(row):
        im = row[j]
        ax.imshow(im[..., 0] if im.shape[-1] == 1 else np.clip(im, 0, 255).astype(np.uint8),
                  cmap='gray' if im.shape[-1] == 1 else None)
      if j == 0:
        ax.set_title(row_labels[i], fontsize=7, loc='left')
      elif i == 0 and col_labels and j < len(col_labels):
        ax.set_title(col_labels[j], fontsize=7)
  fig.tight_layout()
  common.save_figure(fig, path)


def _targets(net, o: Options, num_classes: int, convs) -> list[tuple[str, Callable]]:
  """(label, score(variables, x)) of each activation-maximization target."""
  out = []
  names = [name for name, _ in convs]
  for spec in o.maximize_targets or ('classes',):
    if spec == 'classes':
      out += [(f'logit {c}', lambda v, x, c=c: net.logits(v, x)[:, c]) for c in range(num_classes)]
      continue
    layer, _, channel = spec.rpartition(':')
    if layer not in names or not channel.isdigit():
      raise UserError(f"maximize target {spec!r} is not 'classes' or LAYER:CHANNEL with a conv "
                      f'layer of this model ({", ".join(names)})')
    ch = int(channel)
    out.append((spec, lambda v, x, layer=layer, ch=ch: net.with_layer(v, x, layer)[1][..., ch].mean(
        axis=tuple(range(1, x.ndim - 1)))))
  return out


def list_layers(workdir: str) -> list[tuple[str, tuple[int, ...]]]:
  """The conv layers of a trained run's model, with their output shapes."""
  run = runs.load_run(workdir)
  return conv_layers(run.net, run.variables, run.info.shape)


@dataclasses.dataclass
class Context:
  """What every part of `--mode=explain` shares: the run, its network (and an XLA copy for
  second derivatives), the picked images and the classes each map explains, and the outputs."""
  workdir: str
  run: runs.Run
  o: Options
  t_start: float
  model: Any
  net: runs.Net
  smooth_net: runs.Net
  device: Any
  variables: dict
  shape: tuple
  convs: list            # (conv layer, output shape) in forward order
  spatial: list
  image_model: bool
  layer: str             # the layer of Grad-CAM and the projections
  out: str               # W/explain
  plt: Any
  images: np.ndarray
  labels: np.ndarray
  idx: np.ndarray
  x: jax.Array
  classes: jax.Array
  notes: dict
  results: dict
  key: jax.Array


def _maps(ctx: Context) -> None:
  """Attribution maps of every method with their faithfulness (deletion / insertion AUC),
  sanity (cascading randomization) and fragility (random and targeted perturbations)."""
  (workdir, run, o, t_start, model, net, smooth_net, device, variables, shape, image_model,
   layer, out, plt, images, labels, x, classes, notes, results, key) = (
      ctx.workdir, ctx.run, ctx.o, ctx.t_start, ctx.model, ctx.net, ctx.smooth_net, ctx.device,
      ctx.variables, ctx.shape, ctx.image_model, ctx.layer, ctx.out, ctx.plt, ctx.images,
      ctx.labels, ctx.x, ctx.classes, ctx.notes, ctx.results, ctx.key)
  noise = smoothgrad_noise(key, x, o.smoothgrad_samples, o.noise_level)
  fns = _method_fns(o, run.preprocess.mean, layer if image_model else None, noise)
  cheap = dataclasses.replace(o, ig_steps=min(o.ig_steps, 16))
  attack_fns = _method_fns(cheap, run.preprocess.mean, layer if image_model else None,
                           noise[:8])
  methods = []
  for m in o.methods:
    if m not in fns or (not image_model and m in ('occlusion', 'gradcam', 'gradcam_pp')):
      notes[m] = ('needs 2-D images' if not image_model else
                  'needs a conv layer with spatial extent; this model has none')
      continue
    methods.append(m)
  random_vars = jax.device_put(model.init(jax.random.key(o.seed + 1), x[:1] * 0, train=False),
                               device)
  cascade = cascading_randomization(variables, random_vars,
                                    module_order(net, variables, shape))
  rng = np.random.default_rng(o.seed)
  small = jnp.asarray(rng.uniform(-2, 2, x.shape), jnp.float32)  # +-2 of 255 levels
  x_noisy = jnp.clip(x + small, 0, PIXEL_MAX)
  same = np.asarray(jnp.argmax(net.logits(variables, x_noisy), 1) ==
                    jnp.argmax(net.logits(variables, x), 1))
  maps, rows = {}, []
  for m in methods + ['random']:
    if m == 'random':
      maps[m] = np.asarray(jax.random.uniform(key, x.shape[:-1]))
      elapsed = 0.0
    else:
      fn = jax.jit(functools.partial(fns[m], net))
      jax.block_until_ready(fn(variables, x, classes))  # compile
      t = time.perf_counter()
      maps[m] = np.asarray(jax.block_until_ready(fn(variables, x, classes)))
      elapsed = (time.perf_counter() - t) / len(x)
    row = {'method': m, 'seconds_per_image': round(elapsed, 5)}
    if image_model:
      _, _, d_auc, i_auc = jax.jit(functools.partial(deletion_insertion, net))(
          variables, x, classes, jnp.asarray(maps[m]))
      row['deletion_auc'] = float(np.mean(d_auc))
      row['insertion_auc'] = float(np.mean(i_auc))
    if m != 'random':
      per_layer = [(name, spearman(maps[m], np.asarray(fn(v, x, classes))))
                   for name, v in cascade]
      row['sanity_rank_corr'] = per_layer[-1][1]
      row['sanity_cascade'] = [[name, round(r, 4)] for name, r in per_layer]  # top first
      noisy = np.asarray(fn(variables, x_noisy, classes))
      row['fragility_random_topk'] = topk_intersection(maps[m][same], noisy[same])
      row['fragility_random_rank_corr'] = spearman(maps[m][same], noisy[same])
      if m in ATTACKABLE and image_model:
        def smooth_map(v, xp, m=m):  # a cheaper surrogate of the map guides the attack
          with relu_rule('softplus'):
            return attack_fns[m](smooth_net, v, xp, classes)
        xp = targeted_perturbation(net, variables, x, classes, smooth_map)
        attacked = np.asarray(fn(variables, xp, classes))
        row['fragility_topk'] = topk_intersection(maps[m], attacked)
        row['fragility_rank_corr'] = spearman(maps[m], attacked)
      else:
        row['fragility_topk'] = None
        notes.setdefault(f'{m}: fragility_topk', 'no targeted attack: ' + (
            'the map is not a smooth function of the input (or too costly to differentiate)'
            if image_model else 'it is implemented for 2-D images'))
    rows.append(row)
    fmt = lambda v: 'n/a' if v is None else f'{v:.3f}'
    logging.info('explain: %s: deletion AUC %s, insertion AUC %s, sanity %s (%.0f s so far)',
                 m, fmt(row.get('deletion_auc')), fmt(row.get('insertion_auc')),
                 fmt(row.get('sanity_rank_corr')), time.time() - t_start)
  if image_model:
    _overlay_grid(plt, images, {m: maps[m] for m in methods}, labels,
                  f'{out}/maps.png')
  results['methods'] = rows
  results['fraction_prediction_unchanged_by_noise'] = float(same.mean())
  columns = ['method', 'deletion_auc', 'insertion_auc', 'sanity_rank_corr', 'fragility_topk',
             'fragility_random_topk', 'seconds_per_image']
  common.write_outputs(out, results, rows, f'Attribution maps of {workdir}', columns,
                       name='metrics')


def _projections(ctx: Context) -> None:
  """Deconvnet projections of the top-activating test images of 4 channels of `layer`."""
  (run, net, variables, layer, out, plt, results) = (
      ctx.run, ctx.net, ctx.variables, ctx.layer, ctx.out, ctx.plt, ctx.results)
  if not layer:
    return
  test = run.test_split()
  pool = test.images[:2000].astype(np.float32)
  rows_img, row_labels = [], []
  for channel in range(4):
    top, peaks = top_activating(net, variables, pool, layer, channel)
    proj = np.asarray(project(net, variables, jnp.asarray(pool[top]), layer, channel))
    proj = np.abs(proj).sum(-1, keepdims=True)
    proj = proj / (proj.max(axis=(1, 2, 3), keepdims=True) + 1e-8) * PIXEL_MAX
    rows_img += [pool[top], proj]
    row_labels += [f'{layer} ch {channel}: top 9', 'deconvnet projections']
    results.setdefault('projections', []).append(
        {'layer': layer, 'channel': channel, 'top_images': top.tolist(),
         'peak_activations': [round(float(p), 4) for p in peaks]})
  image_grid(plt, rows_img, row_labels, f'{out}/projections.png')


def _maximize(ctx: Context) -> None:
  """Activation maximization of classes or channels (`--explain_maximize_targets`)."""
  (run, o, net, variables, shape, convs, image_model, out, plt, results) = (
      ctx.run, ctx.o, ctx.net, ctx.variables, ctx.shape, ctx.convs, ctx.image_model, ctx.out,
      ctx.plt, ctx.results)
  if not image_model:
    return
  rows_img, row_labels, maxi = [], [], []
  for i, (target, score) in enumerate(_targets(net, o, run.info.num_classes, convs)):
    imgs, start, end = maximize(net, variables, shape, score, starts=3,
                                steps=o.maximize_steps, jitter=o.jitter,
                                blur_every=o.blur_every, fourier=o.fourier, seed=o.seed + i)
    rows_img.append(imgs)
    row_labels.append(target)
    maxi.append({'target': target, 'start': [round(float(s), 3) for s in start],
                 'end': [round(float(e), 3) for e in end]})
  results['maximization'] = maxi
  image_grid(plt, rows_img, row_labels, f'{out}/maximization.png')
  util.write_json(f'{out}/maximization.json', maxi)


def _invert(ctx: Context) -> None:
  """Feature inversion from every conv layer, with PSNR and SSIM per layer."""
  (o, net, variables, convs, image_model, out, plt, images, idx, x, results) = (
      ctx.o, ctx.net, ctx.variables, ctx.convs, ctx.image_model, ctx.out, ctx.plt, ctx.images,
      ctx.idx, ctx.x, ctx.results)
  if not image_model:
    return
  xi = x[:o.invert_images]
  inv_rows, grid, labels_ = [], [images[:o.invert_images]], ['originals']
  for name, s in convs:
    rec = invert(net, variables, xi, name, steps=o.invert_steps, seed=o.seed)
    p, q = psnr_ssim(rec, xi)
    inv_rows.append({'layer': name, 'shape': list(s), 'psnr': float(np.mean(p)),
                     'ssim': float(np.mean(q))})
    grid.append(np.asarray(rec))
    labels_.append(f'{name}: {np.mean(p):.1f} dB')
  util.write_json(f'{out}/inversion.json', {'images': idx[:o.invert_images].tolist(),
                                            'layers': inv_rows})
  fig, axes = plt.subplots(1, 2, figsize=(9, 3))
  axes[0].plot(range(len(inv_rows)), [r['psnr'] for r in inv_rows], 'o-')
  axes[0].set(xlabel='conv layer (input to output)', ylabel='PSNR (dB)')
  axes[1].plot(range(len(inv_rows)), [r['ssim'] for r in inv_rows], 'o-')
  axes[1].set(xlabel='conv layer (input to output)', ylabel='SSIM')
  common.save_figure(fig, f'{out}/inversion_quality.png')
  image_grid(plt, grid, labels_, f'{out}/inversion.png')
  results['inversion'] = inv_rows


# The parts of --mode=explain (`--explain_parts`), in the order they run.
PART_FUNCTIONS = (('maps', _maps), ('projections', _projections), ('maximize', _maximize),
                  ('invert', _invert))


def context(workdir: str, o: Options) -> Context:
  """The shared context of the parts: the run loaded and checked, images and classes picked."""
  check_options(o)
  t_start = time.time()
  run = runs.load_run(workdir, o.step)
  tasks.check_mode(run.config, 'explain')
  # The run's own convolutions (oneDNN's on AVX-512 CPUs: 20x faster input gradients here than
  # XLA's, whose stem backward is slow); the targeted attack needs second derivatives, which
  # oneDNN's first-order VJP does not give, so it differentiates a copy on XLA's.
  model = run.model
  net = run.net
  smooth_net = runs.Net(runs.build(run.config, run.info.num_classes, run.config.dtype,
                                   convolutions=convolutions.XLA), run.preprocess)
  # Every array on one device, committed alike: jit caches by placement, and a mix of restored
  # and freshly initialized arrays would recompile at every randomization step.
  device = jax.local_devices()[0]
  variables = jax.device_put(run.variables, device)
  shape = run.info.shape
  convs = conv_layers(net, variables, shape)
  spatial = [name for name, s in convs if len(s) == 3 and s[0] * s[1] > 1]
  image_model = len(shape) == 3
  layer = o.layer or (spatial[-1] if spatial else '')
  if o.layer and o.layer not in [name for name, _ in convs]:
    raise UserError(f'layer {o.layer!r} is not a conv layer of {run.config.model.name}; its '
                    f'layers: {", ".join(name for name, _ in convs)}')
  out = common.output_dir(workdir, 'explain')
  plt = common.pyplot()
  images, labels, idx = common.test_examples(run, o.num_images, o.seed, per_class=True)
  x = jax.device_put(jnp.asarray(images, jnp.float32), device)
  if o.explain_class == 'true':
    classes = jnp.asarray(labels, jnp.int32)
  elif o.explain_class == 'predicted':
    classes = jnp.argmax(net.logits(variables, x), axis=1).astype(jnp.int32)
  elif o.explain_class.isdigit() and int(o.explain_class) < run.info.num_classes:
    classes = jnp.full((len(x),), int(o.explain_class), jnp.int32)
  else:
    raise UserError(f"--explain_class must be true, predicted or a class index below "
                    f"{run.info.num_classes}, got {o.explain_class!r}")
  classes = jax.device_put(classes, device)
  notes: dict[str, str] = {}
  results: dict[str, Any] = {'workdir': '.', 'step': run.step, 'model': run.config.model.name,
                             'images': idx.tolist(), 'labels': labels.tolist(),
                             'classes': np.asarray(classes).tolist(), 'layer': layer,
                             'notes': notes}
  key = jax.random.key(o.seed)
  return Context(workdir=workdir, run=run, o=o, t_start=t_start, model=model, net=net,
                 smooth_net=smooth_net, device=device, variables=variables, shape=shape,
                 convs=convs, spatial=spatial, image_model=image_model, layer=layer, out=out,
                 plt=plt, images=images, labels=labels, idx=idx, x=x, classes=classes,
                 notes=notes, results=results, key=key)


def run_explain(workdir: str, o: Options) -> dict:
  """`--mode=explain`: the parts `o.parts` of this module on a trained run, into `W/explain/`."""
  ctx = context(workdir, o)
  for name, fn in PART_FUNCTIONS:
    if name in o.parts:
      fn(ctx)
  return ctx.results
