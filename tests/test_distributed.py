"""Data parallelism: 8 virtual devices and 2 processes x 2 devices match a single device."""

import os
import socket
import subprocess
import sys

import numpy as np

from conftest import REPO, flat_leaves, load_results, load_state, overrides, run_main

# BatchNorm and dropout on, so global-batch statistics and sharded randomness are exercised.
ARGS = overrides(num_train_steps=8, log_every_steps=1, batch_size=32,
                 **{'model.dropout': 0.1, 'model.layers': '8,p,16,p,16'})


def assert_same_run(ref_dir: str, other_dir: str, rtol: float = 1e-5) -> None:
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


def test_eight_devices_match_one(tmp_path):
  one, eight = str(tmp_path / 'one'), str(tmp_path / 'eight')
  run_main([f'--workdir={one}', *ARGS], devices=1)
  run_main([f'--workdir={eight}', *ARGS], devices=8)
  assert load_results(eight)['num_devices'] == 8
  assert_same_run(one, eight)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def test_two_processes_match_one(tmp_path):
  single, multi = str(tmp_path / 'single'), str(tmp_path / 'multi')
  run_main([f'--workdir={single}', *ARGS], devices=1)
  port = _free_port()
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2')
  procs = [subprocess.Popen(
      [sys.executable, 'main.py', '--config=configs/default.py', f'--workdir={multi}', *ARGS,
       f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2', f'--process_id={i}'],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for i in range(2)]
  outs = [p.communicate(timeout=300)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]
  r = load_results(multi)
  assert (r['num_processes'], r['num_devices']) == (2, 4)
  assert_same_run(single, multi)
