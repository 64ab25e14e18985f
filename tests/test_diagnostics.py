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
