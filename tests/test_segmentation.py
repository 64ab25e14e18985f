"""Semantic segmentation: the dense models' exact sizes, the upsampling rule, the metrics against
scikit-learn, the data (generated scenes, users' folders, augmentation that moves the mask with
the image), a run trained, evaluated, explained and attacked as a user would, and bad input."""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from conftest import load_results, run_main

import models
from configs import segmentation as seg_config
from data import segmentation as seg_data
from errors import UserError
from models import dense
from train import loop, segmentation

FMNIST = '/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz'
needs_fmnist = pytest.mark.skipif(not os.path.exists(FMNIST) and not os.environ.get('CI'),
                                  reason='apt-get install dataset-fashion-mnist')


def _shape_and_params(name, shape, classes, **knobs):
  m = models.create(dict(name=name, **knobs), classes)
  x = jnp.zeros((1, *shape))
  out, v = jax.eval_shape(lambda: m.init_with_output(jax.random.key(0), x, train=False))
  return out.shape, sum(p.size for p in jax.tree_util.tree_leaves(v['params']))


def test_unet_as_published():
  """Ronneberger et al.: 23 convolutions, 572x572 in -> 388x388 out; 31,030,658 parameters for
  one input channel and two classes (the count quoted for the paper's network)."""
  out, n = _shape_and_params('unet', (572, 572, 1), 2)
  assert out == (1, 388, 388, 2) and n == 31_030_658
  m = models.create({'name': 'unet'}, 2)
  v = jax.eval_shape(lambda: m.init(jax.random.key(0), jnp.zeros((1, 572, 572, 1))))
  kernels = [p for p in jax.tree_util.tree_leaves(v['params']) if p.ndim == 4]
  assert len(kernels) == 23
  assert _shape_and_params('unet', (64, 64, 1), 11, padding='same', width_multiplier=0.25)[0] == (
      1, 64, 64, 11)


def test_upconv_is_a_transposed_convolution():
  x = jax.random.normal(jax.random.key(1), (2, 5, 7, 6))
  ref = nn.ConvTranspose(4, (2, 2), strides=(2, 2))
  v = ref.init(jax.random.key(0), x)
  up = dense.UpConv(4, nn.initializers.lecun_normal())
  assert jax.tree_util.tree_map(jnp.shape, up.init(jax.random.key(0), x)) == \
      jax.tree_util.tree_map(jnp.shape, v)
  np.testing.assert_allclose(np.asarray(up.apply(v, x)), np.asarray(ref.apply(v, x)), atol=1e-5)


def test_fcn_vgg16_counts():
  """FCN-32s over VGG-16, 21 classes: VGG-16's convs 14,714,688 + fc6 as 7x7x512x4096 conv
  102,764,544 + fc7 16,781,312 + score 86,037. FCN-8s adds two learned 2x upsamplings
  (4x4x21x21 each) and the pool4 / pool3 scores (512 and 256 inputs)."""
  out, n32 = _shape_and_params('fcn32s', (224, 224, 3), 21)
  assert out == (1, 224, 224, 21)
  assert n32 == 14_714_688 + 102_764_544 + 16_781_312 + 86_037
  _, n8 = _shape_and_params('fcn8s', (224, 224, 3), 21)
  assert n8 == n32 + 2 * 16 * 21 * 21 + (512 * 21 + 21) + (256 * 21 + 21)
  _, fixed = _shape_and_params('fcn8s', (224, 224, 3), 21, upsampling='bilinear')
  assert fixed == n32 + (512 * 21 + 21) + (256 * 21 + 21)


def _numpy_bilinear(x, f):
  """Half-pixel-centre bilinear upsampling with edges repeated (torch's align_corners=False)."""
  n, h, w, c = x.shape
  def coords(size):
    src = np.clip((np.arange(size * f) + 0.5) / f - 0.5, 0, size - 1)
    lo = np.floor(src).astype(int)
    return lo, np.minimum(lo + 1, size - 1), src - lo
  r0, r1, rw = coords(h)
  c0, c1, cw = coords(w)
  rows = x[:, r0] * (1 - rw)[None, :, None, None] + x[:, r1] * rw[None, :, None, None]
  return rows[:, :, c0] * (1 - cw)[None, None, :, None] + rows[:, :, c1] * cw[None, None, :, None]


@pytest.mark.parametrize('factor', [2, 4, 8])
def test_bilinear_upsampling(factor):
  """Fixed bilinear = jax.image.resize = the NumPy rule; the learned upsampling at its bilinear
  initialization equals it away from the border (within f/2 pixels it fades to zero)."""
  x = np.random.default_rng(0).normal(size=(2, 6, 5, 3)).astype(np.float32)
  ref = _numpy_bilinear(x, factor)
  fixed = dense.Upsample(factor, False).apply({}, jnp.asarray(x))
  np.testing.assert_allclose(np.asarray(fixed), ref, atol=1e-5)
  up = dense.Upsample(factor, True)
  learned = up.apply(up.init(jax.random.key(0), jnp.asarray(x)), jnp.asarray(x))
  b = factor // 2
  np.testing.assert_allclose(np.asarray(learned)[:, b:-b, b:-b], ref[:, b:-b, b:-b], atol=1e-5)


def test_miou_equals_scikit_learn():
  """scores() from the eval step's confusion matrix (ignore label and padded examples left
  out) against scikit-learn's jaccard_score (macro over the classes present) and accuracy."""
  from sklearn import metrics as skm
  rng = np.random.default_rng(0)
  c = 5
  logits = rng.normal(size=(6, 8, 8, c)).astype(np.float32)
  labels = rng.integers(0, c - 1, (6, 8, 8)).astype(np.uint8)  # class 4 never true
  labels[0, :2] = seg_data.IGNORE
  mask = np.array([1, 1, 1, 1, 1, 0], bool)  # the last example is batch padding
  m = segmentation.EvalMetrics.single_from_model_output(
      logits=jnp.asarray(logits), labels=jnp.asarray(labels), mask=jnp.asarray(mask))
  s = segmentation.scores(m.compute()['confusion'])
  pred = logits.argmax(-1)
  keep = (labels != seg_data.IGNORE) & mask[:, None, None]
  y, p = labels[keep], pred[keep]
  present = np.union1d(y, p)
  assert s['miou'] == pytest.approx(skm.jaccard_score(y, p, labels=present, average='macro'))
  assert s['pixel_accuracy'] == pytest.approx(skm.accuracy_score(y, p))
  per_class = skm.jaccard_score(y, p, labels=present, average=None)
  assert [s['per_class_iou'][k] for k in present] == pytest.approx(per_class, abs=1e-6)
  assert s['mean_accuracy'] == pytest.approx(
      skm.recall_score(y, p, labels=np.unique(y), average='macro'))


def test_scenes_are_deterministic_and_exact():
  rng = np.random.default_rng(1)
  objects = (rng.random((20, 28, 28)) > 0.5).astype(np.uint8) * 200
  labels = rng.integers(0, 10, 20)
  a = seg_data.scenes(objects, labels, 5, 48, 40, 3, 0.5, seed=3)
  b = seg_data.scenes(objects, labels, 5, 48, 40, 3, 0.5, seed=3)
  np.testing.assert_array_equal(a[0], b[0])
  np.testing.assert_array_equal(a[1], b[1])
  images, masks = a
  assert images.shape == (5, 48, 40, 1) and masks.shape == (5, 48, 40)
  assert set(np.unique(masks)) <= set(range(11)) and (masks > 0).any()
  # Every labelled pixel shows an object's pixel (above the threshold); the textured background
  # stays below 40 + 90 * 0.5 + noise, so the drawn pixels are the only ones at 200.
  assert (images[..., 0][masks > 0] > seg_data.OBJECT_THRESHOLD).all()


def test_device_augmentation_moves_the_mask():
  """Flip and pad-and-crop act alike on image and mask (the image here is the mask x 20, so
  any misalignment shows); padding is labelled IGNORE."""
  rng = np.random.default_rng(0)
  masks = rng.integers(0, 11, (8, 16, 16)).astype(np.uint8)
  images = (masks.astype(np.float32) * 20)[..., None]
  cfg = seg_config.get_config().augment
  fn = seg_data.augment(cfg, geometry=True)
  x, y = fn(jax.random.key(1), jnp.asarray(images), jnp.asarray(masks), lambda z: z)
  x, y = np.asarray(x)[..., 0], np.asarray(y)
  labelled = y != seg_data.IGNORE
  assert (~labelled).any() and labelled.mean() > 0.5
  np.testing.assert_array_equal(x[labelled], y[labelled].astype(np.float32) * 20)
  assert (x[~labelled] == 0).all()


def _folder(root, n=6, size=(24, 20), bad=None):
  """A tiny segmentation folder; `bad` makes one mistake of the kind users make."""
  rng = np.random.default_rng(0)
  for split in ('train', 'val'):
    os.makedirs(os.path.join(root, split, 'images'), exist_ok=True)
    if bad != 'no_masks':
      os.makedirs(os.path.join(root, split, 'masks'), exist_ok=True)
    for i in range(n):
      mask = rng.integers(0, 3, size).astype(np.uint8)
      Image.fromarray(mask * 60).save(os.path.join(root, split, 'images', f'{i}.png'))
      if bad == 'no_masks':
        continue
      if bad == 'size' and i == 2:
        mask = np.zeros((size[0] + 1, size[1]), np.uint8)
      if bad == 'value' and i == 1:
        mask[0, 0] = 7
      Image.fromarray(mask).save(os.path.join(root, split, 'masks', f'{i}.png'))
  return str(root)


def test_folder_host_augmentation_moves_the_mask(tmp_path):
  """Crop and flip exactly (the image is the mask x 60); with a zoom, image (bilinear) and mask
  (nearest) keep the run's shape."""
  folder = seg_data.scan_folder(_folder(tmp_path), 3)
  cfg = seg_config.get_config().augment
  ex = seg_data.FolderExamples(folder, 'train', (24, 20, 1), cfg)
  flipped = padded = 0
  for i in range(len(ex)):
    image, mask = ex.load(i, np.random.default_rng(i))
    labelled = mask != seg_data.IGNORE
    padded += (~labelled).any()
    np.testing.assert_array_equal(image[..., 0][labelled], mask[labelled] * 60)
    plain = ex.load(i)[1]
    flipped += not any(np.array_equal(mask[4:-4, 4:-4], np.roll(plain, (dy, dx), (0, 1))[4:-4, 4:-4])
                       for dy in range(-4, 5) for dx in range(-4, 5))
  assert flipped > 0 and padded > 0  # some examples were mirrored, some shifted into padding
  cfg.scale = 0.3
  ex = seg_data.FolderExamples(folder, 'train', (16, 16, 1), cfg)
  image, mask = ex.load(0, np.random.default_rng(0))
  assert image.shape == (16, 16, 1) and mask.shape == (16, 16) and mask.dtype == np.uint8


def _segmentation_config(**changes):
  c = seg_config.get_config()
  c.dataset.image_shape, c.dataset.synthetic_size = '32,32,1', 64
  for k, v in changes.items():
    node = c
    *parents, leaf = k.split('.')
    for p in parents:
      node = node[p]
    node[leaf] = v
  return c


@pytest.mark.parametrize('bad, message', [
    ('size', 'a mask must have its image\'s size'),
    ('value', 'neither a class'),
    ('no_masks', 'has images but'),
])
def test_bad_folders_fail_before_anything_is_written(tmp_path, bad, message):
  root = _folder(tmp_path / 'data', bad=bad)
  c = _segmentation_config(**{'dataset.name': 'segmentation_folder', 'dataset.data_dir': root,
                              'dataset.num_classes': 3, 'dataset.image_shape': '16,16,1'})
  work = tmp_path / 'work'
  with pytest.raises(UserError, match=message):
    loop.validate(c, str(work))
  assert not work.exists()


@needs_fmnist
def test_a_classifier_is_refused_in_one_line(tmp_path):
  proc = run_main(['--workdir', str(tmp_path / 'w'), '--config.model.name=simplenet_cifar_310k'],
                  config='configs/segmentation.py', check=False)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1].startswith('error: model simplenet_cifar_310k '
                                                         'gives one score per image')
  assert 'Traceback' not in proc.stderr and not (tmp_path / 'w').exists()


def test_a_segmentation_folder_trains_streaming(tmp_path):
  root = _folder(tmp_path / 'data', n=8)
  c = _segmentation_config(**{'dataset.name': 'segmentation_folder', 'dataset.data_dir': root,
                              'dataset.num_classes': 3, 'dataset.image_shape': '16,16,1',
                              'dataset.pipeline': 'streaming', 'dataset.num_workers': 0,
                              'model.name': 'unet', 'model.padding': 'same', 'model.depth': 2,
                              'model.width_multiplier': 0.125, 'batch_size': 4,
                              'num_train_steps': 3, 'eval_batch_size': 8, 'log_every_steps': 1})
  r = loop.train_and_evaluate(c, str(tmp_path / 'w'))
  assert 0 <= r['test_miou'] <= 1 and r['dataset']['pipeline'] == 'streaming'
  assert len(r['test_per_class_iou']) == 3


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """A tiny FCN-8s trained on the generated scenes through main.py."""
  if not os.path.exists(FMNIST) and not os.environ.get('CI'):
    pytest.skip('apt-get install dataset-fashion-mnist')
  work = str(tmp_path_factory.mktemp('seg') / 'run')
  run_main(['--workdir', work, '--config.dataset.image_shape=32,32,1',
            '--config.dataset.synthetic_size=96', '--config.num_train_steps=12',
            '--config.batch_size=16', '--config.eval_batch_size=16'],
           config='configs/segmentation.py:model=fcn8s')
  return work


def test_train_then_eval_agree(trained):
  r = load_results(trained)
  assert r['config']['task'] == 'segmentation' and r['config']['model']['name'] == 'fcn8s'
  for key in ('test_miou', 'test_pixel_accuracy', 'test_mean_accuracy', 'test_fw_iou'):
    assert 0 <= r[key] <= 1
  assert set(r['test_per_class_iou']) == set(seg_data.SCENE_CLASSES)
  assert os.path.exists(os.path.join(trained, 'predictions.png'))
  proc = run_main(['--mode=eval', '--workdir', trained], config='configs/segmentation.py')
  assert 'test mIoU' in proc.stdout
  with open(os.path.join(trained, 'eval.json')) as f:
    ev = json.load(f)
  assert ev['test_miou'] == r['test_miou']
  assert ev['test_pixel_accuracy'] == r['test_pixel_accuracy']


def test_explain_and_attack_a_segmentation_run(trained):
  run_main(['--mode=explain', '--workdir', trained, '--explain_images=2', '--explain_ig_steps=128',
            '--explain_smoothgrad_samples=2', '--explain_methods=gradient,integrated_gradients,'
            'gradcam', '--explain_region=all'], config='configs/segmentation.py')
  with open(os.path.join(trained, 'explain', 'results.json')) as f:
    ex = json.load(f)
  rows = {m['method']: m for m in ex['methods']}
  assert set(rows) == {'gradient', 'integrated_gradients', 'gradcam'}
  # Over all pixels the region share is 1, and IG's attributions add up to the score's change
  # (completeness: a check that the region-summed score is what was differentiated).
  assert rows['gradient']['region_share'] == pytest.approx(1.0)
  assert rows['integrated_gradients']['ig_completeness_error'] < 0.05
  run_main(['--mode=attack', '--workdir', trained, '--attack_examples=8', '--attack_steps=3',
            '--attack_eps=0.1'], config='configs/segmentation.py')
  with open(os.path.join(trained, 'attack', 'results.json')) as f:
    at = json.load(f)
  by = {r['attack']: r for r in at['attacks']}
  assert by['pgd']['miou'] <= at['clean_miou'] + 1e-9
  assert by['pgd']['robust_accuracy'] < at['clean_accuracy']
  assert by['pgd_targeted']['target_rate'] >= 0
  proc = run_main(['--mode=shift', '--workdir', trained], config='configs/segmentation.py',
                  check=False)
  assert proc.returncode == 2 and 'does not apply to a segmentation run' in proc.stderr
