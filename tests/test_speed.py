"""Benchmark mode and the speed options: they must report sane numbers and stay correct."""

import glob
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import assert_losses_track, load_results, overrides, run_main

import models  # noqa: E402  (conftest puts the repository on sys.path)
from kernels import convolutions, xla_conv  # noqa: E402
from configs import common  # noqa: E402
from models import layers  # noqa: E402


def test_benchmark_mode_writes_benchmark_json(tmp_path):
  workdir = str(tmp_path / 'b')
  run_main([f'--workdir={workdir}', '--mode=benchmark', '--benchmark_steps=3', *overrides()])
  with open(os.path.join(workdir, 'benchmark.json')) as f:
    b = json.load(f)
  for key in ('images_per_sec', 'step_time_ms', 'flops_per_step', 'achieved_gflops_per_sec',
              'peak_gflops_per_sec', 'fraction_of_peak', 'compile_time_s', 'input_wait_fraction'):
    assert key in b, key
  assert b['images_per_sec'] > 0 and b['flops_per_step'] > 0 and b['peak_gflops_per_sec'] > 0
  assert 0 < b['fraction_of_peak'] < 1.5
  assert abs(b['fraction_of_peak'] - b['achieved_gflops_per_sec'] / b['peak_gflops_per_sec']) < 1e-3
  assert 0 <= b['input_wait_fraction'] < 0.5
  assert ('--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_DOT,'
          'LIBRARY_FUSION_TYPE_REDUCE,LIBRARY_FUSION_TYPE_ELTWISE') in b['xla_flags']
  assert b['conv_impl'] in ('onednn', 'xla') and b['malloc'] in ('tcmalloc', 'system')
  assert not os.path.exists(os.path.join(workdir, 'checkpoints'))  # benchmarking trains nothing
  assert b['diagnostics'] is None
  run_main([f'--workdir={workdir}', '--mode=benchmark', '--benchmark_steps=3', *overrides(),
            '--config.diagnostics.enabled=True', '--config.diagnostics.every_steps=10'])
  d = json.load(open(os.path.join(workdir, 'benchmark.json')))['diagnostics']
  assert d['every_steps'] == 10 and d['step_time_ms'] > 0 and d['train_step_time_ms'] > 0
  assert d['overhead_fraction'] == pytest.approx(d['step_time_ms'] / (10 * d['train_step_time_ms']), rel=1e-2)


def test_bfloat16_compute_tracks_float32_losses(tmp_path):
  f32, bf16 = str(tmp_path / 'f32'), str(tmp_path / 'bf16')
  run_main([f'--workdir={f32}', *overrides(num_train_steps=10)])
  run_main([f'--workdir={bf16}', *overrides(num_train_steps=10, dtype='bfloat16')])
  a = np.array([l for _, l, _ in load_results(f32)['train_log']])
  b = np.array([l for _, l, _ in load_results(bf16)['train_log']])
  assert_losses_track(b, a, rtol=0.05, first=5)  # bf16 has an 8-bit mantissa
  assert not np.array_equal(a, b)  # the option really changes the compute dtype


def test_default_xla_cpu_libraries_train_like_the_alternatives(tmp_path):
  # main.py sends XLA CPU convolutions to Eigen and reductions/elementwise fusions to YNNPACK
  # (both faster here); the other assignment (YNNPACK convolutions, XLA's own reduction and
  # elementwise loops) must give the same training up to float rounding.
  eigen, ynn = str(tmp_path / 'eigen'), str(tmp_path / 'ynn')
  run_main([f'--workdir={eigen}', *overrides(num_train_steps=10, conv_impl='xla')])
  run_main([f'--workdir={ynn}', *overrides(num_train_steps=10, conv_impl='xla')], env_extra={
      'XLA_FLAGS': '--xla_force_host_platform_device_count=1 '
                   '--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION'})
  a = np.array([l for _, l, _ in load_results(eigen)['train_log']])
  b = np.array([l for _, l, _ in load_results(ynn)['train_log']])
  assert len(a) >= 5  # one loss per logged step (the compiling first step is not logged)
  np.testing.assert_allclose(b, a, rtol=1e-4)


def test_main_preloads_tcmalloc_and_it_changes_no_numbers(tmp_path):
  installed = glob.glob('/usr/lib/*/libtcmalloc_minimal.so.4')  # where main.py looks
  if not installed and not os.environ.get('CI'):
    pytest.skip('libtcmalloc-minimal4 is not installed (make setup installs it)')
  tc, system = str(tmp_path / 'tc'), str(tmp_path / 'system')
  run_main([f'--workdir={tc}', *overrides(num_train_steps=4)])
  run_main([f'--workdir={system}', *overrides(num_train_steps=4)],
           env_extra={'CNN_LAB_MALLOC': 'system'})
  a, b = load_results(tc), load_results(system)
  assert (a['malloc'], b['malloc']) == ('tcmalloc', 'system')
  # Freed memory stays mapped (no page faults to map it again each step).
  assert (a['tcmalloc_release_rate'], b['tcmalloc_release_rate']) == ('0', None)
  assert a['train_log'] == b['train_log']  # the allocator changes speed, never results


def test_ema_and_flip_tta_change_only_evaluation(tmp_path):
  plain, ema = str(tmp_path / 'plain'), str(tmp_path / 'ema')
  run_main([f'--workdir={plain}', *overrides(num_train_steps=10)])
  run_main([f'--workdir={ema}', *overrides(num_train_steps=10, ema_decay=0.5,
                                           eval_flip_tta=True)])
  p, e = load_results(plain), load_results(ema)
  assert p['train_log'] == e['train_log']  # training itself is untouched
  assert p['test_loss'] != e['test_loss']


def test_persistent_compilation_cache_is_written_and_reused(tmp_path):
  # Every executable is cached (min 0 s): on a fast machine the tiny step compiles in under
  # the default 1 s threshold, and the test must pass on fast and slow machines alike.
  cache = tmp_path / 'cache'
  flags = [f'--compilation_cache_dir={cache}', '--compilation_cache_min_secs=0']
  run_main([f'--workdir={tmp_path}/a', *flags, *overrides()])
  entries = sorted(os.listdir(cache))
  assert any(e.startswith('jit_step') for e in entries), entries
  # A second experiment with the same shapes adds no new train-step executable.
  run_main([f'--workdir={tmp_path}/b', *flags, *overrides(seed=1)])
  assert sorted(e for e in os.listdir(cache) if e.startswith('jit_step')) == \
      [e for e in entries if e.startswith('jit_step')]


@pytest.mark.parametrize('shape,window', [((4, 9, 3), 2), ((3, 8, 7, 5), 2), ((2, 9, 9, 4), 3),
                                          ((2, 5, 6, 4, 3), 2)])
def test_tiled_max_pool_gradient_equals_select_and_scatter(shape, window):
  # ReLU'd, coarsely rounded inputs: many windows hold ties (all zeros), where only the
  # first maximum in the window may take the gradient, as XLA's select-and-scatter does.
  x = jnp.round(jax.nn.relu(jax.random.normal(jax.random.PRNGKey(0), shape)) * 2) / 2
  nd = len(shape) - 2
  w = jax.random.normal(jax.random.PRNGKey(1), nn.max_pool(x, (window,) * nd,
                                                          (window,) * nd).shape)
  ref = jax.grad(lambda x: (nn.max_pool(x, (window,) * nd, (window,) * nd) * w).sum())(x)
  new = jax.grad(lambda x: (layers.tiled_max_pool(x, window) * w).sum())(x)
  assert float(jnp.abs(ref).sum()) > 0
  np.testing.assert_array_equal(np.asarray(new), np.asarray(ref))
  pooled = np.asarray(nn.max_pool(x, (window,) * nd, (window,) * nd))
  np.testing.assert_array_equal(np.asarray(layers.tiled_max_pool(x, window)), pooled)
  np.testing.assert_array_equal(np.asarray(layers._strided_max(x, window)), pooled)  # training


def test_simplenet_pooling_has_no_reduce_window_or_select_and_scatter():
  model = models.create(common.model_config('simplenet_cifar_310k'), 10)
  x = jnp.zeros((2, 32, 32, 3))
  variables = model.init(jax.random.PRNGKey(0), x, train=False)

  def loss(params):
    out, _ = model.apply({**variables, 'params': params}, x, train=True, mutable=['batch_stats'])
    return out.sum()

  text = str(jax.make_jaxpr(jax.grad(loss))(variables['params']))
  assert 'select_and_scatter' not in text and 'reduce_window' not in text


def _conv_args(nd, padding):
  spec = 'DHW'[-nd:]
  return dict(window_strides=(1,) * nd, padding=padding,
              dimension_numbers=(f'N{spec}C', f'{spec}IO', f'N{spec}C'))


@pytest.mark.parametrize('x_shape,k_shape,padding', [
    ((4, 2, 2, 16), (3, 3, 16, 8), 'SAME'),          # SimpleNet-5M's last conv, scaled down
    ((4, 1, 1, 16), (3, 3, 16, 8), 'SAME'),          # only the centre tap sees data
    ((4, 2, 1, 16), (3, 3, 16, 8), ((2, 0), (1, 1))),
    ((4, 2, 2, 16), (5, 5, 16, 8), 'SAME'),
    ((4, 2, 2, 16), (3, 3, 16, 8), 'VALID'),         # empty output: plain path
    ((4, 2, 16), (3, 16, 8), 'SAME'),                # 1-D
    ((2, 2, 2, 2, 4), (3, 3, 3, 4, 5), 'SAME'),      # 3-D
    ((4, 8, 8, 16), (3, 3, 16, 8), 'SAME'),          # not tiny: Eigen + reduce_precision
])
def test_xla_conv_lowering_equals_lax_conv(x_shape, k_shape, padding):
  kx, kk = jax.random.split(jax.random.PRNGKey(0))
  x, k = jax.random.normal(kx, x_shape), jax.random.normal(kk, k_shape)
  args = _conv_args(len(x_shape) - 2, padding)
  ref = lambda x, k: jax.lax.conv_general_dilated(x, k, **args)
  new = lambda x, k: xla_conv.conv_general_dilated(x, k, **args)
  loss = lambda f: lambda x, k: jnp.sum(jnp.sin(f(x, k)))
  close = lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5 * (1 + np.abs(b).max(initial=0)))
  close(new(x, k), ref(x, k))
  for a, b in zip(jax.grad(loss(new), (0, 1))(x, k), jax.grad(loss(ref), (0, 1))(x, k)):
    close(a, b)
  if max(x_shape[1:-1]) > xla_conv.TINY_SIDE:  # an exact identity around the same convolution
    np.testing.assert_array_equal(np.asarray(jax.jit(new)(x, k)), np.asarray(jax.jit(ref)(x, k)))


def test_training_convolutions_stay_out_of_ynnpack_fusions():
  # With main.py's LIBRARY_FUSION_TYPE_ELTWISE, XLA pulls a conv that feeds a bias add into a
  # YNNPACK fusion (slower than Eigen for these layers); the training-time lowering keeps it a
  # plain convolution. Checked in a fresh process, where the flag takes effect.
  import subprocess
  import sys
  from conftest import REPO
  script = r'''
import re, sys, jax, jax.numpy as jnp
from jax import lax
from kernels import xla_conv
dn = ('NHWC', 'HWIO', 'NHWC')
def absorbed(conv):
  f = lambda x, k, b: conv(x, k, (1, 1), 'SAME', dimension_numbers=dn) + b
  text = jax.jit(f).lower(jnp.ones((8, 8, 8, 32)), jnp.ones((3, 3, 32, 16)),
                          jnp.ones(16)).compile().as_text()
  bodies = {m.group(1): m.group(0) for m in re.finditer(r'^(%\S+) .*?^}', text, re.S | re.M)}
  ynn_calls = [c for line in text.splitlines() if '__ynn_fusion' in line
               for c in re.findall(r'calls=(%[\w.]+)', line)]
  return any('convolution(' in bodies.get(c, '') for c in ynn_calls)
print(absorbed(lax.conv_general_dilated), absorbed(xla_conv.conv_general_dilated))
'''
  env = dict(os.environ, XLA_FLAGS=(
      '--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_DOT,'
      'LIBRARY_FUSION_TYPE_REDUCE,LIBRARY_FUSION_TYPE_ELTWISE'), PYTHONPATH=str(REPO))
  out = subprocess.run([sys.executable, '-c', script], env=env, capture_output=True, text=True,
                       check=True, cwd=REPO).stdout.split()
  assert out == ['True', 'False'], out


def test_simplenet_trains_alike_with_and_without_the_cpu_conv_lowering(monkeypatch):
  # SimpleNet-5M's layout at 32x32 ends on a 2x2 map (the tiny path) after wide layers (the
  # reduce_precision path); the same loss and gradients with both lowerings switched off.
  cfg = common.model_config('simplenet_cifar_5m')
  cfg.width_multiplier = 0.125
  model = models.create(cfg, 10, convolutions=convolutions.XLA)
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 32, 32, 3))
  labels = jnp.arange(4)
  variables = model.init(jax.random.PRNGKey(1), x, train=False)

  def loss_and_grad():
    def loss(params):
      logits, _ = model.apply({**variables, 'params': params}, x, train=True,
                              mutable=['batch_stats'])
      return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(4), labels])
    return jax.jit(jax.value_and_grad(loss))(variables['params'])

  fast = loss_and_grad()
  text = str(jax.make_jaxpr(lambda v: model.apply(v, x, train=True, mutable=['batch_stats']))(
      variables))
  assert 'reduce_precision' in text and 'concatenate' in text  # both lowerings were used
  monkeypatch.setattr(xla_conv, 'TINY_SIDE', 0)
  monkeypatch.setattr(xla_conv, 'MIN_EIGEN_IN_CHANNELS', 10 ** 9)
  plain = loss_and_grad()
  np.testing.assert_allclose(fast[0], plain[0], rtol=1e-5)
  for a, b in zip(jax.tree_util.tree_leaves(fast[1]), jax.tree_util.tree_leaves(plain[1])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
