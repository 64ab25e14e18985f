"""analysis/privacy.py: the ROC numbers against brute force, and membership inference that
finds an overfit model's members (loss threshold and calibrated by a disjoint reference run)
while two held-out halves look alike."""

import json
import os

import numpy as np
import pytest

from analysis import privacy  # noqa: E402  (conftest puts the repository on sys.path)
from conftest import run_main

EASY = ['--config.dataset.name=synthetic', '--config.dataset.image_shape=16,16,1',
        '--config.dataset.synthetic_size=512', '--config.model.layers=16,p,32,p,32',
        '--config.batch_size=32', '--config.log_every_steps=50', '--config.eval_batch_size=128',
        '--config.optimizer.learning_rate=0.05']


def test_auc_and_tpr_match_brute_force():
  rng = np.random.default_rng(0)
  members = np.round(rng.normal(1.0, 1.0, 300), 1)  # rounded: ties on purpose
  others = np.round(rng.normal(0.0, 1.0, 200), 1)
  pairs = members[:, None] - others[None, :]
  brute = ((pairs > 0).sum() + 0.5 * (pairs == 0).sum()) / pairs.size
  assert privacy.roc_auc(members, others) == pytest.approx(brute, abs=1e-12)
  t = privacy.tpr_at_fpr(members, others, 0.01)
  threshold = np.sort(others)[int(np.ceil(0.99 * (len(others) - 1)))]
  assert (others > threshold).mean() <= 0.01 and t == pytest.approx((members > threshold).mean())
  assert privacy.roc_auc(others, others) == pytest.approx(0.5)
  z = rng.normal(size=(50, 4))
  y = rng.integers(0, 4, 50)
  p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
  np.testing.assert_allclose(privacy.confidence_logit(z, y),
                             np.log(p[np.arange(50), y] / (1 - p[np.arange(50), y])), atol=1e-9)


@pytest.fixture(scope='module')
def overfit(tmp_path_factory):
  """A net trained long on 48 examples, and a reference run on 48 others."""
  root = tmp_path_factory.mktemp('privacy')
  target, ref = str(root / 'target'), str(root / 'ref')
  run_main([f'--workdir={target}', *EASY, '--config.dataset.train_size=48',
            '--config.num_train_steps=300', '--config.batch_size=16'])
  run_main([f'--workdir={ref}', *EASY, '--config.dataset.train_size=48',
            '--config.dataset.train_offset=256', '--config.num_train_steps=300',
            '--config.batch_size=16', '--config.seed=1'])
  return target, ref


def test_membership_auc_is_high_on_an_overfit_model_and_chance_on_held_out_halves(overfit):
  target, ref = overfit
  out = os.path.join(target, 'attack', 'results.json')
  run_main(['--mode=attack', f'--workdir={target}', '--attack_parts=membership',
            '--membership_examples=48', f'--membership_reference_workdirs={ref}'])
  m = json.load(open(out))['membership']
  # It classifies members and test examples alike well, but fits members' losses tighter.
  assert m['train_accuracy'] == 1.0 and m['train_size'] == 48
  assert m['loss_threshold']['auc'] > 0.7, m
  assert m['calibrated']['auc'] > 0.6 and m['calibrated']['references'] == 1, m
  # Two halves of the test split are both non-members: the attack cannot tell them apart.
  from store import runs
  run = runs.load_run(target)
  test = run.test_split()
  scores = privacy.loss_score(run.logits(test.images), test.labels)
  half = len(scores) // 2
  assert abs(privacy.roc_auc(scores[:half], scores[half:]) - 0.5) < 0.15


def test_a_reference_that_saw_the_targets_data_is_refused(overfit):
  target, _ = overfit
  proc = run_main(['--mode=attack', f'--workdir={target}', '--attack_parts=membership',
                   f'--membership_reference_workdirs={target}'], check=False)
  errors = [l for l in proc.stderr.splitlines() if l.startswith('error:')]
  assert proc.returncode == 2 and len(errors) == 1 and 'overlap' in errors[0], proc.stderr[-800:]
