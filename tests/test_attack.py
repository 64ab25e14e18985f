"""attacks/ and --mode=attack: every attack stays in its eps-ball and in [0, 1], does
nothing at eps 0, breaks an undefended net and behaves as attacks must (restarts, targets,
APGD against PGD, fewer than 10 classes); adversarial training helps; bad settings fail early."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attacks  # noqa: E402  (conftest puts the repository on sys.path)
from conftest import load_results, overrides, run_main
from errors import UserError  # noqa: E402


@pytest.fixture(scope='module')
def target(small_trained_net):
  _, net, v, x, y = small_trained_net
  return net.logits01(v), x / 255.0, y


@pytest.mark.parametrize('norm,eps', [('linf', 8 / 255), ('l2', 0.5)])
def test_adversarials_stay_in_the_ball_and_the_valid_range(target, norm, eps):
  f, x, y = target
  xs = {'pgd': attacks.pgd(f, x, y, eps, norm, steps=5, restarts=2)}
  if norm == 'linf':
    xs['fgsm'] = attacks.fgsm(f, x, y, eps)
  for name, xa in xs.items():
    d = np.asarray(xa - x).reshape(len(x), -1)
    size = np.abs(d).max(1) if norm == 'linf' else np.linalg.norm(d, axis=1)
    assert (size <= eps + 1e-6).all(), name
    assert float(xa.min()) >= 0 and float(xa.max()) <= 1, name


def test_eps_zero_returns_the_inputs_and_the_clean_accuracy(target):
  f, x, y = target
  for norm in attacks.NORMS:
    xa = attacks.pgd(f, x, y, 0.0, norm, steps=3)
    np.testing.assert_array_equal(np.asarray(xa), np.asarray(x))
    assert attacks.accuracy(f, xa, y) == attacks.accuracy(f, x, y)
  np.testing.assert_array_equal(np.asarray(attacks.fgsm(f, x, y, 0.0)), np.asarray(x))


def test_pgd_breaks_an_undefended_net_and_restarts_never_help_it(target):
  f, x, y = target
  clean = attacks.accuracy(f, x, y)
  accs = [attacks.accuracy(f, attacks.pgd(f, x, y, 16 / 255, steps=10, restarts=r), y)
          for r in (1, 3)]
  assert clean >= 0.35 and accs[0] <= clean - 0.3, (clean, accs)  # chance is 0.1
  assert accs[1] <= accs[0]
  margin = attacks.accuracy(f, attacks.pgd(f, x, y, 16 / 255, steps=10, loss='margin'), y)
  assert margin <= clean - 0.3


def test_targeted_pgd_raises_the_target_rate(target):
  f, x, y = target
  goal = (y + 1) % 10
  before = float(jnp.mean(jnp.argmax(f(x), -1) == goal))
  xa = attacks.pgd(f, x, goal, 32 / 255, steps=20, targeted=True)
  after = float(jnp.mean(jnp.argmax(f(xa), -1) == goal))
  assert after >= before + 0.4, (before, after)


def test_bad_settings_fail_with_one_line(target):
  f, x, y = target
  for kwargs, message in (({'eps': -0.1}, 'eps must be >= 0'), ({'norm': 'l1'}, 'unknown norm'),
                          ({'loss': 'hinge'}, 'unknown attack loss'),
                          ({'steps': 0}, 'must be positive')):
    args = {'eps': 0.1, **kwargs}
    with pytest.raises(UserError, match=message):
      attacks.pgd(f, x, y, **args)


def _sizes(x, xa, norm):
  d = np.asarray(xa - x).reshape(len(x), -1)
  return np.abs(d).max(1) if norm == 'linf' else np.linalg.norm(d, axis=1)


@pytest.mark.parametrize('norm,eps', [('linf', 8 / 255), ('l2', 0.5)])
def test_apgd_and_square_stay_in_the_ball_and_do_nothing_at_eps_zero(target, norm, eps):
  f, x, y = target
  xs = {'apgd_ce': attacks.apgd(f, x, y, eps, norm, steps=10)[0],
        'apgd_t': attacks.apgd(f, x, y, eps, norm, steps=10, targets=(y + 1) % 10)[0]}
  if norm == 'linf':
    xs['square'] = attacks.square_linf(f, x, y, eps, queries=30)[0]
  for name, xa in xs.items():
    assert (_sizes(x, xa, norm) <= eps + 1e-6).all(), name
    assert float(xa.min()) >= 0 and float(xa.max()) <= 1, name
  np.testing.assert_array_equal(np.asarray(attacks.apgd(f, x, y, 0.0, norm, steps=5)[0]),
                                np.asarray(x))
  if norm == 'linf':
    xa, broken, used = attacks.square_linf(f, x, y, 0.0, queries=10)
    np.testing.assert_array_equal(np.asarray(xa), np.asarray(x))
    assert attacks.accuracy(f, xa, y) == attacks.accuracy(f, x, y)


def test_apgd_is_at_least_as_strong_as_pgd_at_the_same_budget(target):
  f, x, y = target
  for eps in (4 / 255, 8 / 255):
    pgd_acc = attacks.accuracy(f, attacks.pgd(f, x, y, eps, steps=50), y)
    xa, broken = attacks.apgd(f, x, y, eps, steps=50)
    apgd_acc = attacks.accuracy(f, xa, y)
    assert apgd_acc <= pgd_acc, (eps, apgd_acc, pgd_acc)
    # `broken` says exactly which returned points are misclassified.
    np.testing.assert_array_equal(np.asarray(broken),
                                  np.asarray(jnp.argmax(f(xa), -1) != y))


def test_apgd_targets_and_dlr_work_with_fewer_than_ten_classes():
  rng = np.random.default_rng(0)
  for classes in (2, 3, 4):
    w = jnp.asarray(rng.normal(size=(48, classes)), jnp.float32)
    f = lambda x: x.reshape(len(x), -1) @ w
    x = jnp.asarray(rng.uniform(size=(32, 4, 4, 3)), jnp.float32)
    y = jnp.argmax(f(x), -1)
    targets = attacks.apgd_target_classes(f(x), 9)
    assert targets.shape == (classes - 1, 32)
    assert not np.any(np.asarray(targets) == np.asarray(y)[None])
    for t in targets:
      assert np.isfinite(np.asarray(attacks.dlr_targeted(f(x), y, t))).all()
      xa, broken = attacks.apgd(f, x, y, 0.3, steps=10, targets=t)
      assert float(jnp.mean(broken)) > 0.5, classes  # a linear model is easy to break
    assert np.isfinite(np.asarray(attacks.dlr_loss(f(x), y))).all()


def test_square_attack_breaks_the_net_without_gradients_and_counts_queries(target):
  f, x, y = target
  clean_ok = np.asarray(jnp.argmax(f(x), -1) == y)
  xa, broken, used = attacks.square_linf(f, x, y, 32 / 255, queries=200)
  broken, used = np.asarray(broken), np.asarray(used)
  np.testing.assert_array_equal(broken, np.asarray(jnp.argmax(f(xa), -1) != y))
  assert broken[clean_ok].mean() >= 0.5
  assert used.max() <= 200 and (used[~clean_ok] == 1).all()  # already wrong: the start only
  assert (used[clean_ok & broken] < 200).all()


def test_adversarial_patch_beats_a_random_patch(target):
  f, x, y = target
  patch = attacks.train_patch(f, x, target=3, side=6, steps=150, batch=16)
  assert patch.shape == (6, 6, 1) and float(patch.min()) >= 0 and float(patch.max()) <= 1
  r, c = attacks.random_places(jax.random.key(1), len(x), x.shape[1:], 6)
  rate = lambda p: float(jnp.mean(jnp.argmax(f(attacks.apply_patch(x, p, r, c)), -1) == 3))
  assert rate(patch) >= rate(jnp.full_like(patch, 0.5)) + 0.3


ROBUST = ['--config.dataset.name=synthetic', '--config.dataset.image_shape=16,16,1',
          '--config.dataset.synthetic_size=512', '--config.model.layers=16,p,32,p,32',
          '--config.batch_size=32', '--config.num_train_steps=150', '--config.log_every_steps=50',
          '--config.optimizer.learning_rate=0.05', '--config.eval_batch_size=128',
          '--config.augment.flip=False', '--config.augment.crop_padding=0',
          '--config.adversarial.eps=0.1', '--config.adversarial.steps=3',
          '--config.adversarial.eval_eps=0.1', '--config.label_smoothing=0']


@pytest.fixture(scope='module')
def standard_and_robust(tmp_path_factory):
  root = tmp_path_factory.mktemp('adversarial')
  runs = {m: str(root / m) for m in ('none', 'pgd', 'trades')}
  for method, w in runs.items():
    run_main([f'--workdir={w}', *ROBUST, f'--config.adversarial.method={method}'])
  return runs


def test_adversarial_training_raises_robust_accuracy(standard_and_robust):
  res = {m: load_results(w) for m, w in standard_and_robust.items()}
  for r in res.values():
    assert r['robust_eval'] == {'attack': 'pgd', 'norm': 'linf', 'eps': 0.1, 'steps': 20,
                                'restarts': 1, 'num_examples': 128,
                                'trained_with': r['config']['adversarial']['method']}
    assert r['robust_accuracy'] == r['history'][-1]['test_robust_accuracy']
    assert os.listdir(os.path.join(standard_and_robust['none'], 'tensorboard'))
  assert res['none']['test_accuracy'] >= 0.9 and res['none']['robust_accuracy'] <= 0.2
  for method in ('pgd', 'trades'):
    assert res[method]['robust_accuracy'] >= res['none']['robust_accuracy'] + 0.5, res[method]


def test_fooling_images_reach_99_percent_confidence(standard_and_robust):
  # Without label smoothing (which bounds a net's confidence: docs/attack.md).
  from store import runs
  run = runs.load_run(standard_and_robust['none'])
  f = runs.Net(run.model, run.preprocess).logits01(run.variables)
  classes = jnp.tile(jnp.arange(10), 2)
  start = jnp.concatenate([jnp.asarray(np.random.default_rng(0).uniform(size=(10, 16, 16, 1)),
                                       jnp.float32), jnp.full((10, 16, 16, 1), 0.5)])
  imgs, conf, reached = attacks.fooling_images(f, start, classes, steps=200)
  reached, conf = np.asarray(reached), np.asarray(conf)
  assert (reached >= 0).all() and (conf >= 0.99).all(), (reached, conf)
  assert float(imgs.min()) >= 0 and float(imgs.max()) <= 1
  assert not np.allclose(np.asarray(imgs), np.asarray(start))


def test_attack_mode_writes_every_number_and_figure(small_trained_net, standard_and_robust):
  workdir = small_trained_net[0]
  proc = run_main(['--mode=attack', f'--workdir={workdir}', '--attack_examples=40',
                   '--attack_batch=20', '--attack_eps=4/255,0.1', '--attack_apgd_steps=10',
                   '--attack_square_queries=40', '--attack_fooling_steps=40',
                   '--attack_patch_steps=20', '--membership_examples=40',
                   f'--target_workdir={standard_and_robust["none"]}'])
  out = os.path.join(workdir, 'attack')
  r = json.load(open(os.path.join(out, 'results.json')))
  assert r['num_examples'] == 40 and 0 < r['clean_accuracy'] <= 1
  assert r['eps'] == pytest.approx([4 / 255, 0.1])
  names = {'fgsm', 'pgd', 'apgd_ce', 'apgd_t', 'worst_case_whitebox', 'square', 'worst_case'}
  for eps in r['eps']:
    rows = {row['attack']: row for row in r['attacks'] if row['eps'] == eps}
    assert set(rows) == names
    for row in rows.values():
      assert 0 <= row['robust_accuracy'] <= r['clean_accuracy'] + 1e-9
      assert row['mean_perturbation_norm'] is None or row['mean_perturbation_norm'] <= eps + 1e-6
    assert rows['worst_case_whitebox']['robust_accuracy'] == min(
        rows[a]['robust_accuracy'] for a in ('fgsm', 'pgd', 'apgd_t'))
    assert rows['apgd_t']['robust_accuracy'] <= rows['apgd_ce']['robust_accuracy']
    assert 1 <= rows['square']['queries'] <= 40 and rows['square']['query_budget'] == 40
    assert rows['worst_case']['robust_accuracy'] <= min(
        rows['worst_case_whitebox']['robust_accuracy'], rows['square']['robust_accuracy'])
  assert 0 <= r['transfer']['by_eps'][0]['transfer_rate'] <= 1
  assert r['fooling']['starts']['uniform_noise']['fraction_reached'] >= 0
  assert 0 <= r['patch']['success_rate'] <= 1 and r['patch']['side'] == 5
  assert 0 <= r['membership']['loss_threshold']['auc'] <= 1
  assert len(r['reconstruction']['layers']) == 2
  for name in ('results.md', 'examples.png', 'robustness.png', 'fooling.png', 'patch.png',
               'membership.png', 'reconstruction.png'):
    assert os.path.getsize(os.path.join(out, name)) > 0, name
  assert 'robust accuracy' in proc.stdout
  # Progress per part (not a terminal: log lines), the total time, and the page's section.
  for part in ('whitebox', 'blackbox', 'transfer', 'fooling', 'patch', 'membership',
               'reconstruction'):
    assert f'attack: {part} done in' in proc.stderr, part
  assert r['total_seconds'] > 0 and r['machine']['cores'] >= 1
  page = open(os.path.join(workdir, 'report.html')).read()
  assert '<section id="attack">' in page and 'the worst of every attack leaves' in page


def test_bad_attack_settings_fail_with_one_line_before_compiling(small_trained_net, tmp_path):
  workdir = small_trained_net[0]
  other = str(tmp_path / 'rgb')
  run_main([f'--workdir={other}', *overrides(num_train_steps=2)])  # 16x16x3 inputs
  cases = ((['--attack_eps=-0.1'], 'eps must be >= 0'), (['--attack_norm=l1'], 'unknown norm'),
           (['--attack_parts=whitebox,cw'], 'unknown attack part'),
           (['--attack_eps=0.1,abc'], '--attack_eps must be'),
           ([f'--target_workdir={other}'], 'same input shape'))
  before = sorted(os.listdir(workdir))
  for args, message in cases:
    proc = run_main(['--mode=attack', f'--workdir={workdir}', *args], check=False)
    errors = [l for l in proc.stderr.splitlines() if l.startswith('error:')]
    assert proc.returncode == 2 and len(errors) == 1 and message in errors[0], (args, errors)
    assert 'Traceback' not in proc.stderr and 'Compil' not in proc.stderr
  assert sorted(os.listdir(workdir)) == before
