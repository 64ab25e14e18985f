"""The streaming data path (image folders, TFDS by name, grain), and the augmentation ops."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import (REPO, assert_kill_and_resume_is_bitwise, assert_same_run, load_results,
                      run_main, run_processes)
from data import augment

# ----------------------------------------------------------------------------- augmentation ops

X = jnp.asarray(np.random.default_rng(0).integers(0, 256, (3, 12, 10, 3)), jnp.uint8)
OFF_AND_ON = {  # op -> (function of (key, x, strength), a nonzero strength)
    'resized_crop': (lambda k, x, s: augment.random_resized_crop(
        k, x, (1 - s, 1.0), (10 / 12 * (1 - s), 10 / 12 / (1 - s))), 0.5),
    'affine': (lambda k, x, s: augment.random_affine(k, x, 30 * s, s), 0.3),
    'color': (lambda k, x, s: augment.color_jitter(k, x, s, s, s), 0.4),
    'color_cast': (lambda k, x, s: augment.color_cast(k, x, 20 * s), 1.0),
    'vignetting': (lambda k, x, s: augment.vignetting(k, x, s), 0.8),
    'lens_distortion': (lambda k, x, s: augment.lens_distortion(k, x, s), 0.3),
}


@pytest.mark.parametrize('name', sorted(OFF_AND_ON))
def test_augmentation_op_identity_shape_range_determinism(name):
  fn, strength = OFF_AND_ON[name]
  key = jax.random.key(3)
  np.testing.assert_allclose(fn(key, X, 0.0), X.astype(jnp.float32), atol=1e-3)
  y = fn(key, X, strength)
  assert y.shape == X.shape and y.dtype == jnp.float32
  assert float(y.min()) >= 0 and float(y.max()) <= 255
  np.testing.assert_array_equal(y, fn(key, X, strength))
  assert not np.allclose(y, fn(jax.random.key(4), X, strength))  # the key matters
  assert float(jnp.abs(y - X).mean()) > 0.5  # and the op does something


def test_vignetting_darkens_corners_and_keeps_the_centre():
  flat = jnp.full((2, 11, 11, 1), 200, jnp.uint8)
  y = augment.vignetting(jax.random.key(0), flat, 0.9)
  assert float(y[0, 5, 5, 0]) == 200.0
  assert float(y[0, 0, 0, 0]) < float(y[0, 2, 2, 0]) < float(y[0, 5, 5, 0])


def test_lens_distortion_keeps_the_centre_barrel_pulls_lines_in_pincushion_out():
  dot = jnp.zeros((1, 11, 11, 1)).at[0, 5, 5, 0].set(255.0)
  assert float(augment.lens_distortion(jax.random.key(0), dot, 0.3)[0, 5, 5, 0]) == 255.0
  line = jnp.zeros((21, 21, 1)).at[:, 16, 0].set(255.0)  # a vertical line right of the centre
  where = lambda img: float((img[10, :, 0] * jnp.arange(21)).sum() / img[10, :, 0].sum())
  assert where(augment.lens_warp(line, 0.0)) == pytest.approx(16.0)
  assert where(augment.lens_warp(line, 0.3)) < 16 < where(augment.lens_warp(line, -0.3))


def test_affine_quarter_turn_is_a_rot90_and_zoom_keeps_the_centre():
  img = jnp.asarray(np.random.default_rng(1).integers(0, 256, (9, 9, 1)), jnp.float32)
  turned = augment.affine(img, jnp.pi / 2, 1.0)
  np.testing.assert_allclose(turned, np.rot90(np.asarray(img), k=-1), atol=1e-3)
  zoomed = augment.affine(img, 0.0, 2.0)
  assert float(zoomed[4, 4, 0]) == pytest.approx(float(img[4, 4, 0]), abs=1e-3)
  assert float(zoomed[0, 0, 0]) == pytest.approx(float(img[2, 2, 0]), abs=1e-3)  # 2x about (4, 4)


def test_brightness_alone_adds_one_offset_per_image():
  x = jnp.full((3, 5, 5, 3), 120, jnp.uint8).at[:, 0, 0, 0].set(10)
  y = augment.color_jitter(jax.random.key(2), x, 0.2, 0.0, 0.0) - x.astype(jnp.float32)
  offsets = y[:, 1, 1, 0]
  np.testing.assert_allclose(y, jnp.broadcast_to(offsets[:, None, None, None], y.shape), atol=1e-3)
  assert float(jnp.abs(offsets).max()) <= 0.2 * 255 + 1e-3 and float(jnp.ptp(offsets)) > 1.0


def test_color_cast_is_one_offset_per_channel():
  flat = jnp.full((4, 6, 6, 3), 100, jnp.uint8)
  y = augment.color_cast(jax.random.key(1), flat, 20.0)
  assert float(jnp.ptp(y, axis=(1, 2)).max()) == 0.0  # constant over pixels
  assert float(jnp.abs(y - 100).max()) <= 20.0 and float(jnp.std(y[:, 0, 0, :])) > 1.0


def test_crop_box_rule_is_shared_by_host_and_device():
  u = np.random.default_rng(0).random((50, 10, 4))
  host = augment.rrc_box(u, 40, 30, (0.08, 1.0), (0.75, 4 / 3))
  device = augment.rrc_box(jnp.asarray(u), 40, 30, (0.08, 1.0), (0.75, 4 / 3), xp=jnp)
  for a, b in zip(host, device):
    np.testing.assert_allclose(a, np.asarray(b), atol=1e-4)
  top, left, h, w = host
  assert (top >= 0).all() and (left >= 0).all() and (top + h <= 40).all() and (left + w <= 30).all()
  area = h * w / (40 * 30)
  assert area.min() >= 0.07 and area.max() <= 1.0 and np.ptp(area) > 0.3


def test_augment_config_rejects_bad_strengths():
  from configs import default
  from errors import UserError
  c = default.get_config()
  c.augment.saturation = 0.4
  with pytest.raises(UserError, match='saturation needs RGB'):
    augment.check(c.augment, channels=1)
  c.augment.saturation, c.augment.rrc_scale = 0.0, '0.5'
  with pytest.raises(UserError, match='rrc_scale'):
    augment.check(c.augment, channels=1)


# ----------------------------------------------------------------------------- image folders


def write_folder(root, n=40, size=16, classes=3, val=8, seed=0):
  """Classes told apart by which channel is bright; PNG files."""
  from PIL import Image
  rng = np.random.default_rng(seed)
  for split, m in (('train', n), ('val', val)):
    for c in range(classes):
      d = os.path.join(root, split, f'class{c}')
      os.makedirs(d, exist_ok=True)
      for i in range(m):
        img = rng.integers(0, 60, (size, size, 3))
        img[..., c % 3] += 150
        Image.fromarray(img.astype(np.uint8)).save(os.path.join(d, f'{i:03d}.png'))
  return str(root)


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
  return write_folder(tmp_path_factory.mktemp('folder'))


def folder_args(root, *extra):
  return ['--config.dataset.name=folder', f'--config.dataset.data_dir={root}',
          '--config.dataset.pipeline=streaming', '--config.dataset.num_workers=0',
          '--config.model.name=simplenet',
          '--config.model.layers=8,p,16,p,16', '--config.batch_size=12',
          '--config.eval_batch_size=10', '--config.log_every_steps=2',
          '--config.augment.rrc_scale=0.5,1', '--config.augment.color_cast=10',
          '--config.augment.vignetting=0.3', '--config.augment.lens_distortion=0.1', *extra]


def test_image_folder_streams_trains_evaluates_and_shows_augmentations(folder, tmp_path):
  w = str(tmp_path / 'run')
  run_main([f'--workdir={w}', *folder_args(folder, '--config.num_epochs=4')])
  r = load_results(w)
  assert r['dataset']['pipeline'] == 'streaming' and r['dataset']['num_train'] == 120
  assert r['dataset']['class_names'] == ['class0', 'class1', 'class2']
  assert r['dataset']['shape'] == [16, 16, 3] and r['dataset']['num_test'] == 24
  assert r['test_accuracy'] > 0.6, r['history']  # chance is 1/3
  assert 0.0 <= r['input_wait_fraction'] <= 1.0
  ev = subprocess.run([sys.executable, 'main.py', '--mode=eval', f'--workdir={w}'], cwd=REPO,
                      capture_output=True, text=True, timeout=300)
  assert ev.returncode == 0, ev.stderr[-2000:]
  with open(os.path.join(w, 'eval.json')) as f:
    assert json.load(f)['test_accuracy'] == pytest.approx(r['test_accuracy'], abs=1e-6)
  shown = run_main(['--mode=augment', f'--workdir={w}', *folder_args(folder),
                    '--augment_examples=3', '--augment_draws=2'])
  assert 'augment.png' in shown.stdout
  from PIL import Image
  with Image.open(os.path.join(w, 'augment.png')) as img:
    assert img.size == (296, 296)  # 3 rows x (original + 2 draws) of 96-px cells, 2-px gaps
  with open(os.path.join(w, 'augment.json')) as f:
    assert json.load(f)['ops'][0] == 'resized_crop (host)'


def test_small_folder_goes_to_memory_and_large_one_streams(folder):
  from configs import default
  from data import datasets
  c = default.get_config()
  c.dataset.name, c.dataset.data_dir = 'folder', folder
  d = datasets.info(c.dataset)
  assert d.shape == (16, 16, 3) and d.class_names == ('class0', 'class1', 'class2')
  assert datasets.pipeline(c.dataset, d) == 'memory'
  c.dataset.memory_limit_mb = 0
  assert datasets.pipeline(c.dataset, d) == 'streaming'
  train = datasets.load_split(c.dataset, 'train')
  assert train.images.shape == (120, 16, 16, 3) and list(np.bincount(train.labels)) == [40] * 3
  c.dataset.image_shape = '8,8,1'
  assert datasets.load_split(c.dataset, 'test').images.shape == (24, 8, 8, 1)


@pytest.mark.parametrize('name,model,params', [('imagenet_resnet50', 'resnet18', 11_181_642),
                                               ('imagenet_simplenet', 'simplenetv1_small_m2_05',
                                                1_379_082)])
def test_imagenet_configs_small_variants_validate_on_a_folder(folder, tmp_path, name, model,
                                                              params):
  import importlib.util
  from models.summary import count_params
  from train import loop
  import models
  spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, 'configs', f'{name}.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config(f'small,dataset.data_dir={folder}')
  info = loop.validate(c, str(tmp_path / name))
  assert c.model.name == model and info.shape == (64, 64, 3) and info.num_classes == 3
  net = models.create(c.model, 10)
  v = jax.eval_shape(lambda: net.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False))
  assert count_params(v['params']) == params  # the counts the config docstrings' runs report


def _layout_error(root):
  from configs import default
  from data import datasets, images
  from errors import UserError
  images.scan_folder.cache_clear()
  c = default.get_config()
  c.dataset.name, c.dataset.data_dir = 'folder', str(root)
  with pytest.raises(UserError) as e:
    datasets.info(c.dataset)
  return str(e.value)


def test_folder_layout_mistakes_name_the_path(tmp_path):
  assert str(tmp_path / 'nope') in _layout_error(tmp_path / 'nope')
  root = write_folder(tmp_path / 'a', n=2, val=1)
  for f in os.listdir(os.path.join(root, 'train', 'class1')):
    os.remove(os.path.join(root, 'train', 'class1', f))
  msg = _layout_error(root)
  assert 'empty class' in msg and os.path.join(root, 'train', 'class1') in msg
  root = write_folder(tmp_path / 'b', n=2, val=1)
  os.rename(os.path.join(root, 'val', 'class2'), os.path.join(root, 'val', 'other'))
  msg = _layout_error(root)
  assert 'classes differ' in msg and 'only in train: class2' in msg and 'only in val: other' in msg
  root = write_folder(tmp_path / 'c', n=2, val=1)
  os.rename(os.path.join(root, 'val'), os.path.join(root, 'validation'))
  assert os.path.join(root, 'val') in _layout_error(root)


def test_unreadable_image_fails_with_one_line_and_keeps_the_workdir(tmp_path):
  root = write_folder(tmp_path / 'f', n=10, val=2)
  bad = os.path.join(root, 'train', 'class1', '004.png')
  with open(bad, 'w') as f:
    f.write('not a png')
  w = str(tmp_path / 'run')
  proc = run_main([f'--workdir={w}', *folder_args(root, '--config.num_epochs=1')], check=False)
  assert proc.returncode == 2
  errors = [l for l in proc.stderr.splitlines() if l.startswith('error:')]
  assert len(errors) == 1 and bad in errors[0] and 'Traceback' not in proc.stderr
  assert not os.path.exists(os.path.join(w, 'results.json'))


# ----------------------------------------------------------------------------- TFDS by name


def test_imagenet2012_mock_data_streams_at_reduced_resolution(tmp_path):
  import tensorflow_datasets as tfds
  from configs import default
  from train import loop
  c = default.get_config()
  c.dataset.name, c.dataset.source, c.dataset.pipeline = 'imagenet2012', 'tfds', 'streaming'
  c.dataset.image_shape, c.dataset.test_size, c.dataset.crop_fraction = '32,32,3', 20, 0.875
  c.augment.rrc_scale, c.augment.crop_padding = '0.08,1', 0
  c.model.name, c.model.layers = 'simplenet', '8,p,16'
  c.batch_size, c.eval_batch_size, c.num_train_steps = 8, 16, 3
  with tfds.testing.mock_data(num_examples=40):
    r = loop.train_and_evaluate(c, str(tmp_path / 'run'))
  assert r['steps'] == 3 and r['dataset']['pipeline'] == 'streaming'
  assert r['dataset']['shape'] == [32, 32, 3] and r['dataset']['num_test'] == 20
  assert np.isfinite(r['test_loss']) and r['num_params'] > 0


def _tiny_tfds(root, fmt):
  """A real prepared TFDS dataset of varying-size RGB images, in `fmt` files (its builder
  unregistered, so reading it by name goes through the prepared files alone)."""
  import tensorflow_datasets as tfds

  class TinyShapes(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version('1.0.0')

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, supervised_keys=('image', 'label'),
                                   features=tfds.features.FeaturesDict({
                                       'image': tfds.features.Image(shape=(None, None, 3)),
                                       'label': tfds.features.ClassLabel(num_classes=3)}))

    def _split_generators(self, dl_manager):
      return {'train': self._generate_examples(48, 0), 'test': self._generate_examples(12, 1)}

    def _generate_examples(self, n, seed):
      rng = np.random.default_rng(seed)
      for i in range(n):
        s = int(rng.integers(12, 20))
        img = rng.integers(0, 60, (s, s + 3, 3)).astype(np.uint8)
        img[..., i % 3] += 150
        yield i, {'image': img, 'label': i % 3}

  TinyShapes(data_dir=str(root), file_format=fmt).download_and_prepare()


def test_tfds_dataset_by_name_from_tfrecord_and_array_record(tmp_path):
  from configs import default
  from data import datasets, images
  from errors import UserError
  from train import loop
  for fmt in ('tfrecord', 'array_record'):
    _tiny_tfds(tmp_path / fmt, fmt)
  a = images.tfds_reader('tiny_shapes', str(tmp_path / 'tfrecord'), 'train')
  b = images.tfds_reader('tiny_shapes', str(tmp_path / 'array_record'), 'train')
  assert type(a).__name__ == '_TFRecordSource' and len(a) == len(b) == 48
  for i in (0, 17, 47):
    np.testing.assert_array_equal(a[i]['image'], b[i]['image'])
    assert a[i]['label'] == b[i]['label']
  c = default.get_config()
  c.dataset.name, c.dataset.data_dir = 'tiny_shapes', str(tmp_path / 'tfrecord')
  with pytest.raises(UserError, match='varying size'):
    datasets.info(c.dataset)
  c.dataset.image_shape, c.dataset.pipeline = '16,16,3', 'streaming'
  c.model.name, c.model.layers = 'simplenet', '8,p,16'
  c.batch_size, c.eval_batch_size, c.num_epochs = 12, 12, 3
  r = loop.train_and_evaluate(c, str(tmp_path / 'run'))
  assert r['dataset']['name'] == 'tiny_shapes' and r['dataset']['num_train'] == 48
  assert r['steps'] == 12 and r['dataset']['pipeline'] == 'streaming'


# ----------------------------------------------------------------------------- sharding, resume


def test_process_shards_are_disjoint_and_cover_every_epoch(monkeypatch):
  from data import streaming
  n, batch, procs = 103, 12, 3
  train, evals = [], []
  for p in range(procs):
    monkeypatch.setattr(jax, 'process_count', lambda: procs)
    monkeypatch.setattr(jax, 'process_index', lambda p=p: p)
    order = streaming._TrainOrder(n, batch, 20, seed=5)
    train.append(order.process_indices(1))
    epoch1 = range(order.local * order.steps_per_epoch, 2 * order.local * order.steps_per_epoch)
    assert [order[i][0] for i in epoch1] == list(train[-1])  # what the pipeline reads
    ev = streaming._EvalOrder(n, batch)
    evals.append([ev[i] for i in range(len(ev))])
  union = np.concatenate(train)
  assert len(union) == len(set(union)) == (n // batch) * batch  # disjoint, one epoch's batches
  assert sorted(k for r in evals for k, valid in r if valid) == list(range(n))  # each once
  assert len({len(r) for r in evals}) == 1  # every process runs the same number of batches
  # With no partial batch to drop, an epoch's shards are exactly the dataset.
  shards = []
  for p in range(procs):
    monkeypatch.setattr(jax, 'process_index', lambda p=p: p)
    shards.append(streaming._TrainOrder(96, batch, 20, seed=5).process_indices(0))
  assert sorted(np.concatenate(shards)) == list(range(96))


def test_two_processes_streaming_match_one(folder, tmp_path):
  args = folder_args(folder, '--config.num_train_steps=8', '--config.log_every_steps=1',
                     '--config.model.dropout=0.1')
  single, multi = str(tmp_path / 'single'), str(tmp_path / 'multi')
  run_main([f'--workdir={single}', *args], devices=1)
  run_processes(args, multi, processes=2, devices=1)
  r = load_results(multi)
  assert r['num_processes'] == 2 and r['dataset']['pipeline'] == 'streaming'
  assert r['test_accuracy'] == pytest.approx(load_results(single)['test_accuracy'], abs=1e-6)
  assert_same_run(single, multi)
  # each process saved its own reader position with the checkpoint
  data = os.path.join(multi, 'checkpoints', '8', 'data')
  assert sorted(os.listdir(data))[-2:] == ['process_0-of-2.json', 'process_1-of-2.json']


def test_kill_and_resume_streaming_is_bitwise_identical(folder, tmp_path):
  # A worker process reads here (its iterator state is what the checkpoint holds).
  args = folder_args(folder, '--config.num_train_steps=30', '--config.checkpoint_every_steps=3',
                     '--config.log_every_steps=3', '--config.dataset.num_workers=1')
  assert_kill_and_resume_is_bitwise(args, tmp_path, kill_after_step=6)
