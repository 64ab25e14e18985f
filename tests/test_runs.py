"""Trained runs as objects: load_run, `--mode=eval`, and the pieces analyses share."""

import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, load_results, overrides, run_main

from errors import UserError  # noqa: E402  (conftest puts the repository on sys.path)


def eval_cli(workdir, *args, devices: int = 1) -> subprocess.CompletedProcess:
  env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')
  return subprocess.run([sys.executable, 'main.py', '--mode=eval', f'--workdir={workdir}', *args],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """A finished tiny run (synthetic data, BatchNorm, flip TTA, EMA weights)."""
  workdir = str(tmp_path_factory.mktemp('runs') / 'tiny')
  run_main([f'--workdir={workdir}', *overrides(num_train_steps=24, ema_decay=0.5,
                                               eval_flip_tta=True)])
  return workdir


def test_eval_mode_reproduces_the_final_accuracy_exactly(trained):
  results = load_results(trained)
  for devices in (1, 4):  # any device count: every test example is counted once
    proc = eval_cli(trained, devices=devices)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(os.path.join(trained, 'eval.json')) as f:
      ev = json.load(f)
    assert ev['test_accuracy'] == results['test_accuracy']
    assert ev['test_loss'] == pytest.approx(results['test_loss'], rel=1e-5)
    assert (ev['step'], ev['num_examples']) == (24, 64)
    assert ev['evaluated_ema'] and ev['flip_tta']
    assert f'{100 * ev["test_accuracy"]:.2f}%' in proc.stdout


def test_load_run_gives_model_variables_preprocess_and_test_split(trained):
  from data import augment, datasets
  from store import runs
  run = runs.load_run(trained)
  results = load_results(trained)
  assert run.step == 24 and run.uses_ema and run.info.num_classes == 10
  assert run.dataset['name'] == 'synthetic' and run.dataset['num_test'] == 64
  # The statistics are the training set's, recorded, not recomputed.
  train = datasets.load_split(run.config.dataset, 'train')
  assert run.preprocess == augment.Preprocess.from_images(train.images)
  assert results['preprocess'] == run.preprocess.to_json()
  test = run.test_split()
  assert test.images.dtype == np.uint8 and len(test.labels) == 64
  logits = run.logits(test.images)
  mirrored = run.logits(test.images[:, :, ::-1])
  accuracy = float(np.mean(np.argmax(logits + mirrored, -1) == test.labels))
  assert accuracy == results['test_accuracy']
  with pytest.raises(UserError, match='no checkpoint of step 7'):
    runs.load_run(trained, step=7)
  from analysis import common
  images, labels, idx = common.test_examples(run, 8, seed=3)
  np.testing.assert_array_equal(images, test.images[idx])
  np.testing.assert_array_equal(idx, common.test_examples(run, 8, seed=3)[2])


def test_run_saved_before_preprocess_was_recorded_still_loads(trained, tmp_path):
  import shutil
  from store import checkpoints, runs
  old = str(tmp_path / 'old')
  shutil.copytree(trained, old)
  for path in glob.glob(os.path.join(old, 'checkpoints', '*', 'meta', '*')):
    try:
      with open(path) as f:
        meta = json.load(f)
    except (ValueError, UnicodeDecodeError):
      continue
    if isinstance(meta, dict) and 'run' in meta:
      del meta['run']
      with open(path, 'w') as f:
        json.dump(meta, f)
  assert 'run' not in checkpoints.load_meta(old)
  run, new = runs.load_run(old), runs.load_run(trained)
  assert run.preprocess == new.preprocess
  proc = eval_cli(old)
  assert proc.returncode == 0 and 'recomputing' in proc.stderr
  assert json.load(open(os.path.join(old, 'eval.json')))['test_accuracy'] == \
      load_results(trained)['test_accuracy']


def test_eval_of_a_workdir_without_checkpoints_is_one_error_line(tmp_path):
  for workdir in (tmp_path / 'nothing', tmp_path / 'configured'):
    os.makedirs(workdir, exist_ok=True)
  (tmp_path / 'configured' / 'config.json').write_text('{"dataset": {}}')
  for workdir, expected in ((tmp_path / 'nothing', 'config.json not found'),
                            (tmp_path / 'configured', 'no checkpoint')):
    proc = eval_cli(workdir)
    errors = [l for l in proc.stderr.splitlines() if l.startswith('error:')]
    assert proc.returncode == 2 and len(errors) == 1 and expected in errors[0], proc.stderr
    assert 'Traceback' not in proc.stderr
    assert not os.path.exists(workdir / 'eval.json')


def test_eval_sources_cover_every_example_once():
  import jax
  from data import datasets, sources
  from train import distributed
  mesh = distributed.mesh()
  split = datasets.Split(np.zeros((103, 4, 4, 1), np.uint8), np.arange(103, dtype=np.int32))
  for batch in (1, 10, 103, 500):
    source = sources.InMemoryEval(split, batch, mesh)
    seen = []
    for i in range(source.num_batches):
      _, labels, mask = jax.jit(source.batch)(source.step_inputs(i))
      seen += list(np.asarray(labels)[np.asarray(mask)])
    assert sorted(seen) == list(range(103)), batch


def test_train_source_batches_follow_the_epoch_permutation():
  import jax
  from data import datasets, sources
  from train import distributed
  split = datasets.Split(np.zeros((40, 2, 2, 1), np.uint8), np.arange(40, dtype=np.int32))
  source = sources.InMemoryTrain(split, 8, distributed.mesh(), jax.random.key(3))
  assert source.steps_per_epoch == 5
  epoch0 = [np.asarray(source.batch(source.step_inputs(s), s)[1]) for s in range(5)]
  assert sorted(np.concatenate(epoch0)) == list(range(40))  # one epoch = every example once
  again = np.asarray(source.batch(source.step_inputs(2), 2)[1])
  np.testing.assert_array_equal(again, epoch0[2])  # any step's batch, without replaying
  epoch1 = np.asarray(source.batch(source.step_inputs(5), 5)[1])
  assert not np.array_equal(epoch1, epoch0[0])


def test_augmentations_are_named_ops_in_config_order():
  import jax
  from configs import default
  from data import augment
  cfg = default.get_config().augment
  cfg.crop_padding, cfg.flip, cfg.cutout = 2, True, 3
  assert [op.name for op in augment.pipeline(cfg)] == ['crop', 'flip', 'cutout']
  cfg.crop_padding, cfg.cutout = 0, 0
  assert [op.name for op in augment.pipeline(cfg)] == ['flip']
  cfg.rrc_scale, cfg.vignetting, cfg.contrast, cfg.lens_distortion = '0.5,1', 0.3, 0.2, 0.1
  assert [op.name for op in augment.pipeline(cfg)] == [
      'resized_crop', 'flip', 'color', 'vignetting', 'lens_distortion']
  assert [op.name for op in augment.pipeline(cfg, skip=augment.HOST_OPS)][0] == 'flip'
  pre = augment.Preprocess((10.0,), (2.0,))
  x = np.full((4, 6, 6, 1), 12, np.uint8)
  out = np.asarray(augment.apply((), jax.random.key(0), x, pre))
  np.testing.assert_array_equal(out, np.ones((4, 6, 6, 1), np.float32))  # (12 - 10) / 2
  cfg = default.get_config().augment
  cfg.crop_padding, cfg.flip, cfg.cutout = 0, False, 2
  out = np.asarray(augment.apply(augment.pipeline(cfg), jax.random.key(0), x, pre))
  assert set(np.unique(out)) == {0.0, 1.0}  # cutout runs after normalization: zero is the mean


def test_pick_examples_is_deterministic_and_balanced(tmp_path):
  from analysis import common
  labels = np.repeat(np.arange(5), 20)
  images = np.arange(100)[:, None]
  a = common.pick_examples(images, labels, 10, seed=1)
  b = common.pick_examples(images, labels, 10, seed=1)
  np.testing.assert_array_equal(a[2], b[2])
  assert not np.array_equal(a[2], common.pick_examples(images, labels, 10, seed=2)[2])
  _, picked, _ = common.pick_examples(images, labels, 10, seed=0, per_class=True)
  assert np.bincount(picked).tolist() == [2] * 5
  out = common.write_outputs(common.output_dir(str(tmp_path), 'probe'), {'accuracy': 0.5},
                             [{'method': 'x', 'score': 0.123456}], title='Probe')
  assert json.load(open(out['json'])) == {'accuracy': 0.5}
  assert '| x | 0.1235 |' in open(out['md']).read()
  with pytest.raises(UserError):
    common.pick_examples(images, labels, 0)


def test_a_knob_the_family_does_not_use_is_refused():
  import models
  from configs import common as config_common
  for name, knob, value in (('lenet5', 'widths', '8,8'), ('resnet20', 'num_one_by_one', 2),
                            ('alexnet', 'depth', 9), ('simplenet_cifar_310k', 'aux_heads', True)):
    cfg = config_common.model_config(name)
    cfg[knob] = value
    with pytest.raises(UserError, match=f'does not use the knob {knob!r}'):
      models.create(cfg, 10)
  cfg = config_common.model_config('vgg11')
  cfg.depth = 13  # used by the layout families
  models.create(cfg, 10)


def test_library_notices_are_dropped_and_real_warnings_pass():
  import logging
  from kernels import runtime
  f = runtime._DropNotices()
  record = lambda level, msg, path='x.py': logging.LogRecord('n', level, path, 1, msg, (), None)
  for msg in ("Unable to initialize backend 'tpu': INTERNAL: Failed to open libtpu.so",
              'Variant folder /d/mnist/3.0.1 has no dataset_info.json',
              'oneDNN custom operations are on.'):
    assert not f.filter(record(logging.WARNING, msg)), msg
  assert not f.filter(record(logging.INFO, 'saved', '/x/orbax/checkpoint.py'))
  assert f.filter(record(logging.WARNING, 'loss is getting large'))
  assert f.filter(record(logging.ERROR, 'Variant folder broken'))  # errors always pass


def test_keys_added_since_old_runs_default_to_todays_config():
  """An old run (config.json without a key) resumes under the default config only if the filled
  value is the default's, or the key is one a resume may change."""
  from configs import default
  from store import checkpoints
  from train import loop
  c = default.get_config()
  for key, value in checkpoints.added_keys().items():
    node = c
    for part in key.split('.'):
      node = node[part]
    assert node == value or key in loop.RESUMABLE_CHANGES, key
