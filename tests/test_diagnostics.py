"""Per-layer training diagnostics: exact on hand-set pre-activations, invisible to training."""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import flat_leaves, load_state, overrides, run_main

from train import diagnostics


class _Block(nn.Module):
  bias: tuple

  @nn.compact
  def __call__(self, x):
    conv = nn.Conv(len(self.bias), (3, 3), kernel_init=nn.initializers.zeros,
                   bias_init=lambda *_: jnp.asarray(self.bias))
    return nn.relu(conv(x))


class _Net(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = _Block((-1.0, 2.0, -0.5, 0.0, 1e-3))(x)  # zero kernel: pre-activation = the bias
    return nn.Dense(3)(x.mean(axis=(1, 2)))


def test_dead_fraction_is_exact_on_hand_set_pre_activations():
  x = jax.random.normal(jax.random.key(0), (6, 5, 5, 2))
  net = _Net()
  variables = net.init(jax.random.key(1), x)
  store, interceptor = diagnostics.capture(['_Block_0', 'Dense_0'])
  with nn.intercept_methods(interceptor):
    net.apply(variables, x)
  assert set(store) == {'_Block_0', 'Dense_0'}
  # Channels with bias -1, -0.5 and 0 are <= 0 everywhere: 3 of 5 dead.
  assert float(diagnostics.dead_fraction(store['_Block_0'])) == pytest.approx(0.6, abs=1e-7)
  # A unit alive at a single position of a single example is alive.
  a = jnp.zeros((4, 3, 3, 2)).at[2, 1, 0, 1].set(0.1)
  assert float(diagnostics.dead_fraction(a)) == 0.5


def test_diagnostics_leave_the_trajectory_bitwise_unchanged(tmp_path):
  args = overrides(num_train_steps=8, log_every_steps=2)
  off, on = str(tmp_path / 'off'), str(tmp_path / 'on')
  run_main([f'--workdir={off}', *args])
  run_main([f'--workdir={on}', *args, '--config.diagnostics.enabled=True',
            '--config.diagnostics.every_steps=3'])
  r_off = json.load(open(os.path.join(off, 'results.json')))
  r_on = json.load(open(os.path.join(on, 'results.json')))
  untimed = lambda r: [{k: v for k, v in h.items() if k != 'time_s'} for h in r['history']]
  assert r_off['train_log'] == r_on['train_log'] and untimed(r_off) == untimed(r_on)
  a, b = flat_leaves(load_state(off)), flat_leaves(load_state(on))
  assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
  d = r_on['diagnostics']
  assert r_off['diagnostics'] is None and d['steps'] == [0, 3, 6] and d['every_steps'] == 3
  assert d['layers'][-1] == 'Dense_0' and d['dead_fraction']['Dense_0'] == [None] * 3
  for stat in diagnostics.STATS[1:]:
    assert all(len(d[stat][n]) == 3 and all(np.isfinite(d[stat][n])) for n in d['layers'])
  assert all(0 <= v <= 1 for v in d['dead_fraction'][d['layers'][0]])
  assert os.path.exists(os.path.join(on, 'diagnostics.png'))


def test_diagnostics_interval_must_be_positive(tmp_path):
  proc = run_main([f'--workdir={tmp_path}/w', *overrides(), '--config.diagnostics.enabled=True',
                   '--config.diagnostics.every_steps=0'], check=False)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1] == (
      'error: diagnostics.every_steps must be a positive number of steps, got 0')
  assert not os.path.exists(f'{tmp_path}/w/checkpoints')


def _study_trial(root, name, config, results=None, error=''):
  d = os.path.join(root, 'trials', name)
  os.makedirs(d)
  json.dump({'name': name, 'config': config}, open(os.path.join(d, 'trial.json'), 'w'))
  json.dump({'state': 'failed', 'error': error} if error else {'state': 'done'},
            open(os.path.join(d, 'status.json'), 'w'))
  if results is not None:
    json.dump({'config': config, **results}, open(os.path.join(d, 'results.json'), 'w'))


def test_study_report_counts_divergence_and_reads_the_fixed_step(tmp_path):
  import sys
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), 'scripts'))
  import diagnostics_report as report

  def diag(dead, first):  # two convs and a head, diagnostics at steps 50 and 100
    return {'steps': [50, 100], 'layers': ['c0', 'c1', 'head'],
            'dead_fraction': {'c0': [0.9, dead], 'c1': [0.9, 0.0], 'head': [0.0, 0.0]},
            'grad_norm': {'c0': [9.0, first], 'c1': [9.0, 1.0], 'head': [9.0, 0.5]}}
  for seed, (acc, dead, first) in enumerate([(0.5, 0.2, 1e-2), (0.7, 0.4, 1e-4)]):
    _study_trial(tmp_path, f'vgg16plain_none_he_relu_seed={seed}', {'seed': seed},
                 {'test_accuracy': acc, 'diagnostics': diag(dead, first)})
  _study_trial(tmp_path, 'vgg16plain_none_he_relu_seed=2', {'seed': 2},
               error='loss became non-finite at step 35')
  _study_trial(tmp_path, 'vgg16plain_none_he_tanh_seed=0', {'seed': 0}, error='out of memory')
  _study_trial(tmp_path, 'simplenet13_batch_he_relu_seed=0', {'seed': 0},
               {'test_accuracy': 0.9, 'diagnostics': diag(0.0, 0.0)})
  rows = report.gather(str(tmp_path), step=100)
  # the study's order: simplenet13 first; a failure other than divergence is left out
  assert [(r['net'], r['activation']) for r in rows] == [('simplenet13', 'relu'), ('vgg16plain', 'relu')]
  r = rows[1]
  assert r['runs'] == 3 and r['diverged'] == 1 and r['accuracies'] == [50.0, 70.0]
  assert r['mean'] == pytest.approx(60.0) and r['sd'] == pytest.approx(np.std([50, 70], ddof=1))
  assert r['dead_percent'] == pytest.approx(np.mean([10.0, 20.0]))  # convs only, at step 100
  assert r['grad_norm_first'] == pytest.approx(1e-3) and r['grad_norm_head'] == pytest.approx(0.5)
  assert rows[0]['grad_norm_first'] == 0.0  # an exactly zero gradient stays zero
  assert '| vgg16plain | none | he | relu | 60.00 ± 14.14 | 1/3 | 15 |' in report.markdown(rows, 100)
  report.plot(rows, str(tmp_path / 'study.png'), 100)
  assert os.path.getsize(tmp_path / 'study.png') > 0
