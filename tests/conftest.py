"""Shared helpers: run main.py as a user would, tiny configs, reading checkpoints back."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

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
             check: bool = True, config: str = 'configs/default.py') -> subprocess.CompletedProcess:
  env = dict(os.environ)
  env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
  env.update(env_extra or {})
  proc = subprocess.run([sys.executable, 'main.py', f'--config={config}', *args],
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
  from store import checkpoints
  return jax.tree_util.tree_map(np.asarray, checkpoints.load_checkpoint(workdir, step))


def flat_leaves(tree) -> dict:
  import jax
  return {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(tree)}


def assert_same_run(ref_dir: str, other_dir: str, rtol: float = 1e-5) -> None:
  """Two runs' logged losses and final parameters agree within rtol."""
  ref, other = load_results(ref_dir), load_results(other_dir)
  ref_loss = np.array([l for _, l, _ in ref['train_log']])
  other_loss = np.array([l for _, l, _ in other['train_log']])
  assert len(ref_loss) >= 5
  np.testing.assert_allclose(other_loss, ref_loss, rtol=rtol)
  a, b = flat_leaves(load_state(ref_dir)['params']), flat_leaves(load_state(other_dir)['params'])
  assert a.keys() == b.keys()
  va = np.concatenate([a[k].ravel() for k in a])
  vb = np.concatenate([b[k].ravel() for k in a])
  assert np.linalg.norm(va - vb) / np.linalg.norm(va) <= rtol
  for k in a:  # leaf by leaf; conv biases before BatchNorm get no true gradient and hold only
    # float noise (~1e-7), so every leaf is measured against at least 0.1
    scale = max(np.abs(a[k]).max(), 1e-1)
    assert np.abs(a[k] - b[k]).max() / scale <= rtol, k


def run_processes(args: list[str], workdir: str, processes: int = 2, devices: int = 1) -> None:
  """main.py as `processes` cooperating processes (jax.distributed on localhost, gloo)."""
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')
  procs = [subprocess.Popen(
      [sys.executable, 'main.py', '--config=configs/default.py', f'--workdir={workdir}', *args,
       f'--coordinator_address=127.0.0.1:{port}', f'--num_processes={processes}',
       f'--process_id={i}'], cwd=REPO, env=env, stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True) for i in range(processes)]
  outs = [p.communicate(timeout=300)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]


def assert_kill_and_resume_is_bitwise(args: list[str], tmp_path, kill_after_step: int) -> None:
  """An uninterrupted run, and one killed (SIGKILL) once a checkpoint of at least
  `kill_after_step` exists and then rerun: the same final state, bit for bit."""
  ref, killed = str(tmp_path / 'ref'), str(tmp_path / 'killed')
  run_main([f'--workdir={ref}', *args])
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1')
  proc = subprocess.Popen([sys.executable, 'main.py', '--config=configs/default.py',
                           f'--workdir={killed}', *args], cwd=REPO, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  ckpts = os.path.join(killed, 'checkpoints')
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    if os.path.isdir(ckpts) and any(d.isdigit() and int(d) >= kill_after_step
                                    for d in os.listdir(ckpts)):
      break
    time.sleep(0.05)
  assert proc.poll() is None, 'run finished before it could be killed'
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not os.path.exists(os.path.join(killed, 'results.json'))
  resumed = run_main([f'--workdir={killed}', *args])
  assert 'Resumed from' in resumed.stderr
  a, b = flat_leaves(load_state(ref)), flat_leaves(load_state(killed))
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.fixture
def workdir(tmp_path):
  return str(tmp_path / 'run')


@pytest.fixture(scope='session')
def small_trained_net(tmp_path_factory):
  """A small SimpleNet trained on learnable synthetic 16x16x1 data, loaded for analysis with
  XLA's convolutions: (workdir, store.runs.Net, variables, 16 test images, their labels)."""
  import jax.numpy as jnp
  import models
  from kernels import convolutions
  from store import runs
  workdir = str(tmp_path_factory.mktemp('analysis') / 'run')
  run_main([f'--workdir={workdir}', *overrides(
      num_train_steps=160, log_every_steps=40, **{'dataset.image_shape': '16,16,1',
                                                  'model.layers': '8,p,16,p,16',
                                                  'optimizer.learning_rate': 0.02})])
  run = runs.load_run(workdir)
  model = models.create(run.config.model, run.info.num_classes, convolutions=convolutions.XLA)
  test = run.test_split()
  x = jnp.asarray(test.images[:16], jnp.float32)
  return workdir, runs.Net(model, run.preprocess), run.variables, x, jnp.asarray(test.labels[:16])
