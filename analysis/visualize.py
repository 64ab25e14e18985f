"""Seeing inside a trained CNN, as a library: attribution maps, feature-map projections,
activation maximization and feature inversion, and the numbers that say how far to trust a map.
`--mode=explain` (analysis/explain.py) runs them on a trained run; `--mode=attack` uses the
inversion.

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
import warnings
from typing import Callable

import dm_pix
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from scipy import stats

from errors import UserError
from models import layers as layers_lib
from models import summary
from store import runs

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
