"""The training system end to end: results, real data, TFDS, resume, non-finite stop, bad input."""

import glob
import importlib.util
import json
import os

import numpy as np
import pytest

from conftest import (REPO, TINY, assert_kill_and_resume_is_bitwise, flat_leaves, load_results,
                      load_state, overrides, run_main)

from configs import default
from errors import UserError

FMNIST_DIR = '/usr/share/datasets/fashion-mnist'


def test_config_argument_sets_fields_and_rejects_unknown_keys():
  c = default.get_config('model=simplenet_cifar_5m,batch_size=64,augment.flip=false,'
                         'optimizer.learning_rate=0.01')
  assert (c.model.name, c.batch_size, c.augment.flip) == ('simplenet_cifar_5m', 64, False)
  assert c.optimizer.learning_rate == pytest.approx(0.01)
  with pytest.raises(UserError, match='unknown config key'):
    default.get_config('model.nope=1')
  with pytest.raises(UserError, match='expected a int'):
    default.get_config('batch_size=big')


# Every config file users launch, with the parameter count of the model it builds (the README
# quotes these); a new config file gets a line here.
SHIPPED_CONFIGS = {'default.py': 311_210, 'simplenet_cifar10.py': 5_498_378,
                   'fashion_mnist_fast.py': 292_298, 'imagenet_resnet50.py': 25_557_032,
                   'imagenet_simplenet.py': 5_752_808, 'segmentation.py': 316_577,  # FCN-8s
                   'dcgan_fashion_mnist.py': 841_025 + 149_057}  # generator + discriminator


def test_shipped_configs_validate_and_build_their_documented_models(tmp_path):
  import jax
  import models
  from models.summary import count_params
  from train import loop
  paths = [p for p in glob.glob(os.path.join(REPO, 'configs', '*.py'))
           if 'def get_config' in open(p).read()]
  assert sorted(map(os.path.basename, paths)) == sorted(SHIPPED_CONFIGS)
  for path in paths:
    name = os.path.basename(path)
    spec = importlib.util.spec_from_file_location(name[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config()
    if c.model.name == 'dcgan':  # --mode=gan: its networks, counted at the data's shape
      from data import datasets
      from gan import train
      gan = train.Gan(c, datasets.info(c.dataset).shape, 10)
      state = jax.eval_shape(gan.init, jax.random.key(0))
      assert count_params(state.g['params']) + count_params(state.d['params']) == \
          SHIPPED_CONFIGS[name]
      continue
    info = loop.validate(c, str(tmp_path / name), need_data=False)
    model = models.create(c.model, info.num_classes)
    x = jax.numpy.zeros((1, *info.shape))
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    assert count_params(variables['params']) == SHIPPED_CONFIGS[name], name


def test_run_writes_results_config_and_tensorboard(workdir):
  proc = run_main([f'--workdir={workdir}', *overrides(num_train_steps=24)])
  r = load_results(workdir)
  for key in ('num_params', 'test_accuracy', 'train_time_s', 'images_per_sec', 'steps', 'config'):
    assert key in r, key
  assert r['steps'] == 24 and r['num_params'] > 0 and r['images_per_sec'] > 0
  assert r['config']['model']['layers'] == '8,p,16,p,16'
  losses = [loss for _, loss, _ in r['train_log']]
  assert losses[-1] < losses[0]  # synthetic classes are learnable
  assert os.path.exists(os.path.join(workdir, 'config.json'))
  assert any(f.startswith('events') for f in os.listdir(os.path.join(workdir, 'tensorboard')))
  assert 'ETA' in proc.stderr and 'img/s' in proc.stderr  # progress lines
  # A CPU run prints none of the libraries' notices that mean nothing to its user.
  for notice in ('TPU', 'tpu', 'variant folder', 'oneDNN custom operations'):
    assert notice not in proc.stderr, notice
  assert os.path.getsize(os.path.join(workdir, 'curves.png')) > 1000
  assert r['preprocess']['pixel_range'] == [0, 255] and len(r['preprocess']['mean']) == 3
  assert r['dataset']['name'] == 'synthetic' and r['dataset']['num_train'] == 256
  # Running the same command again is a no-op that returns the same results.
  run_main([f'--workdir={workdir}', *overrides(num_train_steps=24)])
  assert load_results(workdir)['train_log'] == r['train_log']


@pytest.mark.skipif(not os.path.exists(FMNIST_DIR) and not os.environ.get('CI'),
                    reason='needs apt-get install dataset-fashion-mnist (make test installs it)')
def test_real_fashion_mnist_subset_learns(workdir):
  from train import loop
  c = default.get_config()
  c.dataset.train_size, c.dataset.test_size = 4096, 1000
  c.model.width_multiplier = 0.5
  c.batch_size, c.num_epochs, c.log_every_steps = 64, 3, 32
  r = loop.train_and_evaluate(c, workdir)
  assert r['test_accuracy'] > 0.7, r['history']  # chance is 0.1


def test_cutout_zeroes_one_square_per_example():
  import jax
  from data import augment
  x = np.ones((512, 10, 12, 2), np.float32)
  out = np.asarray(augment.cutout(jax.random.key(0), x, 4))
  areas = []
  for img in out:
    assert (img[..., 0] == img[..., 1]).all()  # the same square in every channel
    rows, cols = np.nonzero(img[..., 0] == 0)
    h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
    assert h <= 4 and w <= 4 and len(rows) == h * w  # one axis-aligned box, at most 4x4
    areas.append(len(rows))
  assert min(areas) >= 4 and max(areas) == 16  # centres near a border cut partial squares
  assert len({tuple(np.argwhere(i[..., 0] == 0)[0]) for i in out}) > 50  # positions vary
  np.testing.assert_array_equal(augment.cutout(jax.random.key(0), x, 0), x)  # 0 = off
  seq = np.asarray(augment.cutout(jax.random.key(1), np.ones((8, 128, 4), np.float32), 16))  # 1-D
  assert ((seq == 0).sum(axis=(1, 2)) <= 16 * 4).all() and (seq == 0).any()


def test_cutout_reaches_the_train_step(workdir):
  """A square wider than the images erases every input: the net sees only zeros, so its logits
  start at 0 (loss ln 10 on 10 synthetic classes) and can learn no more than the class prior
  (the same run without cutout starts near 9 and moves by whole units)."""
  from train import loop
  c = default.get_config()
  for key, value in {**TINY, 'num_train_steps': 16, 'augment.cutout': 40}.items():
    parent, _, leaf = key.rpartition('.')
    (c[parent] if parent else c)[leaf] = value
  r = loop.train_and_evaluate(c, workdir)
  losses = np.array([loss for _, loss, _ in r['train_log']])
  np.testing.assert_allclose(losses, np.log(10), atol=0.05, err_msg=str(r['train_log']))


def test_tfds_path_with_mock_data(workdir):
  import tensorflow_datasets as tfds
  from configs import common
  from train import loop
  c = default.get_config()
  common.apply_arg(c, 'dataset=cifar10,dataset.source=tfds,batch_size=16,num_train_steps=3,'
                      'eval_batch_size=32,model=simplenet')
  c.model.layers = '8,p,16'
  with tfds.testing.mock_data(num_examples=64):
    r = loop.train_and_evaluate(c, workdir)
  assert r['steps'] == 3 and 0.0 <= r['test_accuracy'] <= 1.0
  assert r['num_params'] == 3 * 9 * 8 + 8 + 2 * 8 + 8 * 9 * 16 + 16 + 2 * 16 + 16 * 10 + 10


def test_kill_and_resume_gives_bitwise_identical_params(tmp_path):
  args = overrides(num_train_steps=60, checkpoint_every_steps=5, log_every_steps=5,
                   **{'model.layers': '16,p,32,p,32'})
  assert_kill_and_resume_is_bitwise(args, tmp_path, kill_after_step=10)


def test_resume_from_an_epoch_checkpoint_keeps_that_epochs_evaluation(tmp_path):
  """Epoch 1's checkpoint is written before epoch 1's evaluation: a run resumed from it (the
  later checkpoint and results gone, as after a kill in between) still has that curve point."""
  import shutil
  from train import loop
  c = default.get_config()
  for key, value in {**TINY, 'num_train_steps': 32, 'checkpoint_every_steps': 16}.items():
    parent, _, leaf = key.rpartition('.')
    (c[parent] if parent else c)[leaf] = value
  ref = loop.train_and_evaluate(c, str(tmp_path / 'ref'))
  shutil.copytree(tmp_path / 'ref', tmp_path / 'cut')
  shutil.rmtree(tmp_path / 'cut' / 'checkpoints' / '32')
  os.remove(tmp_path / 'cut' / 'results.json')
  again = loop.train_and_evaluate(c, str(tmp_path / 'cut'))
  curve = lambda r: [(h['step'], h['test_accuracy'], h['test_loss']) for h in r['history']]
  assert [h['step'] for h in ref['history']] == [16, 32] and curve(again) == curve(ref)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(workdir):
  # lr x1e30 from epoch 1 on (16 steps/epoch): the loss overflows a few steps later.
  proc = run_main([f'--workdir={workdir}', *overrides(
      num_train_steps=40, checkpoint_every_steps=4, log_every_steps=4,
      **{'schedule.name': 'multistep', 'schedule.milestones': '1', 'schedule.gamma': 1e30,
         'schedule.warmup_epochs': 0})], check=False)
  assert proc.returncode == 2
  line = proc.stderr.strip().splitlines()[-1]
  assert line.startswith('error: loss became non-finite at step'), line
  bad_step = int(line.split('at step ')[1].split(';')[0])
  assert bad_step >= 16
  assert not os.path.exists(os.path.join(workdir, 'results.json'))
  state = load_state(workdir)
  assert int(state['step']) <= bad_step
  assert all(np.isfinite(v).all() for v in flat_leaves(state['params']).values())


def _bad(tmp_path, *args, devices=1):
  proc = run_main([*args], devices=devices, check=False)
  err_lines = [l for l in proc.stderr.splitlines() if l.startswith('error:')]
  return proc, err_lines


@pytest.mark.parametrize('args, expected', [
    (['--config.model.name=resnet9000'], 'unknown model'),
    (['--config.dataset.name=imagenet9000'], 'unknown dataset'),
    (['--config.optimizer.name=lion9000'], 'unknown optimizer'),
    (['--config.model.width_multiplier=0'], 'width_multiplier must be positive'),
    (['--config.model.depth=-2'], 'depth must be positive'),
    (['--config.model.widths=8,0,16'], 'width'),
    (['--config.batch_size=0'], 'batch_size must be positive'),
    (['--config.augment.cutout=-1'], 'augment.cutout must be >= 0'),
    (['--config.model.nonexistent_knob=3'], 'unknown config key'),
    (['--config=configs/default.py:nonexistent=3'], 'unknown config key'),
    (['--config=configs/nonexistent.py'], 'config file configs/nonexistent.py not found'),
    (['--config.dataset.num_workers=-1'], 'dataset.num_workers must be >= 0'),
    (['--config.dataset.prefetch_batches=-1'], 'dataset.prefetch_batches must be >= 0'),
    (['--config.dataset.train_size=-5'], 'dataset.train_size must be >= 0'),
    (['--config.dataset.test_size=-1'], 'dataset.test_size must be >= 0'),
    (['--config.dataset.train_offset=-1'], 'dataset.train_offset must be >= 0'),
    (['--config.dataset.train_offset=9999'], 'leaves none of the 256 training examples'),
    (['--config.adversarial.method=fgsm'], 'unknown adversarial.method'),
    (['--config.adversarial.method=pgd', '--config.adversarial.eps=0'], 'must be positive'),
    (['--config.adversarial.norm=l1'], 'unknown norm'),
    (['--config.model.widths=8,8,8', '--config.model.name=lenet5'], 'does not use the knob'),
])
def test_bad_input_fails_fast_with_one_line(tmp_path, args, expected):
  workdir = str(tmp_path / 'w')
  proc, errs = _bad(tmp_path, f'--workdir={workdir}', *overrides(), *args)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert len(errs) == 1 and expected in errs[0], proc.stderr[-2000:]
  assert 'Traceback' not in proc.stderr
  assert not os.path.exists(os.path.join(workdir, 'checkpoints'))  # nothing was built


def test_batch_not_divisible_by_devices(tmp_path):
  proc, errs = _bad(tmp_path, f'--workdir={tmp_path}/w', *overrides(batch_size=12), devices=8)
  assert proc.returncode == 2 and 'not divisible by the 8 devices' in errs[0]


def test_unwritable_workdir(tmp_path):
  blocker = tmp_path / 'file'
  blocker.write_text('x')
  proc, errs = _bad(tmp_path, f'--workdir={blocker}/sub', *overrides())
  assert proc.returncode == 2 and 'not writable' in errs[0]


def test_missing_data_says_what_to_install(tmp_path):
  proc, errs = _bad(tmp_path, f'--workdir={tmp_path}/w', *overrides(),
                    '--config.dataset.name=mnist', '--config.dataset.image_shape=',
                    f'--config.dataset.data_dir={tmp_path}/empty')
  assert proc.returncode == 2 and 'dataset mnist not found' in errs[0] and 'tfds' in errs[0]
  proc, errs = _bad(tmp_path, f'--workdir={tmp_path}/w', *overrides(),
                    '--config.dataset.name=fashion_mnist', '--config.dataset.source=idx',
                    '--config.dataset.image_shape=',
                    f'--config.dataset.idx_dir={tmp_path}/empty')
  assert proc.returncode == 2 and 'IDX files not found' in errs[0]


def test_other_experiment_in_workdir_is_refused_and_kept(workdir):
  run_main([f'--workdir={workdir}', *overrides()])
  before = sorted(os.listdir(os.path.join(workdir, 'checkpoints')))
  results = load_results(workdir)
  proc, errs = _bad(None, f'--workdir={workdir}', *overrides(**{'model.layers': '8,p,8'}))
  assert proc.returncode == 2 and 'different config' in errs[0] and 'model.layers' in errs[0]
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == before
  assert load_results(workdir) == results
  # A run from before a config key existed resumes when the key keeps its default value.
  path = os.path.join(workdir, 'config.json')
  with open(path) as f:
    saved = json.load(f)
  del saved['augment']['cutout']
  with open(path, 'w') as f:
    json.dump(saved, f)
  run_main([f'--workdir={workdir}', *overrides()])
  proc, errs = _bad(None, f'--workdir={workdir}', *overrides(**{'augment.cutout': 4}))
  assert proc.returncode == 2 and 'augment.cutout' in errs[0]


def test_train_offset_takes_a_disjoint_slice():
  from configs import default
  from data import datasets
  c = default.get_config().dataset
  c.name, c.image_shape, c.synthetic_size = 'synthetic', '8,8,1', 64
  full = datasets.load_split(c, 'train')
  c.train_offset, c.train_size = 16, 20
  part = datasets.load_split(c, 'train')
  np.testing.assert_array_equal(part.images, full.images[16:36])
  c.train_size = 0
  np.testing.assert_array_equal(datasets.load_split(c, 'train').labels, full.labels[16:])
  assert datasets.identity(c, datasets.info(c), 48, 16)['train_offset'] == 16
