"""Runs that survive clusters (docs/robustness.md): real processes, real signals, real files.

SIGTERM/SIGINT save and resume exactly; a corrupt newest checkpoint is skipped; a full disk is one
line; grain workers and sweep trials die with their parent; one writer per workdir."""

import glob
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO, assert_same_run, load_results, overrides, run_main

import lifecycle
from errors import UserError
from store import checkpoints

# Long enough that a signal lands mid-epoch: 2048 examples / 16 = 128 steps per epoch.
LONG = overrides(dataset__synthetic_size=2048, num_train_steps=0, num_epochs=2,
                 log_every_steps=10)


def start_main(args, log_path, env_extra=None) -> subprocess.Popen:
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1', **(env_extra or {}))
  log = open(log_path, 'w')
  return subprocess.Popen([sys.executable, 'main.py', '--config=configs/default.py', *args],
                          cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)


def wait_for(path: str, text: str, proc: subprocess.Popen, timeout: float = 180) -> None:
  end = time.time() + timeout
  while time.time() < end:
    with open(path) as f:
      if text in f.read():
        return
    assert proc.poll() is None, open(path).read()[-3000:]
    time.sleep(0.2)
  raise AssertionError(f'{text!r} not in {path} after {timeout}s')


def alive(pid: int) -> bool:
  """Running (a zombie waiting for its reaper holds nothing and counts as gone)."""
  try:
    with open(f'/proc/{pid}/stat') as f:
      return f.read().rsplit(')', 1)[1].split()[0] != 'Z'
  except OSError:
    return False


@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGINT])
def test_a_signal_mid_epoch_saves_that_step_and_the_rerun_resumes_bitwise(tmp_path, signum):
  work, log = str(tmp_path / 'w'), str(tmp_path / 'log')
  proc = start_main([*LONG, f'--workdir={work}'], log)
  wait_for(log, 'step 30/256', proc)
  proc.send_signal(signum)
  assert proc.wait(timeout=120) == lifecycle.STOPPED_EXIT
  out = open(log).read()
  step = checkpoints.saved_steps(work)[-1]
  assert 30 <= step < 128, checkpoints.saved_steps(work)  # mid-epoch: nothing else was saved
  assert f'stopped by {signal.Signals(signum).name} at step {step}/256' in out
  assert 'rerun the same command to resume' in out and 'Traceback' not in out
  resumed = run_main([*LONG, f'--workdir={work}']).stderr
  assert f'Resumed from {os.path.join(work, "checkpoints")} at step {step}' in resumed
  if signum == signal.SIGINT:  # the same path as SIGTERM from here on
    return
  reference = str(tmp_path / 'reference')
  run_main([*LONG, f'--workdir={reference}'])
  assert_same_run(reference, work, rtol=0)


def _flip(path: str, count: int = 16) -> None:
  data = bytearray(open(path, 'rb').read())
  for i in range(count):
    data[len(data) // 2 + i] ^= 0xFF
  open(path, 'wb').write(bytes(data))


@pytest.fixture(scope='module')
def three_checkpoints(tmp_path_factory):
  """A run with checkpoints at steps 10, 20 and 30."""
  work = str(tmp_path_factory.mktemp('ckpt') / 'w')
  run_main([*overrides(num_train_steps=30, checkpoint_every_steps=10, keep_checkpoints=5,
                       log_every_steps=10), f'--workdir={work}'])
  return work


@pytest.mark.parametrize('damage', ['meta', 'params', 'every_state_file'])
def test_a_corrupt_newest_checkpoint_is_skipped_by_eval_and_set_aside_by_resume(
    tmp_path, three_checkpoints, damage):
  work = str(tmp_path / 'w')
  shutil.copytree(three_checkpoints, work)
  newest = os.path.join(work, 'checkpoints', '30')
  if damage == 'meta':  # the metadata cut short
    path = os.path.join(newest, 'meta', 'metadata')
    open(path, 'wb').write(open(path, 'rb').read()[:100])
  elif damage == 'params':  # 16 bytes of array data: only the checksums can tell
    _flip(max(glob.glob(os.path.join(newest, 'state', 'ocdbt.process_0', 'd', '*')),
              key=os.path.getsize))
  else:
    for path in glob.glob(os.path.join(newest, 'state', '**', '*'), recursive=True):
      if os.path.isfile(path):
        _flip(path, os.path.getsize(path) // 2)
  shown = run_main(['--mode=eval', f'--workdir={work}'])
  assert 'checkpoints/30 is unusable' in shown.stderr and 'Traceback' not in shown.stderr
  assert f'{work} step 20: test accuracy' in shown.stdout
  assert checkpoints.load_checkpoint(work)['step'] == 20  # what every mode loads
  with pytest.raises(UserError, match='checkpoints/30 is unusable'):  # asked for by step
    checkpoints.restore_run(work, 30)
  if damage != 'params':
    return
  # Training again (extended) resumes from 20 and keeps the bad one aside.
  resumed = run_main([*overrides(num_train_steps=40, checkpoint_every_steps=10,
                                 keep_checkpoints=5, log_every_steps=10), f'--workdir={work}'])
  assert 'at step 20.' in resumed.stderr and 'were renamed <step>.corrupt' in resumed.stderr
  assert os.path.isdir(newest + '.corrupt') and checkpoints.saved_steps(work)[-1] == 40


def test_no_usable_checkpoint_is_one_error_line(tmp_path, three_checkpoints):
  work = str(tmp_path / 'w')
  shutil.copytree(three_checkpoints, work)
  for step in (10, 20, 30):
    path = os.path.join(work, 'checkpoints', str(step), 'meta', 'metadata')
    open(path, 'w').write('{')
  shown = run_main(['--mode=eval', f'--workdir={work}'], check=False)
  assert shown.returncode == 2 and 'Traceback' not in shown.stderr
  assert shown.stderr.strip().splitlines()[-1].startswith('error: no checkpoint in')
  again = run_main([*overrides(num_train_steps=40), f'--workdir={work}'], check=False)
  assert again.returncode == 2 and 'error: no checkpoint in' in again.stderr
  assert checkpoints.saved_steps(work) == [10, 20, 30]  # nothing renamed or removed


def test_checksums_catch_a_changed_array_and_pass_old_checkpoints():
  tree = {'a': np.arange(6, dtype=np.float32).reshape(2, 3), 'b': np.zeros(3, np.int32)}
  meta = {'checksums': checkpoints.checksums(tree)}
  checkpoints.verify(tree, meta)
  checkpoints.verify(tree, {})  # saved before checksums existed
  changed = {'a': tree['a'].copy(), 'b': tree['b']}
  changed['a'][1, 2] = np.nextafter(changed['a'][1, 2], 10)
  with pytest.raises(ValueError, match=r'checksum mismatch in 1 array\(s\) \(a\)'):
    checkpoints.verify(changed, meta)
  with pytest.raises(ValueError):  # same bytes, another shape
    checkpoints.verify({'a': tree['a'].reshape(3, 2), 'b': tree['b']}, meta)


def _tmpfs(path: str, size: str) -> bool:
  os.makedirs(path, exist_ok=True)
  return subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={size}', 'tmpfs', path],
                        capture_output=True).returncode == 0


def test_a_full_disk_is_one_error_line_and_the_rerun_resumes(tmp_path):
  disk = str(tmp_path / 'disk')
  if os.geteuid() != 0 or not _tmpfs(disk, '400k'):
    pytest.skip('needs root and tmpfs mounts to make a small disk')
  try:
    work = os.path.join(disk, 'w')
    args = overrides(num_train_steps=100, checkpoint_every_steps=10, keep_checkpoints=100,
                     log_every_steps=10)
    full = run_main([*args, f'--workdir={work}'], check=False)
    assert full.returncode == 2, full.stderr[-3000:]
    assert 'Traceback' not in full.stderr, full.stderr[-3000:]
    last = full.stderr.strip().splitlines()[-1]
    assert last.startswith('error: cannot write') and 'no space left' in last
    saved = checkpoints.saved_steps(work)
    assert saved and not glob.glob(os.path.join(work, 'checkpoints', '*tmp*'))
    moved = str(tmp_path / 'w')  # the user frees space: here, the run moves to a bigger disk
    shutil.copytree(work, moved)
  finally:
    subprocess.run(['umount', disk])
  again = run_main([*args, f'--workdir={moved}'])
  assert f'at step {saved[-1]}.' in again.stderr
  assert load_results(moved)['steps'] == 100


def test_disk_errors_are_recognized_through_wrappers():
  import errno
  assert lifecycle.disk_error(OSError(errno.ENOSPC, 'No space', '/x'))[1] == '/x'
  try:
    try:
      raise OSError(errno.EROFS, 'Read-only file system')
    except OSError as inner:
      raise RuntimeError('save failed') from inner
  except RuntimeError as outer:
    assert lifecycle.disk_error(outer)[0] == 'the file system is read-only'
  assert lifecycle.disk_error(ValueError('RESOURCE_EXHAUSTED: ... No space left on device'))
  assert lifecycle.disk_error(ValueError('a bug')) is None


def test_grain_workers_die_with_a_killed_trainer(tmp_path):
  from test_streaming import write_folder
  root = write_folder(tmp_path / 'folder', n=200)
  log = str(tmp_path / 'log')
  proc = start_main(['--config.dataset.name=folder', f'--config.dataset.data_dir={root}',
                     '--config.dataset.pipeline=streaming', '--config.dataset.num_workers=2',
                     '--config.model.name=simplenet', '--config.model.layers=8,p,16,p,16',
                     '--config.batch_size=12', '--config.num_epochs=50',
                     '--config.log_every_steps=10', f'--workdir={tmp_path / "w"}'], log)
  wait_for(log, 'step 20/', proc)
  children = subprocess.run(['pgrep', '-P', str(proc.pid)], capture_output=True,
                            text=True).stdout.split()
  assert len(children) >= 2  # the workers (and multiprocessing's resource tracker)
  proc.kill()
  proc.wait()
  end = time.time() + 30
  while time.time() < end and any(alive(int(c)) for c in children):
    time.sleep(0.2)
  assert not [c for c in children if alive(int(c))]


def test_a_second_writer_is_refused_naming_the_first(tmp_path):
  work, log = str(tmp_path / 'w'), str(tmp_path / 'log')
  endless = overrides(dataset__synthetic_size=2048, num_train_steps=10**6, log_every_steps=10)
  first = start_main([*endless, '--config.seed=0', f'--workdir={work}'], log)
  wait_for(log, 'step 10/', first)
  try:
    second = run_main([*endless, '--config.seed=1', f'--workdir={work}'], check=False)
    assert second.returncode == 2 and 'Traceback' not in second.stderr
    line = second.stderr.strip().splitlines()[-1]
    assert line.startswith(f'error: {work} is in use by pid {first.pid} (--mode=train'), line
    probe = run_main(['--mode=eval', f'--workdir={work}'], check=False)  # a reader too
    assert probe.returncode == 2 and f'in use by pid {first.pid}' in probe.stderr
    assert lifecycle.holder(work).startswith(f'pid {first.pid}')
  finally:
    first.kill()
    first.wait()
  assert lifecycle.holder(work) is None  # the kernel dropped the dead holder's lock
  config = open(os.path.join(work, 'config.json')).read()
  assert '"seed": 0' in config  # the refused run wrote nothing


def test_lock_is_shared_by_readers_and_taken_over_from_the_dead(tmp_path):
  work = str(tmp_path / 'w')
  code = ('import sys, time; sys.path.insert(0, sys.argv[1]); import lifecycle; '
          'lifecycle.hold(sys.argv[2], "eval", exclusive=False); print("held", flush=True); '
          'time.sleep(60)')
  reader = subprocess.Popen([sys.executable, '-c', code, REPO, work], stdout=subprocess.PIPE,
                            text=True)
  assert reader.stdout.readline().strip() == 'held'
  try:
    lifecycle.hold(work, 'explain', exclusive=False)  # readers share
    lifecycle.release(work)
    with pytest.raises(UserError, match=f'in use by pid {reader.pid}'):
      lifecycle.hold(work, 'train')
  finally:
    reader.kill()
    reader.wait()
  with lifecycle.holding(work, 'train'):
    assert lifecycle.is_held(work)
  assert not lifecycle.is_held(work)


def test_a_killed_sweep_stops_its_trials_and_the_rerun_finishes_them(tmp_path):
  sweep_file = tmp_path / 'sweep.py'
  sweep_file.write_text('from configs import default\n\n'
                        'def get_config(arg=None):\n  return default.get_config(arg)\n\n'
                        'def get_sweep():\n  return [{"seed": 0}, {"seed": 1}]\n')
  work = str(tmp_path / 'sweep')
  longer = overrides(dataset__synthetic_size=2048, num_train_steps=800, log_every_steps=10)
  args = [sys.executable, 'main.py', '--mode=sweep', f'--config={sweep_file}', *longer,
          f'--workdir={work}', '--parallel=2']
  sweep = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True)
  logs = [os.path.join(work, 'trials', f'seed={s}', 'log.txt') for s in (0, 1)]
  end = time.time() + 180
  while time.time() < end and not all(
      os.path.exists(p) and 'step 20/' in open(p).read() for p in logs):
    time.sleep(0.2)
  trainers = subprocess.run(['pgrep', '-P', str(sweep.pid)], capture_output=True,
                            text=True).stdout.split()
  assert len(trainers) == 2
  sweep.kill()  # kill -9 of the sweep process alone, not its group
  sweep.wait()
  end = time.time() + 60
  while time.time() < end and any(alive(int(p)) for p in trainers):
    time.sleep(0.2)
  assert not [p for p in trainers if alive(int(p))]
  for p in logs:
    assert 'stopped by SIGTERM at step' in open(p).read()  # each saved before it ended
  rerun = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert 'Summary: 2 done, 0 failed, 0 skipped (2 trials)' in rerun.stdout, rerun.stdout[-3000:]
  for p in logs:
    assert 'Resumed from' in open(p).read()


def test_a_trial_still_held_by_an_earlier_trainer_is_waited_for_not_run_twice(tmp_path):
  from sweeps import runner
  trial_dir = str(tmp_path / 'trial')
  os.makedirs(trial_dir)
  code = ('import sys, time; sys.path.insert(0, sys.argv[1]); import lifecycle; '
          'lifecycle.hold(sys.argv[2], "train"); print("held", flush=True); time.sleep(3)')
  holder = subprocess.Popen([sys.executable, '-c', code, REPO, trial_dir],
                            stdout=subprocess.PIPE, text=True)
  assert holder.stdout.readline().strip() == 'held'
  log_path = os.path.join(trial_dir, 'log.txt')
  t0 = time.time()
  with open(log_path, 'a') as log:
    runner._wait_for_holder(trial_dir, log)
  assert holder.poll() is not None and time.time() - t0 > 1  # it waited for the holder to end
  assert f'waiting for pid {holder.pid}' in open(log_path).read()


# ----------------------------------------------------------------------------- bad inputs


def _one_error_line(proc, expected: str) -> None:
  assert proc.returncode == 2 and 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  errors = [l for l in proc.stderr.splitlines() if l.startswith('error:')]
  assert len(errors) == 1 and expected in errors[0], proc.stderr[-3000:]


def test_a_config_file_that_does_not_exist_without_overrides(tmp_path):
  proc = subprocess.run([sys.executable, 'main.py', '--config=configs/nonexistent.py',
                         f'--workdir={tmp_path / "w"}'], cwd=REPO, capture_output=True, text=True)
  _one_error_line(proc, 'config file configs/nonexistent.py not found')
  assert not os.path.exists(tmp_path / 'w')


@pytest.mark.parametrize('args, expected', [
    (['--mode=attack', '--attack_eps=8'], '--attack_eps=8 is beyond 1, the widest linf radius'),
    (['--mode=attack', '--attack_norm=l2', '--attack_eps=100'], 'widest l2 radius'),
    (['--mode=attack', '--attack_steps=0'], '--attack_steps must be positive'),
    (['--mode=explain', '--explain_images=0'], '--explain_images must be positive'),
    (['--mode=compress', '--compress_out=.'], '--compress_out must name a new folder'),
    (['--mode=compress', '--compress_out=checkpoints'], 'not checkpoints/ or tensorboard/'),
    (['--mode=compress', '--compress_out=tensorboard/x'], '--compress_out must name'),
    (['--mode=compress', '--compress_out=../elsewhere'], '--compress_out must name'),
])
def test_bad_mode_options_are_refused_before_anything_is_written(three_checkpoints, args,
                                                                 expected):
  before = {p: os.path.getmtime(p) for p in glob.glob(os.path.join(three_checkpoints, '**'),
                                                      recursive=True)}
  _one_error_line(run_main([*args, f'--workdir={three_checkpoints}'], check=False), expected)
  after = {p: os.path.getmtime(p) for p in glob.glob(os.path.join(three_checkpoints, '**'),
                                                     recursive=True)}
  assert after == before


def test_an_image_folder_with_one_class_is_refused(tmp_path):
  from test_streaming import write_folder
  root = write_folder(tmp_path / 'folder', n=4, classes=1, val=2)
  proc = run_main([*overrides(), '--config.dataset.name=folder', '--config.dataset.image_shape=',
                   f'--config.dataset.data_dir={root}', f'--workdir={tmp_path / "w"}'],
                  check=False)
  _one_error_line(proc, 'has 1 class folder(s) (class0); a classifier needs at least 2')


def test_the_gan_mode_stops_on_sigterm_with_a_checkpoint_and_resumes(small_trained_net, tmp_path):
  from test_gan import GAN, _gan_args
  work, log = str(tmp_path / 'gan'), str(tmp_path / 'log')
  args = _gan_args(work, small_trained_net[0], num_train_steps=10**6,
                   checkpoint_every_steps=10**5, **{'gan.eval_every_steps': 10**5})
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1')
  proc = subprocess.Popen([sys.executable, 'main.py', f'--config={GAN}', *args], cwd=REPO,
                          env=env, stdout=open(log, 'w'), stderr=subprocess.STDOUT)
  wait_for(log, 'step 10/', proc)
  proc.send_signal(signal.SIGTERM)
  assert proc.wait(timeout=120) == lifecycle.STOPPED_EXIT
  (step,) = checkpoints.saved_steps(work)
  assert step >= 10 and f'stopped by SIGTERM at step {step}/' in open(log).read()
  finish = _gan_args(work, small_trained_net[0], num_train_steps=step + 2,
                     checkpoint_every_steps=10**5, **{'gan.eval_every_steps': 10**5})
  resumed = run_main(finish, config=GAN)
  assert f'at step {step}.' in resumed.stderr


def test_several_processes_agree_on_the_step_they_save(tmp_path):
  """Only the second of two processes gets SIGTERM; both stop and save the same step."""
  import socket
  work = str(tmp_path / 'w')
  args = overrides(dataset__synthetic_size=2048, num_train_steps=10**6, log_every_steps=10)
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  logs = [str(tmp_path / f'log{i}') for i in range(2)]
  procs = [start_main([f'--workdir={work}', *args, f'--coordinator_address=127.0.0.1:{port}',
                       '--num_processes=2', f'--process_id={i}'], logs[i]) for i in range(2)]
  try:
    wait_for(logs[0], 'step 20/', procs[0])
    procs[1].send_signal(signal.SIGTERM)
    assert [p.wait(timeout=120) for p in procs] == [lifecycle.STOPPED_EXIT] * 2
  finally:
    for p in procs:
      p.kill()
  (step,) = checkpoints.saved_steps(work)
  assert step % 10 == 0  # a log step, where the processes already wait for each other
  first = open(logs[0]).read()
  assert f'stopped by a signal to another process of the run at step {step}/' in first
  assert f'stopped by SIGTERM at step {step}/' in open(logs[1]).read()
