"""oneDNN convolutions (kernels/onednn.py): the same numbers as XLA's, in every pass."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from conftest import REPO, assert_losses_track, load_results, overrides, run_main


from errors import UserError  # noqa: E402  (conftest puts the repository on sys.path)
from kernels import convolutions, onednn  # noqa: E402

pytestmark = pytest.mark.skipif(
    onednn.load_error() is not None and not os.environ.get('CI'),
    reason=f'oneDNN kernels not built: {onednn.load_error()}')


@pytest.fixture
def use_onednn():
  assert onednn.load_error() is None


def _dnums(nd):
  spatial = 'DHW'[3 - nd:]
  return (f'N{spatial}C', f'{spatial}IO', f'N{spatial}C')


# (input shape, kernel shape, strides, padding, kernel dilation)
GEOMETRIES = [
    ((3, 9, 10, 3), (3, 3, 3, 8), (1, 1), 'SAME', (1, 1)),          # SimpleNet's 3x3, RGB in
    ((2, 11, 9, 5), (3, 2, 5, 7), (2, 1), [(1, 2), (0, 1)], (1, 2)),  # strided, asymmetric, dilated
    ((3, 8, 8, 16), (1, 1, 16, 4), (1, 1), 'VALID', (1, 1)),        # 1x1
    ((2, 7, 7, 4), (4, 4, 4, 6), (2, 2), 'SAME', (1, 1)),           # even kernel, SAME
    ((2, 13, 6), (5, 6, 3), (3,), [(2, 2)], (1,)),                   # 1-D
    ((1, 5, 6, 7, 2), (3, 3, 3, 2, 4), (1, 2, 1), 'SAME', (1, 1, 1)),  # 3-D
]


@pytest.mark.parametrize('xs,ks,strides,padding,dilation', GEOMETRIES)
def test_forward_and_both_gradients_match_xla(use_onednn, xs, ks, strides, padding, dilation):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=xs), jnp.float32)
  k = jnp.asarray(rng.normal(size=ks), jnp.float32)
  dn = lax.conv_dimension_numbers(xs, ks, _dnums(len(xs) - 2))

  def loss(conv):
    def f(x, k):
      y = conv(x, k, strides, padding, rhs_dilation=dilation, dimension_numbers=dn)
      return jnp.sum(jnp.sin(y)), y  # a non-trivial output gradient
    return jax.jit(jax.grad(f, argnums=(0, 1), has_aux=True))

  (dx0, dk0), y0 = loss(lax.conv_general_dilated)(x, k)
  (dx1, dk1), y1 = loss(onednn.conv_general_dilated)(x, k)
  assert 'onednn_conv_fwd' in str(jax.jit(loss(onednn.conv_general_dilated)).lower(x, k).as_text())
  for a, b in ((y0, y1), (dx0, dx1), (dk0, dk1)):
    assert a.shape == b.shape
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4 * float(jnp.abs(a).max()))


# Layers conv_algorithm='auto' sends to Winograd: f32, 3x3, stride 1, >= 16 channels, >= 4x4.
WINOGRAD = [((2, 8, 8, 16), (3, 3, 16, 32), 'SAME'), ((3, 9, 7, 32), (3, 3, 32, 16), 'VALID')]


@pytest.mark.parametrize('xs,ks,padding', WINOGRAD)
def test_winograd_layers_match_xla_in_every_pass(xs, ks, padding):
  """Winograd (oneDNN's, where the CPU has it; direct elsewhere) gives XLA's numbers to float
  rounding, like the direct algorithm."""
  assert onednn.wants_winograd(xs, ks, jnp.float32, (1, 1), (1, 1))
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(size=xs), jnp.float32)
  k = jnp.asarray(rng.normal(size=ks) / np.sqrt(9 * ks[2]), jnp.float32)
  dn = lax.conv_dimension_numbers(xs, ks, ('NHWC', 'HWIO', 'NHWC'))

  def passes(conv):
    def f(x, k):
      y = conv(x, k, (1, 1), padding, dimension_numbers=dn)
      return jnp.sum(jnp.sin(y)), y
    (dx, dk), y = jax.jit(jax.grad(f, argnums=(0, 1), has_aux=True))(x, k)
    return y, dx, dk

  reference = passes(lax.conv_general_dilated)
  for algorithm in ('auto', 'direct'):
    conv = convolutions.select('onednn', algorithm).train
    for a, b in zip(reference, passes(conv)):
      np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5 * float(jnp.abs(a).max()))


def test_winograd_kernels_run_where_the_cpu_has_them():
  """ONEDNN_VERBOSE names the kernels: Winograd ones with conv_algorithm=auto on an AVX-512
  CPU, never with direct; elsewhere auto falls back to direct kernels."""
  script = (
      'import sys; sys.path.insert(0, "."); import jax, jax.numpy as jnp\n'
      'from kernels import convolutions\n'
      'conv = convolutions.select("onednn", sys.argv[1]).train\n'
      'x = jnp.ones((2, 8, 8, 16)); k = jnp.ones((3, 3, 16, 16))\n'
      'f = lambda x, k: jnp.sum(conv(x, k, (1, 1), "SAME", '
      'dimension_numbers=("NHWC", "HWIO", "NHWC")) ** 2)\n'
      'print(jax.grad(f, argnums=(0, 1))(x, k)[1].sum())\n')
  out = {}
  for algorithm in ('auto', 'direct'):
    proc = subprocess.run([sys.executable, '-c', script, algorithm], cwd=REPO, text=True,
                          capture_output=True, env={**os.environ, 'ONEDNN_VERBOSE': '1'},
                          check=True, timeout=120)
    out[algorithm] = [l for l in proc.stdout.splitlines() if ',convolution,' in l]
    assert len(out[algorithm]) >= 3, proc.stdout  # forward, backward data, backward weights
  assert not any('wino' in l for l in out['direct'])
  if onednn.cpu_has_avx512():
    assert all('wino' in l for l in out['auto']), out['auto']


def test_calls_oneDNN_cannot_serve_fall_through_to_xla(use_onednn):
  x = jnp.ones((2, 6, 6, 4), jnp.float32)
  k = jnp.ones((3, 3, 2, 8), jnp.float32)
  dn = lax.conv_dimension_numbers(x.shape, k.shape, ('NHWC', 'HWIO', 'NHWC'))
  grouped = lambda x, k: onednn.conv_general_dilated(x, k, (1, 1), 'SAME', dimension_numbers=dn,
                                                     feature_group_count=2)
  widened = lambda x, k: onednn.conv_general_dilated(  # bf16 in, f32 out
      x.astype(jnp.bfloat16), k[:, :, :1].repeat(4, 2).astype(jnp.bfloat16), (1, 1), 'SAME',
      dimension_numbers=dn, preferred_element_type=jnp.float32)
  for f in (grouped, widened):
    assert 'onednn_conv' not in jax.jit(f).lower(x, k).as_text()
  np.testing.assert_allclose(
      grouped(x, k), lax.conv_general_dilated(x, k, (1, 1), 'SAME', dimension_numbers=dn,
                                              feature_group_count=2))


def test_bf16_convolutions_go_to_onednn_where_the_cpu_has_them(use_onednn):
  """bf16 (`--config.dtype=bfloat16`) runs on oneDNN's bf16 kernels (AMX / AVX512-BF16) when
  the CPU has them, with XLA's bf16 numbers to bf16 precision; elsewhere it stays on XLA."""
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(4, 10, 10, 16)), jnp.bfloat16)
  k = jnp.asarray(rng.normal(size=(3, 3, 16, 24)) / 12, jnp.bfloat16)
  dn = lax.conv_dimension_numbers(x.shape, k.shape, ('NHWC', 'HWIO', 'NHWC'))

  def loss(conv):
    def f(x, k):
      y = conv(x, k, (1, 1), 'SAME', dimension_numbers=dn)
      return jnp.sum(jnp.sin(y.astype(jnp.float32))), y
    return jax.jit(jax.grad(f, argnums=(0, 1), has_aux=True))

  text = jax.jit(loss(onednn.conv_general_dilated)).lower(x, k).as_text()
  if not onednn.supports_bf16():
    assert 'onednn_conv' not in text
    pytest.skip('this CPU has no oneDNN bf16 convolutions (they need AVX-512)')
  assert 'onednn_conv_fwd' in text and 'onednn_conv_bwd_weights' in text
  (dx0, dk0), y0 = loss(lax.conv_general_dilated)(x, k)
  (dx1, dk1), y1 = loss(onednn.conv_general_dilated)(x, k)
  for a, b in ((y0, y1), (dx0, dx1), (dk0, dk1)):
    assert a.dtype == b.dtype == jnp.bfloat16 and a.shape == b.shape
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    np.testing.assert_allclose(b, a, rtol=2e-2, atol=2e-2 * float(np.abs(a).max()))


def test_select_rules(monkeypatch):
  assert convolutions.select('xla') == convolutions.XLA
  assert convolutions.select('xla').algorithm is None
  # This test process has one CPU device: auto follows the CPU, onednn insists.
  assert convolutions.select('auto').impl == ('onednn' if onednn.cpu_has_avx512() else 'xla')
  for avx512, expected in ((True, 'onednn'), (False, 'xla')):
    monkeypatch.setattr(onednn, 'cpu_has_avx512', lambda: avx512)
    assert convolutions.select('auto').impl == expected
    assert convolutions.select('onednn').impl == 'onednn'
  with pytest.raises(UserError, match='unknown conv_impl'):
    convolutions.select('cudnn')
  with pytest.raises(UserError, match='unknown conv_algorithm'):
    convolutions.select('onednn', 'fft')
  assert convolutions.select('onednn', 'direct').algorithm == 'direct'
  for xs, ks, dtype, strides in (((2, 8, 8, 3), (3, 3, 3, 16), jnp.float32, (1, 1)),  # RGB stem
                                 ((2, 8, 8, 16), (1, 1, 16, 16), jnp.float32, (1, 1)),  # 1x1
                                 ((2, 8, 8, 16), (3, 3, 16, 16), jnp.float32, (2, 2)),  # strided
                                 ((2, 2, 2, 16), (3, 3, 16, 16), jnp.float32, (1, 1)),  # 2x2 map
                                 ((2, 8, 8, 16), (3, 3, 16, 16), jnp.bfloat16, (1, 1))):
    assert not onednn.wants_winograd(xs, ks, dtype, strides, (1, 1))
  # The choice reaches a model as its attribute: its jaxpr calls oneDNN only when asked to.
  import models
  from configs import common
  cfg = common.model_config('simplenet')
  cfg.layers = '16,p,16'
  x = jnp.zeros((1, 8, 8, 16))
  for convs, expected in ((None, False), (convolutions.XLA, False),
                          (convolutions.Convolutions('onednn', 'auto'), True)):
    model = models.create(cfg, 10, convolutions=convs)
    v = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
    text = str(jax.make_jaxpr(lambda v: model.apply(v, x))(v))
    assert ('onednn_conv' in text) == expected, convs


def test_compiler_options_drop_only_ynn_elementwise_fusions_and_only_with_onednn(monkeypatch):
  flag = '--xla_cpu_experimental_ynn_fusion_type='
  monkeypatch.setenv('XLA_FLAGS', f'--foo {flag}LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_ELTWISE')
  mine = convolutions.Convolutions('onednn', 'auto')
  assert convolutions.XLA.compiler_options() is None
  assert mine.compiler_options() == {'xla_cpu_experimental_ynn_fusion_type': 'LIBRARY_FUSION_TYPE_DOT'}
  monkeypatch.setenv('XLA_FLAGS', f'{flag}LIBRARY_FUSION_TYPE_DOT')  # a user's choice stays
  assert mine.compiler_options() is None
  monkeypatch.setenv('XLA_FLAGS', '')
  assert mine.compiler_options() is None


@pytest.mark.parametrize('dtype,rtol,compared', [('float32', 1e-4, None), ('bfloat16', 3e-2, 4)])
def test_training_with_onednn_convolutions_matches_xla(tmp_path, dtype, rtol, compared):
  if dtype == 'bfloat16' and not onednn.supports_bf16():
    pytest.skip('this CPU has no oneDNN bf16 convolutions (they need AVX-512)')
  runs = {}
  for impl in ('xla', 'onednn'):
    workdir = str(tmp_path / impl)
    run_main([f'--workdir={workdir}', *overrides(num_train_steps=10, conv_impl=impl,
                                                 dtype=dtype)])
    runs[impl] = load_results(workdir)
  assert runs['onednn']['conv_impl'] == 'onednn' and runs['xla']['conv_impl'] == 'xla'
  assert runs['onednn']['conv_algorithm'] == 'auto' and runs['xla']['conv_algorithm'] is None
  assert 'ELTWISE' not in runs['onednn']['xla_compiler_options'][
      'xla_cpu_experimental_ynn_fusion_type']
  a = np.array([l for _, l, _ in runs['xla']['train_log']])
  b = np.array([l for _, l, _ in runs['onednn']['train_log']])
  assert_losses_track(b, a, rtol, compared)  # bf16: the first 4 logged steps


def test_onednn_refused_with_several_devices_and_auto_falls_back(tmp_path):
  proc = run_main([f'--workdir={tmp_path / "a"}', *overrides(conv_impl='onednn', batch_size=16)],
                  devices=2, check=False)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1].startswith('error: conv_impl=onednn is unavailable')
  assert not os.path.exists(tmp_path / 'a' / 'checkpoints')
  workdir = str(tmp_path / 'b')
  run_main([f'--workdir={workdir}', *overrides(num_train_steps=2, conv_impl='auto')], devices=2)
  assert load_results(workdir)['conv_impl'] == 'xla'


def test_benchmark_counts_flops_of_onednn_convolutions(tmp_path):
  flops = {}
  for impl in ('xla', 'onednn'):
    workdir = str(tmp_path / impl)
    run_main([f'--workdir={workdir}', '--mode=benchmark', '--benchmark_steps=2',
              *overrides(conv_impl=impl)])
    with open(os.path.join(workdir, 'benchmark.json')) as f:
      b = json.load(f)
    assert b['conv_impl'] == impl
    flops[impl] = b['flops_per_step']
  assert flops['onednn'] == pytest.approx(flops['xla'], rel=0.05)
