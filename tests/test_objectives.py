"""Objectives and tasks as seams (train/objectives/, train/tasks.py): the capsule margin loss
against its formula and as a training objective chosen by config, and the one-line errors."""

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_results, overrides, run_main
from train.objectives import margin


def test_margin_loss_matches_sabour_et_al_eq_4():
  lengths = np.array([[0.95, 0.3, 0.05], [0.2, 0.85, 0.6]])
  labels = np.array([0, 2])
  want = []
  for v, t in zip(lengths, labels):
    total = 0.0
    for k, vk in enumerate(v):
      if k == t:
        total += max(0.0, 0.9 - vk) ** 2
      else:
        total += 0.5 * max(0.0, vk - 0.1) ** 2
    want.append(total)
  # Capsule outputs (N, classes, dim): the loss reads their lengths.
  capsules = jnp.asarray(lengths)[..., None] * jnp.asarray([0.6, 0.8])
  np.testing.assert_allclose(margin.margin_loss(capsules, jnp.asarray(labels)), want, rtol=1e-5)
  # Class scores: the lengths are their sigmoids.
  logits = jnp.log(jnp.asarray(lengths) / (1 - jnp.asarray(lengths)))
  np.testing.assert_allclose(margin.margin_loss(logits, jnp.asarray(labels)), want, rtol=1e-5)


def test_margin_objective_trains_a_classifier(tmp_path):
  w = str(tmp_path / 'margin')
  run_main([f'--workdir={w}', *overrides(objective='margin', num_train_steps=100,
                                         log_every_steps=20, label_smoothing=0.0)])
  r = load_results(w)
  losses = [loss for _, loss, _ in r['train_log']]
  assert r['config']['objective'] == 'margin' and np.isfinite(losses).all()
  assert losses[-1] < losses[0]
  assert r['test_accuracy'] > 0.25  # 10 classes: chance 0.1 (0.42 here; cross-entropy 0.34)


@pytest.mark.parametrize('changes,message', [
    ({'objective': 'hinge'}, "unknown objective 'hinge'; use cross_entropy | margin"),
    ({'task': 'detection'}, "unknown task 'detection'; use classification"),
    ({'objective': 'margin', 'distill__teacher': '/nonexistent'},
     'cannot be combined with objective=margin'),
])
def test_bad_objective_or_task_is_one_error_line(tmp_path, changes, message):
  proc = run_main([f'--workdir={tmp_path / "w"}', *overrides(**changes)], check=False)
  errors = [l for l in proc.stderr.splitlines() if l.startswith('error: ')]
  assert proc.returncode == 2 and len(errors) == 1 and message in errors[0], proc.stderr[-1500:]
  assert 'Traceback' not in proc.stderr
