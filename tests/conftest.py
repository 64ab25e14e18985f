"""Shared helpers: run main.py as a user would, tiny configs, reading checkpoints back."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

# A tiny experiment: synthetic 16x16x3 data, a 3-conv SimpleNet, a handful of steps.
TINY = {
    'dataset.name': 'synthetic', 'dataset.image_shape': '16,16,3', 'dataset.synthetic_size': 256,
    'model.name': 'simplenet', 'model.layers': '8,p,16,p,16', 'batch_size': 16,
    'num_train_steps': 6, 'log_every_steps': 1, 'eval_batch_size': 64,
    'optimizer.learning_rate': 0.05,
}


def overrides(**changes) -> list[str]:
  """TINY plus `changes` (keys with '__' for '.') as --config.* flags."""
  cfg = dict(TINY)
  cfg.update({k.replace('__', '.'): v for k, v in changes.items()})
  return [f'--config.{k}={v}' for k, v in cfg.items()]


def run_main(args: list[str], devices: int = 1, timeout: float = 300, env_extra=None,
             check: bool = True) -> subprocess.CompletedProcess:
  env = dict(os.environ)
  env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
  env.update(env_extra or {})
  proc = subprocess.run([sys.executable, 'main.py', '--config=configs/default.py', *args],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
  if check and proc.returncode != 0:
    raise AssertionError(f'main.py failed ({proc.returncode}):\n{proc.stderr[-4000:]}')
  return proc


def assert_losses_track(losses, reference, rtol: float, first: int | None = None) -> None:
  """Two runs' logged losses agree within rtol; with `first`, only over the first logged steps
  (low-precision runs drift apart with every step's rounding), and the loss must keep falling."""
  losses, reference = np.asarray(losses), np.asarray(reference)
  assert len(reference) >= 5 and np.isfinite(losses).all() and losses[-1] < losses[0]
  np.testing.assert_allclose(losses[:first], reference[:first], rtol=rtol)


def load_results(workdir) -> dict:
  with open(os.path.join(workdir, 'results.json')) as f:
    return json.load(f)


def load_state(workdir, step=None) -> dict:
  """The saved train state of the latest (or given) checkpoint as numpy arrays."""
  import jax
  from train import checkpoints
  return jax.tree_util.tree_map(np.asarray, checkpoints.load_checkpoint(workdir, step))


def flat_leaves(tree) -> dict:
  import jax
  return {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(tree)}


@pytest.fixture
def workdir(tmp_path):
  return str(tmp_path / 'run')


@pytest.fixture(scope='session')
def small_trained_net(tmp_path_factory):
  """A small SimpleNet trained on learnable synthetic 16x16x1 data, loaded for analysis with
  XLA's convolutions: (workdir, explain.Net, variables, 16 test images, their labels)."""
  import jax.numpy as jnp
  import models
  from analysis import explain
  from kernels import convolutions
  from train import checkpoints
  workdir = str(tmp_path_factory.mktemp('analysis') / 'run')
  run_main([f'--workdir={workdir}', *overrides(
      num_train_steps=160, log_every_steps=40, **{'dataset.image_shape': '16,16,1',
                                                  'model.layers': '8,p,16,p,16',
                                                  'optimizer.learning_rate': 0.02})])
  run = checkpoints.load_run(workdir)
  model = models.create(run.config.model, run.info.num_classes, convolutions=convolutions.XLA)
  test = run.test_split()
  x = jnp.asarray(test.images[:16], jnp.float32)
  return workdir, explain.Net(model, run.preprocess), run.variables, x, jnp.asarray(test.labels[:16])
