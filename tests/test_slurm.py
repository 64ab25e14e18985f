"""The SLURM launcher against a real one-node SLURM cluster started here
(scripts/slurm_local.sh: Debian's slurm-wlm and munge, run as root).

Without SLURM installed (a developer laptop) the test is skipped with the command that
installs it; under CI=1 (.ci/run, which installs it) a missing or broken SLURM fails it.
"""

import csv
import os
import random
import shutil
import socket
import subprocess
import sys

import pytest

from conftest import REPO, overrides

SCRIPT = os.path.join(REPO, 'scripts', 'slurm_local.sh')


def _unavailable(reason: str):
  if os.environ.get('CI'):
    pytest.fail(f'SLURM is required under CI: {reason}')
  pytest.skip(f'{reason} (`make slurm` installs it; the test starts its own cluster as root)')


def _free_port_pair() -> int:
  """Two consecutive free ports, so this cluster never meets another one on this machine."""
  for _ in range(50):
    port = random.randrange(20000, 40000)
    try:
      with socket.socket() as a, socket.socket() as b:
        a.bind(('127.0.0.1', port))
        b.bind(('127.0.0.1', port + 1))
      return port
    except OSError:
      continue
  raise RuntimeError('no free port pair')


@pytest.fixture(scope='module')
def slurm_env(tmp_path_factory):
  """Starts slurmctld + slurmd in a private directory; yields the env for client commands."""
  if not shutil.which('sbatch') or not os.path.exists('/usr/sbin/slurmctld'):
    _unavailable('SLURM is not installed')
  if os.geteuid() != 0:
    _unavailable('starting slurmd needs root')
  env = dict(os.environ, SLURM_LOCAL_DIR=str(tmp_path_factory.mktemp('slurm')),
             SLURM_LOCAL_PORT=str(_free_port_pair()))
  proc = subprocess.run([SCRIPT, 'start'], env=env, capture_output=True, text=True, timeout=120)
  if proc.returncode != 0:
    _unavailable(f'the local cluster did not start:\n{proc.stderr[-3000:]}')
  env['SLURM_CONF'] = proc.stdout.strip().rsplit('=', 1)[1]
  yield env
  subprocess.run([SCRIPT, 'stop'], env=env, capture_output=True, timeout=60)


def test_two_trial_sweep_runs_through_sbatch_and_reports(tmp_path, slurm_env):
  work = tmp_path / 'sweep'
  command = [sys.executable, 'main.py', '--mode=sweep', '--launcher=slurm', '--parallel=0',
             '--slurm_cpus=1', '--slurm_time=00:10:00', f'--config={REPO}/configs/default.py',
             *overrides(num_train_steps=3), f'--workdir={work}',
             '--sweep=model.width_multiplier=0.5,1']
  proc = subprocess.run(command, cwd=REPO, env=slurm_env, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  assert 'Submitted SLURM job array' in proc.stdout
  assert 'Summary: 2 done, 0 failed, 0 skipped (2 trials)' in proc.stdout, proc.stdout
  (script,) = [f for f in os.listdir(work / 'slurm') if f.endswith('.sh')]
  assert '#SBATCH --array=0-1\n' in (work / 'slurm' / script).read_text()
  assert len([f for f in os.listdir(work / 'slurm') if f.endswith('.out')]) == 2  # task logs
  with open(work / 'results.csv') as f:
    rows = list(csv.DictReader(f))
  assert sorted(r['trial'] for r in rows) == ['width_multiplier=0.5', 'width_multiplier=1']
  assert all(r['status'] == 'done' and r['test_accuracy'] for r in rows)
  for name in ('width_multiplier=0.5', 'width_multiplier=1'):  # each ran as an array task
    status = (work / 'trials' / name / 'status.json').read_text()
    assert '"slurm_array_task_id"' in status and '"state": "done"' in status
  # Rerunning submits nothing: both trials are finished.
  again = subprocess.run(command, cwd=REPO, env=slurm_env, capture_output=True, text=True,
                         timeout=300)
  assert 'Summary: 0 done, 0 failed, 2 skipped (2 trials)' in again.stdout, again.stdout
  assert 'Submitted' not in again.stdout


def test_a_task_warned_of_its_time_limit_saves_requeues_itself_and_resumes(tmp_path, slurm_env):
  """SLURM's warning ahead of the time limit (the script's --signal=B:USR1@...), sent here by
  hand: the trainer saves, the runner requeues its task, and the task resumes to the end."""
  import re
  import time
  work = tmp_path / 'sweep'
  command = [sys.executable, 'main.py', '--mode=sweep', '--launcher=slurm', '--parallel=0',
             '--slurm_cpus=1', '--slurm_time=00:10:00', f'--config={REPO}/configs/default.py',
             *overrides(dataset__synthetic_size=2048, num_train_steps=1500, log_every_steps=10),
             f'--workdir={work}', '--sweep=seed=0']
  proc = subprocess.run([*command, '--noslurm_wait'], cwd=REPO, env=slurm_env,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  job = re.search(r'Submitted SLURM job array (\d+)', proc.stdout).group(1)
  script = next((work / 'slurm').glob('*.sh')).read_text()
  assert '#SBATCH --signal=B:USR1@120\n' in script and '#SBATCH --requeue\n' in script
  log = work / 'trials' / 'seed=0' / 'log.txt'
  end = time.time() + 180
  while time.time() < end and not (log.exists() and 'step 20/' in log.read_text()):
    time.sleep(0.5)
  signal = subprocess.run(['scancel', '--batch', '--signal=USR1', f'{job}_0'], env=slurm_env,
                          capture_output=True, text=True)
  assert signal.returncode == 0, signal.stderr
  # SLURM holds a requeued task ~2.5 minutes (its BeginTime); an administrator's release of the
  # hold keeps this test short. The requeue itself is the runner's.
  end = time.time() + 120
  while time.time() < end:
    state = subprocess.run(['squeue', '--noheader', f'--jobs={job}', '--format=%T'],
                           env=slurm_env, capture_output=True, text=True).stdout.split()
    if 'stopped by SIGTERM' in log.read_text() and state == ['PENDING']:
      break
    time.sleep(0.5)
  subprocess.run(['scontrol', 'update', f'JobId={job}_0', 'StartTime=now'], env=slurm_env,
                 check=True)
  # The rerun finds the requeued task in the queue, waits for it and summarizes.
  again = subprocess.run(command, cwd=REPO, env=slurm_env, capture_output=True, text=True,
                         timeout=400)
  text = log.read_text()
  assert 'stopped by SIGTERM at step' in text and 'Resumed from' in text, text[-3000:]
  assert 'Summary: 1 done' in again.stdout or 'Summary: 0 done, 0 failed, 1 skipped' in \
      again.stdout, again.stdout[-3000:]
