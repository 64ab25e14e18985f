"""analysis/visualize.py and --mode=explain: attribution methods against hand-derived maps and PAIR's `saliency`,
the faithfulness and fragility measures, syntheses, and `--mode=explain` end to end."""

import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO
from store import runs

from analysis import explain, visualize  # noqa: E402  (conftest puts the repository on sys.path)
from data import augment  # noqa: E402
from errors import UserError  # noqa: E402
from models import layers  # noqa: E402

IDENTITY = augment.Preprocess((0.0,), (1.0,))


@pytest.fixture(scope='module')
def trained(small_trained_net):
  return small_trained_net


class Linear(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    return nn.Dense(3)(x.reshape(len(x), -1))


def test_gradient_equals_the_hand_derived_one():
  model = Linear()
  x = jax.random.uniform(jax.random.key(0), (2, 4, 4, 1)) * 255
  v = model.init(jax.random.key(1), x)
  net = runs.Net(model, IDENTITY)
  g = visualize.gradient(net, v, x, jnp.array([0, 2]))
  w = np.asarray(v['params']['Dense_0']['kernel'])  # (16, 3)
  np.testing.assert_allclose(g[0].ravel(), w[:, 0], rtol=1e-6)
  np.testing.assert_allclose(g[1].ravel(), w[:, 2], rtol=1e-6)


class OneByOne(nn.Module):
  """A 1x1 conv with identity weights (its map is the input), global average, identity head."""
  @nn.compact
  def __call__(self, x, train=False):
    a = layers.ConvNormAct(2, kernel=1, use_bias=False, norm='none', act='')(x, train)
    return a.mean(axis=(1, 2))


def test_gradcam_on_a_hand_set_conv_map():
  model = OneByOne()
  x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 4, 4, 2)), jnp.float32)
  v = model.init(jax.random.key(0), x)
  v = {'params': {'ConvNormAct_0': {'Conv_0': {'kernel': jnp.eye(2).reshape(1, 1, 2, 2)}}}}
  net = runs.Net(model, IDENTITY)
  assert visualize.conv_layers(net, v, (4, 4, 2)) == [('ConvNormAct_0', (4, 4, 2))]
  cam = visualize.gradcam(net, v, x, jnp.array([1]), 'ConvNormAct_0')
  # logit 1 = mean of map 1, so its gradient is 1/16 on map 1 and 0 on map 0
  np.testing.assert_allclose(cam[0], np.maximum(np.asarray(x[0, ..., 1]), 0) / 16, atol=1e-6)
  with pytest.raises(UserError, match='not in this model'):
    visualize.gradcam(net, v, x, jnp.array([1]), 'Dense_7')


class Corner(nn.Module):
  """Looks only at the 2x2 region at rows 1-2, columns 3-4."""
  @nn.compact
  def __call__(self, x, train=False):
    return nn.Dense(2)(x[:, 1:3, 3:5].reshape(len(x), -1))


def test_occlusion_is_nonzero_exactly_where_the_model_looks():
  model = Corner()
  x = jax.random.uniform(jax.random.key(0), (2, 6, 6, 1)) + 0.5  # softmax far from saturation
  v = model.init(jax.random.key(1), x)
  net = runs.Net(model, IDENTITY)
  m = np.asarray(visualize.occlusion(net, v, x, jnp.array([0, 1]), size=1, stride=1))
  region = np.zeros((6, 6), bool)
  region[1:3, 3:5] = True
  assert (np.abs(m[:, region]) > 1e-4).all() and (np.abs(m[:, ~region]) < 1e-6).all()
  for size, stride in ((0, 1), (7, 1), (2, 0)):
    with pytest.raises(UserError, match='occlusion patch size'):
      visualize.occlusion(net, v, x, jnp.array([0, 1]), size=size, stride=stride)


def test_integrated_gradients_completeness_improves_with_steps(trained):
  _, net, v, x, y = trained
  base = jnp.zeros_like(x)
  errors = {}
  for steps in (5, 200):
    attr, delta = visualize.integrated_gradients(net, v, x, y, base, steps)
    gap = attr.reshape(len(x), -1).sum(1) - delta
    errors[steps] = float(np.median(np.abs(delta) / np.maximum(np.abs(gap), 1e-6)))
  assert errors[200] < 0.05 and errors[200] < errors[5], errors


def test_same_maps_as_pair_saliency(trained):
  saliency = pytest.importorskip('saliency.core')
  _, net, v, x, y = trained
  grad = jax.jit(lambda xb, c: visualize.gradient(net, v, xb, jnp.full((len(xb),), c)))

  def call_model(x_batch, call_model_args=None, expected_keys=None):
    return {saliency.INPUT_OUTPUT_GRADIENTS: np.asarray(grad(jnp.asarray(x_batch, jnp.float32),
                                                             call_model_args))}

  xi, c = np.asarray(x[0]), int(y[0])
  ours = np.asarray(visualize.gradient(net, v, x[:1], y[:1]))[0]
  np.testing.assert_allclose(saliency.GradientSaliency().GetMask(xi, call_model, c), ours,
                             rtol=1e-5, atol=1e-6)
  ig_theirs = saliency.IntegratedGradients().GetMask(xi, call_model, c, x_steps=20,
                                                     batch_size=20)
  ig_ours = visualize.integrated_gradients(net, v, x[:1], y[:1], jnp.zeros_like(x[:1]), 20,
                                         rule='uniform')[0][0]
  np.testing.assert_allclose(ig_theirs, ig_ours, rtol=1e-4, atol=1e-4 * np.abs(ig_ours).max())
  # SmoothGrad with the same noise draws (PAIR draws np.random.normal per sample).
  np.random.seed(0)
  sg_theirs = saliency.GradientSaliency().GetSmoothedMask(xi, call_model, c, stdev_spread=0.15,
                                                          nsamples=5, magnitude=False)
  np.random.seed(0)
  stdev = 0.15 * (xi.max() - xi.min())
  noise = np.stack([np.random.normal(0, stdev, xi.shape) for _ in range(5)])[:, None]
  sg_ours = visualize.smoothgrad(net, v, x[:1], y[:1], jnp.asarray(noise, jnp.float32))[0]
  np.testing.assert_allclose(sg_theirs, sg_ours, rtol=1e-4, atol=1e-5 * np.abs(sg_ours).max())


def test_deletion_beats_a_random_map_and_randomized_weights_decorrelate(trained):
  _, net, v, x, y = trained
  # Integrated gradients from black explain what deleting pixels to black does.
  ig = visualize.integrated_gradients(net, v, x, y, jnp.zeros_like(x), 32)[0].sum(-1)
  rand_map = jax.random.uniform(jax.random.key(0), ig.shape)
  d_ig = visualize.deletion_insertion(net, v, x, y, ig)[2]
  d_rand = visualize.deletion_insertion(net, v, x, y, rand_map)[2]
  assert float(d_ig.mean()) < 0.9 * float(d_rand.mean())  # the probability falls faster
  grad_map = visualize.to_map(visualize.gradient(net, v, x, y))
  random_v = net.model.init(jax.random.key(7), x[:1], train=False)
  order = visualize.module_order(net, v, x.shape[1:])
  assert order == ['ConvNormAct_0', 'ConvNormAct_1', 'ConvNormAct_2', 'Dense_0']
  cascade = visualize.cascading_randomization(v, random_v, order)
  assert [name for name, _ in cascade] == order[::-1]  # from the classifier down
  last = cascade[-1][1]
  randomized = visualize.to_map(visualize.gradient(net, last, x, y))
  assert visualize.spearman(np.asarray(grad_map), np.asarray(randomized)) < 0.5
  assert visualize.spearman(np.asarray(grad_map), np.asarray(grad_map)) == pytest.approx(1.0)


def test_maximization_raises_its_target_and_inversion_is_sharper_early(trained):
  _, net, v, x, y = trained
  score = lambda variables, xx: net.logits(variables, xx)[:, 3]
  _, start, end = visualize.maximize(net, v, (16, 16, 1), score, starts=2, steps=60, fourier=True)
  # Far above where it started and above every test image's own score for that class.
  assert (end > start + 2).all() and end.min() > float(score(v, x).max()) + 1, (start, end)
  layers_ = [name for name, _ in visualize.conv_layers(net, v, (16, 16, 1))]
  first = visualize.psnr_ssim(visualize.invert(net, v, x[:4], layers_[0], steps=150), x[:4])[0]
  last = visualize.psnr_ssim(visualize.invert(net, v, x[:4], layers_[-1], steps=150), x[:4])[0]
  assert first.mean() > last.mean() + 2, (first, last)


def test_explain_mode_writes_its_outputs_and_refuses_bad_options(trained):
  workdir = trained[0]
  cmd = [sys.executable, 'main.py', '--mode=explain', f'--workdir={workdir}', '--explain_images=4',
         '--explain_maximize_steps=10', '--explain_invert_steps=10', '--explain_ig_steps=8',
         '--explain_smoothgrad_samples=4', '--explain_invert_images=2']
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = os.path.join(workdir, 'explain')
  metrics = json.load(open(os.path.join(out, 'metrics.json')))
  names = [m['method'] for m in metrics['methods']]
  assert names == list(explain.METHODS) + ['random']
  for row in metrics['methods'][:-1]:
    for key in ('deletion_auc', 'insertion_auc', 'sanity_rank_corr', 'fragility_topk',
                'seconds_per_image'):
      assert key in row, (row['method'], key)
  inversion = json.load(open(os.path.join(out, 'inversion.json')))
  assert [r['layer'] for r in inversion['layers']] == ['ConvNormAct_0', 'ConvNormAct_1',
                                                       'ConvNormAct_2']
  for name in ('maps.png', 'metrics.md', 'inversion.png', 'projections.png', 'maximization.png'):
    assert os.path.getsize(os.path.join(out, name)) > 0, name
  assert metrics['total_seconds'] > 0 and metrics['machine']['isa']
  maxi = json.load(open(os.path.join(out, 'maximization.json')))
  assert maxi[0]['target'] == 'logit of class 0'  # named by class (synthetic data: no names)
  page = open(os.path.join(workdir, 'report.html')).read()  # rebuilt after the mode
  assert '<section id="explain">' in page and 'src="explain/maps.png"' in page
  assert 'is the most faithful map here' in page
  bad = subprocess.run(cmd[:4] + ['--explain_methods=lime'], cwd=REPO, capture_output=True,
                       text=True, timeout=300)
  errors = [l for l in bad.stderr.splitlines() if l.startswith('error:')]
  assert bad.returncode == 2 and len(errors) == 1 and 'unknown explain method' in errors[0]


class Seq(nn.Module):
  """A 1-D conv net (sequences of 12 steps, 2 channels)."""
  @nn.compact
  def __call__(self, x, train=False):
    x = layers.ConvNormAct(4, kernel=3, norm='none')(x, train)
    return nn.Dense(3)(x.mean(axis=1))


def test_gradient_methods_run_on_1d_models_and_patch_methods_refuse():
  model = Seq()
  x = jax.random.uniform(jax.random.key(0), (2, 12, 2)) * 255
  v = model.init(jax.random.key(1), x)
  net = runs.Net(model, augment.Preprocess((127.0, 127.0), (64.0, 64.0)))
  c = jnp.array([0, 2])
  assert visualize.to_map(visualize.gradient(net, v, x, c)).shape == (2, 12)
  attr, delta = visualize.integrated_gradients(net, v, x, c, jnp.zeros_like(x), 64)
  assert attr.shape == x.shape and np.abs(np.asarray(delta)).max() < 1e-2
  with pytest.raises(UserError, match='2-D'):
    visualize.occlusion(net, v, x, c)
  with pytest.raises(UserError, match='2-D conv layer'):
    visualize.gradcam(net, v, x, c, 'ConvNormAct_0')


@pytest.mark.parametrize('name,knobs,shape', [
    ('lenet5', {}, (28, 28, 1)), ('resnet20', {}, (16, 16, 3)), ('nin', {}, (16, 16, 3)),
    ('allconv_c', {}, (16, 16, 3)), ('vgg11_bn', {'width_multiplier': 0.125,
                                                  'global_pool': 'avg'}, (32, 32, 3)),
    ('densenet_bc_100_k12', {'depth': 16}, (16, 16, 3)), ('simpnet_slim_300k', {}, (16, 16, 3)),
])
def test_layers_gradients_and_gradcam_work_on_every_family(name, knobs, shape):
  import models
  from configs import common
  cfg = common.model_config(name)
  for k, val in knobs.items():
    cfg[k] = val
  model = models.create(cfg, 10)
  x = jax.random.uniform(jax.random.key(0), (2, *shape)) * 255
  v = model.init(jax.random.key(1), x, train=False)
  net = runs.Net(model, augment.Preprocess((127.0,) * shape[-1], (64.0,) * shape[-1]))
  convs = visualize.conv_layers(net, v, shape)
  spatial = [n for n, s in convs if s[0] * s[1] > 1]
  assert len(convs) >= 3 and spatial, convs
  order = visualize.module_order(net, v, shape)  # forward order, whatever the dict's order
  top = [n for n, _ in convs if '/' not in n]
  assert [n for n in order if n in top] == top and sorted(order) == sorted(v['params'])
  c = jnp.array([1, 2])
  assert np.isfinite(np.asarray(visualize.gradient(net, v, x, c))).all()
  cam = visualize.gradcam(net, v, x, c, spatial[-1])
  assert cam.shape == (2, *shape[:2]) and (np.asarray(cam) >= 0).all()
