"""The model zoo: reference parameter counts, output shapes, a few training steps per family,
what each knob claims to change, and 1-D / 3-D inputs."""

import json
import os
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import models  # noqa: E402
from configs import common  # noqa: E402
from errors import UserError  # noqa: E402
from models import layout, summary  # noqa: E402

IMAGENET = ((224, 224, 3), 1000)
CIFAR = ((32, 32, 3), 10)


def make(name: str, num_classes: int = 10, **knobs):
  cfg = common.model_config(name)
  for key, value in knobs.items():
    cfg[key] = value
  return models.create(cfg, num_classes)


def variables(model, shape):
  x = jnp.zeros((1, *shape), jnp.float32)
  return jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))


def n_params(name: str, shape=CIFAR[0], num_classes: int = 10, **knobs) -> int:
  return summary.count_params(variables(make(name, num_classes, **knobs), shape)['params'])


# Exact counts. torchvision's documented counts; SimpleNet CIFAR from the official PyTorch
# code; the rest computed by hand from the official layouts (SimpleNet ImageNet: PyTorch
# `simplenet.py`; simplenet_cifar_460k and SimpNet: the Caffe prototxts) and the papers
# (LeNet-5 with full C3 connectivity; NiN; All-CNN-C; DenseNet-BC; He et al.'s CIFAR ResNets,
# whose counts are also what the widely used reimplementation akamaster/pytorch_resnet_cifar10
# prints).
EXACT = {
    'lenet5': ((32, 32, 1), 10, 61_706),
    'lenet5_caffe': ((28, 28, 1), 10, 431_080),  # Han et al.'s LeNet-5: 1720 KB
    'alexnet': (*IMAGENET, 61_100_840),
    'vgg11': (*IMAGENET, 132_863_336),
    'vgg16': (*IMAGENET, 138_357_544),
    'vgg19': (*IMAGENET, 143_667_240),
    'vgg11_bn': (*IMAGENET, 132_868_840),
    'vgg16_bn': (*IMAGENET, 138_365_992),
    'vgg19_bn': (*IMAGENET, 143_678_248),
    'googlenet': (*IMAGENET, 6_624_904),
    'resnet18': (*IMAGENET, 11_689_512),
    'resnet34': (*IMAGENET, 21_797_672),
    'resnet50': (*IMAGENET, 25_557_032),
    'resnet101': (*IMAGENET, 44_549_160),
    'resnet152': (*IMAGENET, 60_192_808),
    'densenet121': (*IMAGENET, 7_978_856),
    'squeezenet1_0': (*IMAGENET, 1_248_424),
    'squeezenet1_1': (*IMAGENET, 1_235_496),
    'simplenet_cifar_5m': (*CIFAR, 5_498_378),
    'simplenet_cifar_310k': (*CIFAR, 312_362),
    'simplenet_cifar_460k': (*CIFAR, 455_862),
    'simplenetv1_small_m1_05': (*IMAGENET, 1_506_792),
    'simplenetv1_small_m2_05': (*IMAGENET, 1_506_792),
    'simplenetv1_small_m1_075': (*IMAGENET, 3_287_272),
    'simplenetv1_small_m2_075': (*IMAGENET, 3_287_272),
    'simplenetv1_5m_m1': (*IMAGENET, 5_752_808),
    'simplenetv1_5m_m2': (*IMAGENET, 5_752_808),
    'simplenetv1_9m_m1': (*IMAGENET, 9_508_968),
    'simplenetv1_9m_m2': (*IMAGENET, 9_508_968),
    'simpnet_5m': (*CIFAR, 5_478_223),
    'simpnet_8m': (*CIFAR, 8_902_729),
    'simpnet_slim_300k': (*CIFAR, 300_964),
    'nin': (*CIFAR, 966_986),
    'allconv_c': (*CIFAR, 1_369_738),
    'densenet_bc_100_k12': (*CIFAR, 769_162),
    'resnet20': (*CIFAR, 269_722),
    'resnet32': (*CIFAR, 464_154),
    'resnet44': (*CIFAR, 658_586),
    'resnet56': (*CIFAR, 853_018),
    'resnet110': (*CIFAR, 1_727_962),
    # Dense (tests/test_segmentation.py derives these): U-Net as published, 1 channel, 2
    # classes; FCNs over VGG-16 for Pascal VOC's 21 classes.
    'unet': ((572, 572, 1), 2, 31_030_658),
    'fcn32s': ((224, 224, 3), 21, 134_346_581),
    'fcn16s': ((224, 224, 3), 21, 134_364_410),
    'fcn8s': ((224, 224, 3), 21, 134_376_863),
}
# Rounded counts the papers and READMEs publish, to check the exact ones against.
PUBLISHED = {'resnet20': 0.27e6, 'resnet32': 0.46e6, 'resnet44': 0.66e6, 'resnet56': 0.85e6,
             'resnet110': 1.7e6, 'densenet_bc_100_k12': 0.8e6, 'allconv_c': 1.3e6,
             'nin': 1.0e6, 'simplenet_cifar_460k': 0.46e6, 'simpnet_5m': 5.4e6,
             'simpnet_8m': 8.9e6, 'simpnet_slim_300k': 0.3e6, 'simplenetv1_small_m1_05': 1.51e6,
             'simplenetv1_small_m1_075': 3.29e6, 'simplenetv1_5m_m1': 5.75e6,
             'simplenetv1_9m_m1': 9.51e6}


# GFLOPS column of ../shared/REFERENCES.md (torchvision, 224x224, 1000 classes).
GMACS = {'alexnet': 0.714, 'vgg11': 7.609, 'vgg16': 15.47, 'vgg19': 19.632, 'googlenet': 1.498,
         'resnet18': 1.814, 'resnet34': 3.664, 'resnet50': 4.089, 'resnet101': 7.801,
         'resnet152': 11.514, 'squeezenet1_0': 0.819, 'squeezenet1_1': 0.349,
         'densenet121': 2.834}


@pytest.mark.parametrize('name', sorted(set(EXACT) - set(GMACS)))  # the rest: test_macs_...
def test_exact_parameter_counts(name):
  shape, classes, count = EXACT[name]
  assert n_params(name, shape, classes) == count
  if name in PUBLISHED:
    assert count == pytest.approx(PUBLISHED[name], rel=0.09)


def test_every_registered_model_has_a_count_test():
  generic = {'simplenet', 'vgg13', 'vgg13_bn', 'zfnet'}  # no exact public reference
  assert set(models.names()) - generic == set(EXACT)


@pytest.mark.parametrize('name', sorted(GMACS))
def test_macs_match_torchvision(name):
  rows, params, macs = summary.layer_table(make(name, 1000), IMAGENET[0])
  assert macs / 1e9 == pytest.approx(GMACS[name], rel=0.01)
  assert sum(r.params for r in rows) == params == EXACT[name][2]


# Smallest-ish input each family accepts (AlexNet-style 11x11/4 stems need more than 32).
SMALL = {'alexnet': 64, 'zfnet': 64}


# Classifiers; the dense models' output shapes are tests/test_segmentation.py's.
CLASSIFIERS = [n for n in models.names() if not getattr(make(n), 'dense', False)]


@pytest.mark.parametrize('name', CLASSIFIERS)
def test_output_shape(name):
  side = SMALL.get(name, 32)
  model = make(name, 7)
  x = jax.ShapeDtypeStruct((2, side, side, 3), jnp.float32)
  v = variables(model, (side, side, 3))
  out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), v, x)
  assert out.shape == (2, 7) and out.dtype == jnp.float32


# One small member per family for the training test: (name, input side, knobs). Depth and
# width knobs keep the compiles short; each still runs the family's own code paths (ResNet:
# the ImageNet stem, bottlenecks and projections, and the CIFAR stem with option-A shortcuts).
FAMILIES = [
    ('lenet5', 28, {}),
    ('alexnet', 64, {'width_multiplier': 0.125}),
    ('zfnet', 64, {'width_multiplier': 0.125}),
    ('vgg11_bn', 32, {'width_multiplier': 0.125, 'global_pool': 'avg'}),
    ('nin', 32, {'width_multiplier': 0.25}),
    ('allconv_c', 32, {'width_multiplier': 0.25}),
    ('googlenet', 32, {'width_multiplier': 0.125}),
    ('resnet50', 32, {'width_multiplier': 0.125, 'layers': '1,1'}),
    ('resnet20', 32, {'width_multiplier': 0.5, 'depth': 8}),
    ('densenet_bc_100_k12', 32, {'depth': 10}),
    ('squeezenet1_1', 32, {'width_multiplier': 0.25}),
    ('simplenet_cifar_310k', 32, {'width_multiplier': 0.5, 'depth': 6}),
    ('simplenetv1_small_m2_05', 32, {'width_multiplier': 0.25, 'depth': 6}),
    ('simpnet_slim_300k', 32, {'width_multiplier': 0.5, 'depth': 6}),
]
# XLA's backend optimizations cost more compile time than these few steps save.
FAST_COMPILE = {'xla_backend_optimization_level': 0}


def fast_jit(fn, *args):
  """`fn` compiled for `args` with FAST_COMPILE."""
  return jax.jit(fn).lower(*args).compile(FAST_COMPILE)


def init(model, x, seed: int = 0):
  """Variables of `model` for `x`, initialized by one fast compile (eager init dispatches op
  by op, and an optimized compile of the initializers' RNG takes longer still)."""
  fn = lambda x: model.init(jax.random.key(seed), x, train=False)
  return fast_jit(fn, x)(x)


def train_losses(model, x, y, steps: int = 8, lr: float = 3e-3) -> list[float]:
  """Adam on one fixed batch (train mode, batch stats updated): the losses of each step."""
  tx = optax.adam(lr)

  def start(x):
    v = model.init(jax.random.key(0), x, train=False)
    return v['params'], v.get('batch_stats', {}), tx.init(v['params'])
  params, stats, opt = fast_jit(start, x)(x)

  def step(params, stats, opt, key):
    def loss_fn(p):
      logits, new = model.apply({'params': p, 'batch_stats': stats}, x, train=True,
                                mutable=['batch_stats'], rngs={'dropout': key})
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), new
    (loss, new), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), new.get('batch_stats', {}), opt, loss

  compiled = fast_jit(step, params, stats, opt, jax.random.key(0))
  losses = []
  for i in range(steps):
    params, stats, opt, loss = compiled(params, stats, opt, jax.random.key(i))
    losses.append(float(loss))
  return losses


@pytest.mark.parametrize('name,side,knobs', FAMILIES, ids=[f[0] for f in FAMILIES])
def test_family_trains(name, side, knobs):
  model = make(name, 10, dropout=0.0, **knobs)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(16, side, side, 3 if name != 'lenet5' else 1)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 10, 16))
  losses = train_losses(model, x, y)
  assert np.all(np.isfinite(losses)), losses
  assert losses[-1] < 0.9 * losses[0] and losses[-1] < min(losses[:3]), losses


def test_every_family_is_trained():
  modules = {type(make(n)).__module__ for n in CLASSIFIERS}  # dense: test_segmentation.py
  assert modules == {type(make(n)).__module__ for n, _, _ in FAMILIES}


# ----------------------------------------------------------------------------- knobs


def test_width_multiplier_quarters_a_plain_stack():
  for name in ('simplenet_cifar_5m', 'simpnet_5m', 'resnet56'):
    ratio = n_params(name, width_multiplier=0.5) / n_params(name)
    assert 0.23 < ratio < 0.28, (name, ratio)
  # AlexNet/VGG scale their dense layers too.
  assert 0.23 < n_params('vgg11', width_multiplier=0.5) / n_params('vgg11') < 0.28


def test_depth_picks_the_named_variants():
  assert n_params('resnet56', depth=20) == EXACT['resnet20'][2]
  assert n_params('resnet18', *IMAGENET, depth=50) == EXACT['resnet50'][2]
  assert n_params('vgg11', *IMAGENET, depth=16) == EXACT['vgg16'][2]
  assert n_params('densenet121', *IMAGENET, layers='6,12,24,16') == EXACT['densenet121'][2]
  assert n_params('resnet20', layers='2,2,2') < n_params('resnet20')
  convs = [t for t in make('simplenet_cifar_5m', depth=8).layout if t != layout.POOL]
  assert len(convs) == 8
  # VGG with another depth resamples the convs (depth counts the 3 dense layers too).
  assert sum(t != layout.POOL for t in make('vgg11', depth=12).layout) == 9


def test_one_by_one_switches():
  # Bottlenecks off: ResNet-50's stages with basic blocks are ResNet-34.
  assert n_params('resnet50', *IMAGENET, one_by_one='none') == EXACT['resnet34'][2]
  assert n_params('resnet20', one_by_one='all', depth=29) > n_params('resnet20')
  # GoogLeNet without the 1x1 reductions is the paper's naive module: widths blow up.
  assert n_params('googlenet', one_by_one='none') > 5 * n_params('googlenet')
  assert n_params('densenet_bc_100_k12', one_by_one='none') != EXACT['densenet_bc_100_k12'][2]
  assert n_params('squeezenet1_1', one_by_one='none') > n_params('squeezenet1_1')
  # NiN without 1x1s keeps only its spatial convs and the class conv (the third block's
  # 3x3 then reads 192 channels instead of 96, so count the 1x1 layers, not parameters).
  assert kinds('nin', one_by_one='none').count('conv') == 4
  assert kinds('nin').count('conv') == 9 and kinds('nin', num_one_by_one=3).count('conv') == 13
  lay = make('simplenet_cifar_5m', one_by_one='early', num_one_by_one=2).layout
  assert [t.kernel for t in lay if t != layout.POOL][:4] == [3, 1, 1, 3]


def test_kernel_size_and_norm():
  assert n_params('simpnet_slim_300k', kernel_size=5) > 2.5 * n_params('simpnet_slim_300k')
  assert 'batch_stats' not in variables(make('alexnet', norm='none'), (64, 64, 3))
  assert 'batch_stats' in variables(make('alexnet', norm='batch'), (64, 64, 3))
  assert 'batch_stats' not in variables(make('resnet20', norm='none'), CIFAR[0])


def apply(model, x, train=False, key=0):
  """Inference logits, or (train-mode logits, state), of freshly initialized `model`."""
  v = init(model, x)
  fn = lambda v, x, k: model.apply(v, x, train=train, rngs={'dropout': k},
                                   mutable=['batch_stats'] if train else False)
  return fast_jit(fn, v, x, jax.random.key(key))(v, x, jax.random.key(key))


def test_activation_init_global_pool_and_dropout_change_outputs():
  x = jax.random.normal(jax.random.key(3), (2, 16, 16, 3))
  tiny = dict(layers='16,p,16')
  base = apply(make('simplenet', **tiny), x)
  for knob in ({'activation': 'tanh'}, {'activation': 'gelu'}, {'init': 'orthogonal'},
               {'global_pool': 'avg'}, {'norm': 'none'}):
    assert not np.allclose(apply(make('simplenet', **tiny, **knob), x), base), knob
  # Orthogonal init: the reshaped kernel of the first conv has orthonormal columns.
  v = init(make('simplenet', **tiny, init='orthogonal'), x)
  w = v['params']['ConvNormAct_0']['Conv_0']['kernel'].reshape(-1, 16)
  np.testing.assert_allclose(w.T @ w, np.eye(16), atol=1e-5)
  a, _ = apply(make('simplenet', **tiny, dropout=0.5), x, train=True, key=1)
  b, _ = apply(make('simplenet', **tiny, dropout=0.5), x, train=True, key=2)
  assert not np.allclose(a, b)
  a, _ = apply(make('simplenet', **tiny, dropout=0.0), x, train=True, key=1)
  b, _ = apply(make('simplenet', **tiny, dropout=0.0), x, train=True, key=2)
  np.testing.assert_allclose(a, b)


def kinds(name, shape=CIFAR[0], **knobs):
  return [r.kind for r in summary.layer_table(make(name, 10, **knobs), shape)[0]]


def test_pool_kinds():
  assert 'max_pool' not in kinds('allconv_c')
  assert kinds('allconv_c', pool='max').count('max_pool') == 2
  assert kinds('resnet20', pool='avg').count('avg_pool') == 2
  assert kinds('simplenet_cifar_310k', pool='avg').count('avg_pool') == 4
  # strided-conv pooling adds a conv per pool
  assert (kinds('simplenet_cifar_310k', pool='conv').count('conv')
          == kinds('simplenet_cifar_310k').count('conv') + 4)
  # VGG's global pool replaces the 7x7 adaptive pooling: the first dense layer shrinks 49x
  assert n_params('vgg11', global_pool='avg') < n_params('vgg11') - 90e6


def test_input_channels_and_classes():
  for name in ('lenet5', 'resnet18', 'densenet121', 'googlenet', 'simplenet_cifar_310k',
               'squeezenet1_0'):
    model = make(name, 3)
    x = jax.ShapeDtypeStruct((2, 32, 32, 1), jnp.float32)
    v = variables(model, x.shape[1:])
    assert jax.eval_shape(lambda v, x: model.apply(v, x), v, x).shape == (2, 3)
    kernels = [a for a in jax.tree_util.tree_leaves(v['params']) if a.ndim == 4]
    assert any(a.shape[2] == 1 for a in kernels)  # the stem reads one channel


def test_bad_knobs_fail_before_compiling():
  for name, knobs, words in [
      ('resnet20', {'depth': 21}, '6n + 2'), ('resnet18', {'depth': 19}, 'one of'),
      ('googlenet', {'pool': 'conv'}, 'pool'), ('vgg16', {'activation': 'swish'}, 'activation'),
      ('densenet_bc_100_k12', {'depth': 50}, '6n + 4'), ('lenet5', {'dropout': 1.5}, 'dropout'),
      ('resnet20', {'widths': '16,32'}, 'widths'), ('alexnet', {'one_by_one': 'end'}, 'one_by_one'),
      ('simplenet', {'layers': '64,x'}, 'layout token'), ('vgg11', {'width_multiplier': 0}, 'width'),
      ('nope', {}, 'unknown model')]:
    with pytest.raises(UserError, match=re.escape(words)):
      make(name, **knobs)


def test_layout_tokens_round_trip():
  spec = '64s2,128,p,2048k1,96n,256k1s2n'
  parsed = layout.parse_layout(spec)
  assert parsed[0] == layout.Conv(64, 3, 2, True) and parsed[4] == layout.Conv(96, 3, 1, False)
  assert layout.format_layout(parsed) == spec
  # Resampling keeps the total stride.
  resized = layout.resize_depth(layout.parse_layout('64s2,64s2,64,64,p,64'), 3)
  assert np.prod([t.stride for t in resized if t != layout.POOL]) == 4


def test_simplenet_imagenet_stride_modes():
  def conv_sides(name):
    rows = summary.layer_table(make(name, 1000), IMAGENET[0])[0]
    return [r.shape[0] for r in rows if r.kind == 'conv']
  assert conv_sides('simplenetv1_5m_m1')[:4] == [112, 56, 28, 28]
  assert conv_sides('simplenetv1_5m_m2')[:4] == [112, 56, 56, 28]
  # The official code pads its 1x1 convs by one pixel: 7 -> 9 -> 11.
  assert conv_sides('simplenetv1_5m_m2')[-3:] == [9, 11, 11]


def test_googlenet_aux_heads():
  assert n_params('googlenet', *IMAGENET, aux_heads=True) == 13_004_888  # torchvision
  model = make('googlenet', 10, aux_heads=True)
  x = jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32)
  v = variables(model, x.shape[1:])

  def run(mutable, train=True):
    return jax.eval_shape(lambda v, x: model.apply(
        v, x, train=train, mutable=mutable, rngs={'dropout': jax.random.key(1)}), v, x)
  logits, state = run(['batch_stats', 'intermediates'])
  aux = state['intermediates']['aux_logits'][0]
  assert logits.shape == (2, 10) and [a.shape for a in aux] == [(2, 10), (2, 10)]
  # The project's train step (mutable batch_stats only) just gets the main logits.
  logits, state = run(['batch_stats'])
  assert logits.shape == (2, 10) and 'intermediates' not in state
  assert not run(['intermediates'], train=False)[1]  # no auxiliary heads at inference


# Small members: layouts / blocks cut down so that eight compiles stay quick.
ND = {'simplenet_cifar_310k': {'layers': '16,p,32,32k1,p,32'},
      'vgg11_bn': {'layers': '16,p,32,p', 'global_pool': 'avg', 'dropout': 0.0},
      'resnet20': {'depth': 8}}


@pytest.mark.parametrize('name', sorted(ND))
@pytest.mark.parametrize('shape', [(64, 2), (16, 16, 16, 1)], ids=['1d', '3d'])
def test_1d_and_3d_inputs(name, shape):
  model = make(name, 5, **ND[name])
  x = jax.random.normal(jax.random.key(0), (2, *shape))
  v = init(model, x, seed=1)

  def loss(p):
    out, _ = model.apply({**v, 'params': p}, x, train=True, mutable=['batch_stats'])
    return jnp.mean(out ** 2), out
  grad_fn = jax.value_and_grad(loss, has_aux=True)
  (value, out), grads = fast_jit(grad_fn, v['params'])(v['params'])
  assert out.shape == (2, 5) and np.isfinite(float(value))
  g = jax.tree_util.tree_leaves(grads)
  assert all(np.all(np.isfinite(a)) for a in g) and any(np.abs(a).sum() > 0 for a in g)
  kernel = v['params']['ConvNormAct_0']['Conv_0']['kernel']
  assert kernel.ndim == len(shape) + 1  # an N-d conv, not a reshaped 2-D one
  rows = summary.layer_table(model, shape)[0]  # the summary handles N-d too
  assert len(rows[0].receptive_field) == len(shape) - 1


def test_orthogonal_init_trains_under_main_pys_xla_flags(tmp_path):
  # main.py turns on YNNPACK's elementwise fusions, which reject the column-major output of
  # LAPACK's QR inside a fusion; the initialization must compile without them.
  from conftest import overrides, run_main
  run_main([f'--workdir={tmp_path}', *overrides(model__init='orthogonal', model__layers='32,32,p,16', num_train_steps=2)])
  r = json.load(open(os.path.join(tmp_path, 'results.json')))
  assert r['steps'] == 2 and np.isfinite(r['test_loss'])
