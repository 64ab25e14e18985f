"""analysis/attack.py: FGSM and PGD stay in their eps-balls and in [0, 1], do nothing at eps 0,
break an undefended net, and behave as attacks must (restarts, targets, bad settings)."""

import jax.numpy as jnp
import numpy as np
import pytest

from analysis import attack  # noqa: E402  (conftest puts the repository on sys.path)
from errors import UserError  # noqa: E402


@pytest.fixture(scope='module')
def target(small_trained_net):
  _, net, v, x, y = small_trained_net
  return attack.logits01(net, v), x / 255.0, y


@pytest.mark.parametrize('norm,eps', [('linf', 8 / 255), ('l2', 0.5)])
def test_adversarials_stay_in_the_ball_and_the_valid_range(target, norm, eps):
  f, x, y = target
  xs = {'pgd': attack.pgd(f, x, y, eps, norm, steps=5, restarts=2)}
  if norm == 'linf':
    xs['fgsm'] = attack.fgsm(f, x, y, eps)
  for name, xa in xs.items():
    d = np.asarray(xa - x).reshape(len(x), -1)
    size = np.abs(d).max(1) if norm == 'linf' else np.linalg.norm(d, axis=1)
    assert (size <= eps + 1e-6).all(), name
    assert float(xa.min()) >= 0 and float(xa.max()) <= 1, name


def test_eps_zero_returns_the_inputs_and_the_clean_accuracy(target):
  f, x, y = target
  for norm in attack.NORMS:
    xa = attack.pgd(f, x, y, 0.0, norm, steps=3)
    np.testing.assert_array_equal(np.asarray(xa), np.asarray(x))
    assert attack.accuracy(f, xa, y) == attack.accuracy(f, x, y)
  np.testing.assert_array_equal(np.asarray(attack.fgsm(f, x, y, 0.0)), np.asarray(x))


def test_pgd_breaks_an_undefended_net_and_restarts_never_help_it(target):
  f, x, y = target
  clean = attack.accuracy(f, x, y)
  accs = [attack.accuracy(f, attack.pgd(f, x, y, 16 / 255, steps=10, restarts=r), y)
          for r in (1, 3)]
  assert clean >= 0.35 and accs[0] <= clean - 0.3, (clean, accs)  # chance is 0.1
  assert accs[1] <= accs[0]
  margin = attack.accuracy(f, attack.pgd(f, x, y, 16 / 255, steps=10, loss='margin'), y)
  assert margin <= clean - 0.3


def test_targeted_pgd_raises_the_target_rate(target):
  f, x, y = target
  goal = (y + 1) % 10
  before = float(jnp.mean(jnp.argmax(f(x), -1) == goal))
  xa = attack.pgd(f, x, goal, 32 / 255, steps=20, targeted=True)
  after = float(jnp.mean(jnp.argmax(f(xa), -1) == goal))
  assert after >= before + 0.4, (before, after)


def test_bad_settings_fail_with_one_line(target):
  f, x, y = target
  for kwargs, message in (({'eps': -0.1}, 'eps must be >= 0'), ({'norm': 'l1'}, 'unknown norm'),
                          ({'loss': 'hinge'}, 'unknown attack loss'),
                          ({'steps': 0}, 'must be positive')):
    args = {'eps': 0.1, **kwargs}
    with pytest.raises(UserError, match=message):
      attack.pgd(f, x, y, **args)
