"""`--mode=sweep`: expand the trials, print them, run the unfinished ones (local worker
processes or a SLURM job array), then print a summary and write the report.

Rerunning the same command is safe: finished trials are skipped, interrupted ones resume
from their checkpoints (the training run does that itself), failed ones are tried again.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from typing import Sequence

import lifecycle
import util
from errors import UserError
from sweeps import expand, report, runner

SLURM_KEYS = ('partition', 'time', 'cpus', 'gpus', 'mem', 'args')
# SLURM warns each array task this long before its time limit (SIGUSR1): the trainer saves a
# checkpoint and the task requeues itself to resume (sweeps/runner.py). --slurm_args can
# override it ('--signal=B:USR1@600'); sbatch's command line wins over the script's lines.
SIGNAL_AHEAD_S = 120


@dataclasses.dataclass
class Slurm:
  """Resources of one array task (one trial); empty/0 = the cluster's default."""
  partition: str = ''
  time: str = ''          # e.g. '02:00:00'
  cpus: int = 0           # --cpus-per-task
  gpus: int = 0           # --gres=gpu:N; the trial's jitted loop shards over all of them
  mem: str = ''           # e.g. '16G'
  args: str = ''          # anything else for sbatch, e.g. '--account=x --qos=y'
  wait: bool = True       # wait for the array to finish, then summarize

  def sbatch_lines(self) -> list[str]:
    lines = [f'--partition={self.partition}' if self.partition else '',
             f'--time={self.time}' if self.time else '',
             f'--cpus-per-task={self.cpus}' if self.cpus else '',
             f'--gres=gpu:{self.gpus}' if self.gpus else '',
             f'--mem={self.mem}' if self.mem else '']
    return [f'#SBATCH {line}' for line in lines if line]


def trials_dir(workdir: str) -> str:
  return os.path.join(workdir, 'trials')


def _fmt_macs(macs: int) -> str:
  return f'{macs / 1e9:.2f}G' if macs >= 1e9 else f'{macs / 1e6:.1f}M'


def describe(trials: Sequence[expand.Trial]) -> str:
  """The dry-run table: one line per trial with its overrides, params, MACs and depth."""
  width = max(len(t.name) for t in trials)
  lines = [f'{"#":>3}  {"trial":<{width}}  {"params":>10}  {"MACs":>7}  {"depth":>5}  overrides']
  for i, t in enumerate(trials):
    over = [f'{k}={v}' for k, v in t.overrides.items()]
    over += [f'{k}={v} (solved for {t.budget:,} params)' for k, v in t.solved.items()]
    lines.append(f'{i:>3}  {t.name:<{width}}  {t.params:>10,}  {_fmt_macs(t.macs):>7}  '
                 f'{t.depth if t.depth is not None else "-":>5}  {"  ".join(over) or "(none)"}')
    if t.layout:
      lines.append(f'{"":>3}  {"":<{width}}  {"":>10}  {"":>7}  {"":>5}  layout {t.layout}')
  return '\n'.join(lines)


def slurm_from_file(config_args: Sequence[str], flags_given: Slurm) -> Slurm:
  """Flags win over the sweep file's optional `get_slurm()` dict, which wins over defaults."""
  module = expand.load_sweep_file(expand.config_path(config_args))
  from_file = dict(module.get_slurm()) if hasattr(module, 'get_slurm') else {}
  unknown = sorted(set(from_file) - set(SLURM_KEYS))
  if unknown:
    raise UserError(f'get_slurm() returned unknown key {unknown[0]!r}; known: {", ".join(SLURM_KEYS)}')
  merged = dataclasses.replace(flags_given)
  for key, value in from_file.items():
    if not getattr(flags_given, key):
      setattr(merged, key, value)
  return merged


def run_sweep(config_args: Sequence[str], workdir: str, sweep_flags: Sequence[str] = (),
              dry_run: bool = False, launcher: str = 'local', parallel: int = 1,
              slurm: Slurm | None = None) -> int:
  """The whole `--mode=sweep` command; returns the exit code: 0 when every trial has
  finished, 1 when one failed or is unfinished (interrupted, still queued)."""
  if not workdir and not dry_run:
    raise UserError('--workdir is required: the sweep directory (one sub-directory per trial)')
  if parallel < 0 or (parallel == 0 and launcher == 'local'):
    raise UserError(f'--parallel must be positive (0 = no limit, SLURM only), got {parallel}')
  trials = expand.expand(config_args, sweep_flags)
  print(f'Sweep of {len(trials)} trials ({expand.config_path(config_args)}):')
  print(describe(trials), flush=True)
  if dry_run:
    return 0
  slurm = slurm_from_file(config_args, slurm or Slurm()) if launcher == 'slurm' else None
  workdir = os.path.abspath(workdir)
  lifecycle.hold(workdir, 'sweep')  # one launcher per sweep directory
  dirs = []
  for t in trials:
    d = os.path.join(trials_dir(workdir), t.name)
    runner.write_trial(t.to_json(), d)
    dirs.append(d)
  # The sweep file's REFERENCE: the configuration its report compares every other with.
  reference = getattr(expand.load_sweep_file(expand.config_path(config_args)), 'REFERENCE', None)
  util.write_json(os.path.join(workdir, 'sweep.json'),
                    {'command': shlex.join(sys.argv), 'trials': [t.name for t in trials],
                     'reference': reference, 'written': time.strftime('%Y-%m-%d %H:%M:%S')})
  todo = [d for d in dirs if not runner.is_finished(d)]
  outcome = {d: 'skipped' for d in dirs if d not in todo}
  if todo and launcher == 'local':
    outcome.update(run_local(todo, parallel))
  elif todo:
    # Trials still queued or running from an earlier submission are waited for, not resubmitted.
    queued = queued_in_slurm(todo)
    jobs = sorted(set(queued.values()))
    submit = [d for d in todo if d not in queued]
    if queued:
      print(f'{len(queued)} trials are still in SLURM job(s) {", ".join(jobs)}; waiting for them')
    if submit:
      jobs.append(submit_slurm(submit, workdir, parallel, slurm))
    if not slurm.wait:
      print(f'Not waiting (--noslurm_wait). Rerun this command to wait and summarize, or run '
            f'python main.py --mode=report --workdir={workdir}')
      return 0
    wait_slurm(jobs, todo)
    outcome.update({d: runner.state(d) for d in todo})
  return summarize(workdir, dirs, outcome)


def summarize(workdir: str, dirs: Sequence[str], outcome: dict[str, str]) -> int:
  """Prints done / failed / skipped (and anything unfinished), writes the report."""
  counts: dict[str, int] = {}
  for d in dirs:
    counts[outcome[d]] = counts.get(outcome[d], 0) + 1
  order = ['done', 'failed', 'skipped', 'interrupted', 'busy', 'queued', 'running', 'pending']
  print('\nSummary: ' + ', '.join(f'{counts.get(k, 0)} {k}' for k in order[:3]) +
        ''.join(f', {counts[k]} {k}' for k in order[3:] if counts.get(k)) +
        f' ({len(dirs)} trials)')
  for d in dirs:
    if outcome[d] not in ('done', 'skipped'):
      status = util.read_json(os.path.join(d, runner.STATUS)) or {}
      print(f'  {outcome[d]:<11} {os.path.basename(d)}: {status.get("error", "")}  '
            f'(log: {os.path.join(d, runner.LOG)})')
  paths = report.write_report(workdir)
  print(f'Report: {paths["md"]} (plots: {", ".join(os.path.basename(p) for p in paths["plots"])})')
  return 0 if counts.get('done', 0) + counts.get('skipped', 0) == len(dirs) else 1


# ----------------------------------------------------------------------------- local


def run_local(dirs: Sequence[str], parallel: int) -> dict[str, str]:
  """Runs the trials `parallel` at a time, each in its own training process.

  SIGTERM or SIGINT (a batch system stopping the sweep, `kill`, Ctrl-C) stops the running
  trials too: each saves a checkpoint and resumes on the next run. If this process dies without
  a word (kill -9), its trials get SIGTERM from the kernel (lifecycle.child_env).
  """
  lock, finished, stopping = threading.Lock(), [0], threading.Event()

  def on_term(signum, frame) -> None:
    stopping.set()
    runner.forward_signal(signum, frame)

  previous = signal.signal(signal.SIGTERM, on_term)
  previous_int = signal.signal(signal.SIGINT, on_term)

  def one(d: str) -> str:
    name = os.path.basename(d)
    if stopping.is_set():
      return 'pending'
    with lock:
      print(f'start  {name}  (log: {os.path.join(d, runner.LOG)})', flush=True)
    outcome = runner.run_trial(d)
    status = util.read_json(os.path.join(d, runner.STATUS)) or {}
    results = util.read_json(os.path.join(d, runner.RESULTS)) or {}
    with lock:
      finished[0] += 1
      metric = report.task_metric(results.get('config') or {})
      name = 'test acc' if metric == 'test_accuracy' else metric.replace('_', ' ')
      detail = (f'{name} {100 * (results.get(metric) or 0):.2f}%, '
                f'{status.get("elapsed_s", 0):.0f}s' if outcome == 'done'
                else status.get('error', ''))
      print(f'[{finished[0]}/{len(dirs)}] {outcome:<11} {name}  {detail}', flush=True)
    return outcome

  try:
    with concurrent.futures.ThreadPoolExecutor(max_workers=parallel) as pool:
      return dict(zip(dirs, pool.map(one, dirs)))
  finally:
    signal.signal(signal.SIGTERM, previous)
    signal.signal(signal.SIGINT, previous_int)


# ----------------------------------------------------------------------------- SLURM


def array_script(dirs: Sequence[str], workdir: str, parallel: int, slurm: Slurm) -> str:
  """An sbatch script whose array task i runs trial i through `sweeps.runner`."""
  throttle = f'%{parallel}' if parallel else ''
  logs = os.path.join(workdir, 'slurm', '%A_%a.out')
  trials = '\n'.join(f'  {shlex.quote(d)}' for d in dirs)
  return '\n'.join([
      '#!/bin/bash',
      f'#SBATCH --job-name={shlex.quote("sweep-" + os.path.basename(workdir))}',
      f'#SBATCH --array=0-{len(dirs) - 1}{throttle}',
      f'#SBATCH --output={logs}',
      f'#SBATCH --chdir={runner.REPO}',
      f'#SBATCH --signal=B:USR1@{SIGNAL_AHEAD_S}',
      '#SBATCH --requeue',
      '#SBATCH --open-mode=append',
      *slurm.sbatch_lines(),
      '# One trial per task; the runner records its outcome in the trial directory.',
      f'TRIALS=(\n{trials}\n)',
      f'exec {shlex.quote(sys.executable)} -m sweeps.runner "${{TRIALS[$SLURM_ARRAY_TASK_ID]}}"',
      ''])


def submit_slurm(dirs: Sequence[str], workdir: str, parallel: int, slurm: Slurm) -> str:
  """Writes the array script next to the trials and submits it; returns the job id."""
  if shutil.which('sbatch') is None:
    raise UserError('sbatch not found: --launcher=slurm needs the SLURM client commands on '
                    'this machine (or use --launcher=local)')
  os.makedirs(os.path.join(workdir, 'slurm'), exist_ok=True)
  script = os.path.join(workdir, 'slurm', f'array-{time.strftime("%Y%m%d-%H%M%S")}.sh')
  with open(script, 'w') as f:
    f.write(array_script(dirs, workdir, parallel, slurm))
  cmd = ['sbatch', '--parsable', *shlex.split(slurm.args), script]
  proc = subprocess.run(cmd, capture_output=True, text=True)
  if proc.returncode != 0:
    raise UserError(f'sbatch refused the job array ({proc.stderr.strip() or proc.stdout.strip()}); '
                    f'script: {script}')
  job = proc.stdout.strip().split(';')[0]
  print(f'Submitted SLURM job array {job}: {len(dirs)} trials (script {script})', flush=True)
  for task, d in enumerate(dirs):  # so a rerun of the sweep finds them in the queue
    util.write_json(os.path.join(d, runner.STATUS), {
        'state': 'queued', 'slurm_array_job_id': job, 'slurm_array_task_id': str(task)})
  return job


def _squeue(jobs: Sequence[str], fmt: str) -> list[str] | None:
  """squeue's lines for `jobs` (one per array task); [] once they left the queue, None when
  the controller did not answer."""
  proc = subprocess.run(['squeue', '--noheader', '--array', f'--jobs={",".join(jobs)}',
                         f'--format={fmt}'], capture_output=True, text=True)
  if proc.returncode != 0:
    return [] if 'Invalid job id' in proc.stderr else None  # invalid: purged after finishing
  return proc.stdout.split()


def queued_in_slurm(dirs: Sequence[str]) -> dict[str, str]:
  """{trial dir: array job id} for trials whose earlier submission is still in the queue."""
  jobs = {}
  for d in dirs:
    status = util.read_json(os.path.join(d, runner.STATUS)) or {}
    if status.get('state') in ('queued', 'running') and status.get('slurm_array_job_id'):
      jobs[d] = status['slurm_array_job_id']
  if not jobs or shutil.which('squeue') is None:
    return {}
  active = set(_squeue(sorted(set(jobs.values())), '%F') or [])
  return {d: job for d, job in jobs.items() if job in active}


def wait_slurm(jobs: Sequence[str], dirs: Sequence[str], max_poll_seconds: float = 30.0) -> None:
  """Polls squeue until no task of `jobs` is left, printing progress; the interval grows from
  one second so short trials end promptly and long ones do not load the controller."""
  last, poll_seconds = None, 1.0
  while True:
    tasks = _squeue(jobs, '%T')
    if tasks is None:
      print('squeue did not answer; retrying', flush=True)  # controller restarting or busy
      time.sleep(poll_seconds)
      continue
    states = [runner.state(d) for d in dirs]
    progress = (f'{states.count("done")} done, {states.count("failed")} failed, '
                f'{tasks.count("RUNNING")} running, {tasks.count("PENDING")} pending')
    if progress != last:
      print(f'SLURM job {",".join(jobs)}: {progress}', flush=True)
      last = progress
    if not tasks:
      return
    time.sleep(poll_seconds)
    poll_seconds = min(max_poll_seconds, poll_seconds * 1.5)
