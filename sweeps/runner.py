"""One trial's directory and the process that runs it.

  <workdir>/trials/<name>/
    trial.json    overrides, config flags, params, MACs, layout (written by the launcher)
    command.sh    the trial's exact command, to rerun it by hand
    status.json   running | done | failed | interrupted, with the error of a failure
    log.txt       the trial's output, every attempt appended
    results.json, checkpoints/, tensorboard/   written by the training run itself

`python -m sweeps.runner TRIAL_DIR` runs one trial; it is what each SLURM array task executes,
and the local launcher calls `run_trial` from its worker threads. Training is a child process
(`main.py --workdir=TRIAL_DIR ...`), so a crash, a NaN or an out-of-memory kill of one trial is
recorded here and never takes the launcher or the other trials down.
"""

from __future__ import annotations

import fcntl
import os
import shlex
import signal
import socket
import subprocess
import sys
import time

import lifecycle
from util import read_json, write_json  # noqa: F401  (the trial files' readers use them too)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAIN = os.path.join(REPO, 'main.py')
TRIAL, STATUS, LOG, COMMAND, RESULTS = ('trial.json', 'status.json', 'log.txt', 'command.sh',
                                        'results.json')
SLURM_VARS = ('SLURM_JOB_ID', 'SLURM_ARRAY_JOB_ID', 'SLURM_ARRAY_TASK_ID', 'SLURMD_NODENAME')


def command(trial: dict, trial_dir: str) -> list[str]:
  """The trial's training command: this Python, main.py, its config flags, its workdir."""
  return [sys.executable, MAIN, *trial['config_args'], f'--workdir={trial_dir}']


def write_trial(trial: dict, trial_dir: str) -> None:
  """Writes trial.json and command.sh (rewritten on every launch: the sweep may have changed
  a setting every trial shares, such as the number of epochs)."""
  os.makedirs(trial_dir, exist_ok=True)
  write_json(os.path.join(trial_dir, TRIAL), trial)
  cmd = ' \\\n  '.join(shlex.quote(a) for a in command(trial, trial_dir))
  with open(os.path.join(trial_dir, COMMAND), 'w') as f:
    f.write(f'#!/bin/sh\n# Trial {trial["name"]}: reruns (or resumes) it by hand.\ncd {shlex.quote(REPO)}\n{cmd}\n')
  os.chmod(os.path.join(trial_dir, COMMAND), 0o755)


def is_finished(trial_dir: str) -> bool:
  """Finished means results.json exists for exactly this trial's current config; results of
  a shorter schedule do not count, so a sweep extended with more epochs resumes its trials."""
  results = read_json(os.path.join(trial_dir, RESULTS))
  trial = read_json(os.path.join(trial_dir, TRIAL))
  return bool(results and trial) and results.get('config') == trial.get('config')


def state(trial_dir: str) -> str:
  """done | failed | interrupted | running | queued (submitted to SLURM) | pending."""
  if is_finished(trial_dir):
    return 'done'
  status = read_json(os.path.join(trial_dir, STATUS)) or {}
  current = status.get('state', 'pending')
  if current == 'done':  # finished under an older config, since extended or changed
    return 'pending'
  if current == 'running' and not _lock_held(trial_dir):
    return 'interrupted'  # its runner died without a word (node lost, SIGKILL)
  return current


def _lock_held(trial_dir: str) -> bool:
  try:
    with open(os.path.join(trial_dir, '.lock'), 'a') as f:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
      return False
  except BlockingIOError:
    return True


def _error_from_log(text: str) -> str:
  """main.py prints user errors as one `error: ...` line; anything else ends in a traceback
  whose last line names the exception."""
  lines = [l.strip() for l in text.splitlines() if l.strip()]
  for line in reversed(lines):
    if line.startswith('error: '):
      return line[len('error: '):]
  return lines[-1][:500] if lines else 'no output'


def run_trial(trial_dir: str) -> str:
  """Runs (or resumes) the trial in `trial_dir` and records how it ended.

  Returns 'skipped' (already finished), 'busy' (another runner holds it), 'done', 'failed'
  or 'interrupted'.
  """
  trial_dir = os.path.abspath(trial_dir)
  trial = read_json(os.path.join(trial_dir, TRIAL))
  if trial is None:
    raise FileNotFoundError(f'{trial_dir} has no {TRIAL}; the sweep launcher writes it')
  with open(os.path.join(trial_dir, '.lock'), 'a') as lock:
    try:
      fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      return 'busy'
    if is_finished(trial_dir):
      return 'skipped'
    return _run_locked(trial, trial_dir)


def _wait_for_holder(trial_dir: str, log) -> None:
  """A trainer of an earlier launch may still hold the trial (its sweep was killed and it is
  saving, or it was started by hand): wait for it to end, then resume, never run two."""
  holder = lifecycle.holder(trial_dir)
  if holder:
    log.write(f'=== waiting for {holder}, which still trains this trial\n')
    log.flush()
  while lifecycle.holder(trial_dir):
    time.sleep(1.0)


def _run_locked(trial: dict, trial_dir: str) -> str:
  started = time.time()
  where = {k.lower(): os.environ[k] for k in SLURM_VARS if k in os.environ}
  status = {'state': 'running', 'started': time.strftime('%Y-%m-%d %H:%M:%S'),
            'host': socket.gethostname(), **where}
  status_path = os.path.join(trial_dir, STATUS)
  write_json(status_path, status)
  cmd = command(trial, trial_dir)
  log_path = os.path.join(trial_dir, LOG)
  with open(log_path, 'a') as log:
    _wait_for_holder(trial_dir, log)
    log.write(f'=== {status["started"]} on {status["host"]}: {shlex.join(cmd)}\n')
    log.flush()
    start = log.tell()
    # lifecycle.child_env: the trainer gets SIGTERM (and saves) if this process dies.
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                            env=lifecycle.child_env())
    _children.append(proc)
    code = proc.wait()
    _children.remove(proc)
  with open(log_path) as f:
    f.seek(start)
    output = f.read()
  elapsed = round(time.time() - started, 1)
  if code == 0 and is_finished(trial_dir):
    final = {'state': 'done'}
  elif code == lifecycle.STOPPED_EXIT:
    final = {'state': 'interrupted', 'error': _error_from_log(output)}
    if _requeue and requeue_slurm_task():
      final = {'state': 'queued', 'error': 'requeued before the SLURM time limit; resumes from '
               'its checkpoint'}
  elif code < 0 or output.rstrip().endswith('KeyboardInterrupt'):
    final = {'state': 'interrupted', 'error': f'stopped by signal {-code if code < 0 else "SIGINT"}'}
  else:
    final = {'state': 'failed', 'error': _error_from_log(output)}
  write_json(status_path, {**status, **final, 'returncode': code, 'elapsed_s': elapsed})
  return final['state']


# Training children of this process, for forward_signal.
_children: list[subprocess.Popen] = []
_requeue: list[bool] = []  # non-empty once SLURM warned of the time limit (SIGUSR1)


def forward_signal(signum, frame) -> None:
  """SIGTERM/SIGINT handler: send SIGTERM to the training children, which save a checkpoint
  and exit (lifecycle.STOPPED_EXIT); their status says 'interrupted' and they resume on the
  next launch. Always SIGTERM: a trainer may get the original signal too (Ctrl-C reaches the
  terminal's whole process group, scancel every process of the job), and only a second SIGINT
  would stop it before it saves. SLURM sends SIGTERM on scancel and at preemption."""
  del signum, frame
  for proc in list(_children):
    if proc.poll() is None:
      proc.send_signal(signal.SIGTERM)


def before_time_limit(signum, frame) -> None:
  """SIGUSR1, which the array script asks SLURM to send ahead of the time limit (--signal):
  the trainer saves and stops, and this task is requeued to resume it."""
  _requeue.append(True)
  forward_signal(signum, frame)


def requeue_slurm_task() -> bool:
  """Puts this SLURM array task back in the queue (the script says --requeue)."""
  job = os.environ.get('SLURM_ARRAY_JOB_ID')
  task = os.environ.get('SLURM_ARRAY_TASK_ID')
  target = f'{job}_{task}' if job and task else os.environ.get('SLURM_JOB_ID')
  if not target:
    return False
  proc = subprocess.run(['scontrol', 'requeue', target], capture_output=True, text=True)
  if proc.returncode != 0:
    print(f'scontrol requeue {target} failed: {proc.stderr.strip()}', file=sys.stderr)
  return proc.returncode == 0


def main(argv: list[str]) -> int:
  """`python -m sweeps.runner TRIAL_DIR`: exit 0 when the trial is done or was already."""
  if len(argv) != 2:
    print('usage: python -m sweeps.runner TRIAL_DIR', file=sys.stderr)
    return 2
  signal.signal(signal.SIGTERM, forward_signal)
  signal.signal(signal.SIGINT, forward_signal)
  signal.signal(signal.SIGUSR1, before_time_limit)
  outcome = run_trial(argv[1])
  print(f'trial {argv[1]}: {outcome}')
  return 0 if outcome in ('done', 'skipped', 'busy', 'queued') else 1


if __name__ == '__main__':
  sys.exit(main(sys.argv))
