"""Distribution shift: the corruptions' contract and `--mode=shift` end to end."""

import json
import os

import jax
import numpy as np
import pytest

from conftest import run_main

from analysis import shift
from errors import UserError


def _images(shape, n=6, seed=0):
  """Smooth random images with a bright object on a dark background, in [0, 1]."""
  rng = np.random.default_rng(seed)
  h, w, c = shape
  yy, xx = np.mgrid[:h, :w] / max(h, w)
  out = []
  for _ in range(n):
    cy, cx, r = rng.uniform(0.3, 0.7, 2).tolist() + [rng.uniform(0.15, 0.3)]
    blob = ((yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2).astype(np.float32)
    texture = 0.6 + 0.3 * np.sin(rng.uniform(5, 15) * xx + rng.uniform(0, 6))
    out.append((blob * texture)[..., None] * rng.uniform(0.7, 1.0, c))
  return np.stack(out).astype(np.float32)


@pytest.mark.parametrize('shape', [(28, 28, 1), (32, 32, 3)])
@pytest.mark.parametrize('name', shift.CORRUPTIONS)
def test_corruption_contract(name, shape):
  x = _images(shape)
  key = jax.random.key(3)
  assert np.array_equal(shift.corrupt(x, name, 0, key), x)  # severity 0 = the clean image
  distances = []
  for s in shift.SEVERITIES:
    y = shift.corrupt(x, name, s, key)
    assert y.shape == x.shape and y.dtype == np.float32 and y.min() >= 0 and y.max() <= 1
    assert np.array_equal(y, shift.corrupt(x, name, s, key))  # deterministic for a key
    distances.append(float(np.sqrt(((y - x) ** 2).sum(axis=(1, 2, 3))).mean()))
  assert distances[0] > 0 and all(a < b for a, b in zip(distances, distances[1:])), distances
  if name in ('gaussian_noise', 'shot_noise', 'impulse_noise', 'rotation', 'elastic'):
    assert not np.array_equal(shift.corrupt(x, name, 3, key),
                              shift.corrupt(x, name, 3, jax.random.key(4)))


def test_corruption_errors_follow_the_protocol():
  acc = {'a': {1: 0.8, 2: 0.6}, 'b': {1: 0.9, 2: 0.85}}
  ref = {'a': {1: 0.6, 2: 0.2}, 'b': {1: 0.8, 2: 0.8}}
  e = shift.corruption_errors(acc, 0.95, ref, 0.9)
  # CE_a = (0.2 + 0.4) / (0.4 + 0.8), CE_b = 0.25 / 0.4; relative CE subtracts the clean errors:
  # a (0.15 + 0.35) / (0.3 + 0.7), b (0.05 + 0.1) / (0.1 + 0.1)
  assert e['ce']['a'] == pytest.approx(50.0) and e['ce']['b'] == pytest.approx(62.5)
  assert e['relative_ce']['a'] == pytest.approx(50.0) and e['relative_ce']['b'] == pytest.approx(75.0)
  assert e['mce'] == pytest.approx(56.25)
  assert e['relative_mce'] == pytest.approx(62.5)


def test_bad_corruptions_and_severities_fail_with_one_line(small_trained_net):
  with pytest.raises(UserError, match='unknown corruption'):
    shift.check(['fog'], [1])
  with pytest.raises(UserError, match='outside 1-5'):
    shift.check(['jpeg'], [6])
  workdir = small_trained_net[0]
  for flag, message in (('--shift_corruptions=fog', "error: unknown corruption 'fog'"),
                        ('--shift_severities=0,3', 'error: severity 0 is outside 1-5'),
                        ('--shift_severities=x', 'error: --shift_severities must be'),
                        ('--shift_reference=/nonexistent', 'error: --shift_reference /nonexistent is not')):
    proc = run_main(['--mode=shift', f'--workdir={workdir}', flag], check=False)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith(message), proc.stderr[-800:]
  assert not os.path.exists(os.path.join(workdir, 'shift', 'results.json'))


def test_shift_mode_writes_the_table_and_mce_against_a_reference(small_trained_net):
  workdir = small_trained_net[0]
  proc = run_main(['--mode=shift', f'--workdir={workdir}', '--shift_corruptions=gaussian_noise,contrast',
                   '--shift_severities=1,5', f'--shift_reference={workdir}'])
  r = json.load(open(os.path.join(workdir, 'shift', 'results.json')))
  assert set(r['corruptions']) == {'gaussian_noise', 'contrast'} and r['severities'] == [1, 5]
  assert 0 < r['clean_accuracy'] <= 1 and r['num_examples'] == 64
  noise = r['corruptions']['gaussian_noise']['accuracy']
  assert set(noise) == {'1', '5'} and noise['5'] <= r['clean_accuracy']
  assert r['mce'] == pytest.approx(100.0)  # a run against itself
  assert r['reference']['clean_accuracy'] == r['clean_accuracy']
  for f in ('results.md', 'examples.png', 'accuracy_vs_severity.png'):
    assert os.path.exists(os.path.join(workdir, 'shift', f))
  assert 'mCE 100.0' in proc.stdout and '| contrast |' in open(os.path.join(workdir, 'shift', 'results.md')).read()
