"""The DCGAN: each network's step lowers its loss, samples look like the data, the Fréchet
distance (exact on Gaussians; real vs real far below real vs noise), and --mode=gan end to end
with resume, its samples feeding a classifier through dataset.extra_train, and bad inputs."""

import os

import jax
import jax.numpy as jnp
import numpy as np

from conftest import load_results, overrides, run_main

GAN = 'configs/dcgan_fashion_mnist.py'


def small_gan(num_classes=3, shape=(16, 16, 1)):
  from configs import dcgan_fashion_mnist
  from gan import train
  c = dcgan_fashion_mnist.get_config()
  c.model.width, c.model.z_dim = 8, 16
  return train.Gan(c, shape, num_classes)


def test_one_step_of_each_network_lowers_its_loss_on_a_fixed_batch():
  from gan import train
  gan = small_gan()
  state = gan.init(jax.random.key(0))
  rng = np.random.default_rng(0)
  real = train.from_pixels(jnp.asarray(rng.integers(0, 256, (32, 16, 16, 1)), jnp.uint8))
  y = jnp.asarray(rng.integers(0, 3, 32), jnp.int32)
  z = jax.random.normal(jax.random.key(1), (32, 16))
  fake0, _ = train.generate(gan.G, state.g, z, y, train=True)
  d_before, _ = train.d_loss(gan.D, state.d['params'], state.d['batch_stats'], real, fake0, y)
  new, losses = jax.jit(gan.update)(state, real, y, z)
  d_after, _ = train.d_loss(gan.D, new.d['params'], state.d['batch_stats'], real, fake0, y)
  assert float(d_after) < float(d_before) and np.isclose(losses['d_loss'], d_before, rtol=1e-5)
  fake1, _ = train.generate(gan.G, new.g, z, y, train=True)
  g_before = train.g_loss(gan.D, new.d, fake0, y)
  g_after = train.g_loss(gan.D, new.d, fake1, y)
  assert float(g_after) < float(g_before)
  assert int(new.step) == 1


def test_samples_have_the_datas_shape_and_range_class_by_class():
  gan = small_gan()
  state = gan.init(jax.random.key(0))
  images, labels = gan.samples(state.g, 4, seed=0)
  assert images.dtype == np.uint8 and images.shape == (12, 16, 16, 1)
  assert labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
  assert len(np.unique(images)) > 1 and not np.array_equal(images[0], images[4])
  from gan import train
  px = np.asarray(train.to_pixels(jnp.array([-1.0, -0.999, 0.0, 1.0, 1.5])))
  assert px.tolist() == [0, 0, 128, 255, 255] and px.dtype == np.uint8  # tanh range -> pixels
  again, _ = gan.samples(state.g, 4, seed=0)
  assert np.array_equal(images, again)


def test_frechet_distance_is_exact_on_gaussians_and_separates_real_from_noise(small_trained_net):
  from gan import frechet
  from store import runs
  mu1, mu2 = np.array([0.0, 1.0]), np.array([2.0, 1.0])
  a, b = np.diag([1.0, 4.0]), np.diag([9.0, 1.0])
  want = 4.0 + (1 + 9 - 2 * 3) + (4 + 1 - 2 * 2)
  assert abs(frechet.distance(mu1, a, mu2, b) - want) < 1e-9
  assert abs(frechet.distance(mu1, a, mu1, a)) < 1e-9
  from data import datasets
  run = runs.load_run(small_trained_net[0])
  real = datasets._synthetic(run.info, 2000, seed=5)  # more of the classifier's kind of data
  f = frechet.features(run, real.images)
  assert f.ndim == 2 and f.shape[0] == 2000
  half = 1000
  noise = np.random.default_rng(0).integers(0, 256, real.images[:half].shape).astype(np.uint8)
  real_real = frechet.between(f[:half], f[half:2 * half])
  real_noise = frechet.between(f[:half], frechet.features(run, noise))
  assert real_real * 20 < real_noise, (real_real, real_noise)


def _gan_args(workdir, classifier, **changes):
  cfg = {'dataset.name': 'synthetic', 'dataset.image_shape': '16,16,1',
         'dataset.synthetic_size': 256, 'model.width': 8, 'model.z_dim': 16, 'batch_size': 16,
         'num_train_steps': 6, 'log_every_steps': 2, 'checkpoint_every_steps': 3,
         'gan.eval_every_steps': 3, 'gan.eval_per_class': 3, 'gan.export_per_class': 5,
         'gan.classifier': classifier, **changes}
  return ['--mode=gan', f'--workdir={workdir}', *[f'--config.{k}={v}' for k, v in cfg.items()]]


def test_gan_mode_trains_resumes_and_its_samples_train_a_classifier(small_trained_net, tmp_path):
  w = str(tmp_path / 'gan')
  run_main(_gan_args(w, small_trained_net[0]), config=GAN)
  first = load_results(os.path.join(w, 'gan'))
  assert [h['step'] for h in first['history']] == [3, 6]
  run_main(_gan_args(w, small_trained_net[0], num_train_steps=9), config=GAN)  # resumes
  r = load_results(os.path.join(w, 'gan'))
  assert [h['step'] for h in r['history']] == [3, 6, 9] and r['history'][:2] == first['history']
  assert r['steps'] == 9 and r['frechet_distance_noise'] > r['frechet_distance_real_vs_real']
  assert len(r['per_class_accuracy']) == 10 and 0 <= r['generated_accuracy'] <= 1
  for name in ('samples.png', 'fd_curve.png', 'results.md'):
    assert os.path.getsize(os.path.join(w, 'gan', name)) > 100, name
  with np.load(os.path.join(w, 'gan', 'samples.npz')) as f:
    assert f['images'].shape == (50, 16, 16, 1) and np.bincount(f['labels']).tolist() == [5] * 10
  c = str(tmp_path / 'classifier')
  run_main([f'--workdir={c}', *overrides(**{'dataset.image_shape': '16,16,1',
                                            'dataset.extra_train': f'{w}/gan/samples.npz',
                                            'dataset.extra_per_class': 2})])
  assert load_results(c)['dataset']['num_train'] == 256 + 20


def test_bad_gan_inputs_fail_with_one_line(small_trained_net, tmp_path):
  def bad(args, config=GAN):
    proc = run_main(args, check=False, config=config)
    errs = [line for line in proc.stderr.splitlines() if line.startswith('error:')]
    assert proc.returncode == 2 and len(errs) == 1 and 'Traceback' not in proc.stderr, proc.stderr
    return errs[0]

  w = str(tmp_path / 'g')
  assert 'not a trained run' in bad(_gan_args(w, str(tmp_path / 'none')))
  assert '16x16x1 images of 10 classes' in bad(_gan_args(w, small_trained_net[0],
                                                         **{'dataset.image_shape': '16,16,3'}))
  assert 'divide by 4' in bad(_gan_args(w, small_trained_net[0],
                                        **{'dataset.image_shape': '18,18,1'}))
  assert 'model.name=dcgan' in bad(['--mode=gan', f'--workdir={w}'], config='configs/default.py')
  assert not os.path.exists(os.path.join(w, 'checkpoints'))
