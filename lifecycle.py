"""How a run lives among other processes on a cluster: one writer per workdir, a clean stop on
SIGTERM/SIGINT, child processes that die with their parent, and file-system failures (full
disk, read-only, permissions) as one line. Standard library only: every layer may use it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import logging
import os
import signal
import socket
import struct
import sys
import threading
import time

from errors import UserError

LOCK_FILE = '.workdir.lock'
# Exit status of a run stopped by a signal after saving its state (sysexits.h EX_TEMPFAIL:
# "a temporary failure; retry"): sweeps and the SLURM runner resume or requeue on it.
STOPPED_EXIT = 75


class Stopped(Exception):
  """Training stopped on a signal after writing a checkpoint; the message says where to
  resume. main.py prints it as one line and exits with STOPPED_EXIT."""


# ----------------------------------------------------------------------------- workdir lock
# POSIX record locks (fcntl): the kernel drops them when the holding process dies however it
# dies, so a stale lock is taken over by the next run with no clean-up; F_GETLK names the
# holder's pid; they work over NFS (NLM / NFSv4); and a forked child does not inherit them.

_held: dict[str, int] = {}  # lock path -> open descriptor (a lock lives as long as its fd)


_FLOCK = 'hhqqi'  # struct flock on Linux: l_type, l_whence, l_start, l_len, l_pid (+ padding)


def _conflict(fd: int, exclusive: bool) -> tuple[bool, int]:
  """(whether another process holds a lock that conflicts with ours, its pid or 0)."""
  kind = fcntl.F_WRLCK if exclusive else fcntl.F_RDLCK
  request = struct.pack(_FLOCK, kind, os.SEEK_SET, 0, 0, 0) + b'\0' * 4
  try:
    answer = fcntl.fcntl(fd, fcntl.F_GETLK, request)
  except OSError:
    return False, 0
  kind, _, _, _, pid = struct.unpack(_FLOCK, answer[:struct.calcsize(_FLOCK)])
  return kind != fcntl.F_UNLCK, pid


def _describe(path: str, pid: int) -> str:
  info = {}
  with contextlib.suppress(OSError, ValueError):
    with open(path) as f:
      info = json.load(f)
  if info.get('pid') == pid or not pid:
    pid = info.get('pid', pid)
    mode = f'--mode={info["mode"]}, ' if info.get('mode') else ''
    return f'pid {pid} ({mode}host {info.get("host", "?")}, since {info.get("since", "?")})'
  return f'pid {pid}'


def hold(directory: str, what: str, exclusive: bool = True) -> str:
  """Locks `directory` for this process until `release` or exit: `exclusive` for a process that
  writes the run (training), shared for modes that read it and write beside it. A directory
  another process holds in a conflicting way is refused with one line naming that process.
  Re-entrant within a process. Returns the lock file's path."""
  path = os.path.join(os.path.abspath(directory), LOCK_FILE)
  if path in _held:
    return path
  try:
    os.makedirs(directory, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
  except OSError as e:
    if not exclusive:  # a reader on a read-only copy of a run: no writer can be there either
      return path
    raise UserError(f'cannot lock {directory} ({e.strerror}); pass a folder you can write to') \
        from None
  try:
    fcntl.lockf(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
  except OSError as e:
    if e.errno not in (errno.EACCES, errno.EAGAIN):
      os.close(fd)
      raise UserError(f'cannot lock {directory} ({e.strerror}); on NFS/Lustre the file system '
                      'must support POSIX locks') from None
    holder = _describe(path, _conflict(fd, exclusive)[1])
    os.close(fd)
    raise UserError(f'{directory} is in use by {holder}; wait for it to finish, stop it '
                    f'(SIGTERM saves a checkpoint), or use another folder for {what}') from None
  if exclusive:  # the holder's identity, for the message another process gets
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps({'pid': os.getpid(), 'host': socket.gethostname(), 'mode': what,
                             'since': time.strftime('%Y-%m-%d %H:%M:%S')}).encode())
  _held[path] = fd
  return path


def holder(directory: str) -> str | None:
  """Who holds `directory` (a description) when another process has it locked, else None."""
  path = os.path.join(os.path.abspath(directory), LOCK_FILE)
  try:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
  except OSError:
    return None
  try:
    held, pid = _conflict(fd, exclusive=True)
  finally:
    os.close(fd)
  return _describe(path, pid) if held else None


def is_held(directory: str) -> bool:
  return os.path.join(os.path.abspath(directory), LOCK_FILE) in _held


def release(directory: str) -> None:
  """Drops this process's lock on `directory` (closing the descriptor releases it)."""
  fd = _held.pop(os.path.join(os.path.abspath(directory), LOCK_FILE), None)
  if fd is not None:
    os.close(fd)


@contextlib.contextmanager
def holding(directory: str, what: str, exclusive: bool = True):
  """`hold` for the duration of a block; a lock this process already held stays held."""
  path = os.path.join(os.path.abspath(directory), LOCK_FILE)
  ours = path not in _held
  hold(directory, what, exclusive)
  try:
    yield
  finally:
    if ours:
      release(directory)


# ----------------------------------------------------------------------------- stop requests


class StopRequest:
  """SIGTERM and SIGINT set `signal_name` instead of killing the process, so the training
  loop can finish its step, save and exit. A second Ctrl-C (SIGINT) stops at once; further
  SIGTERMs are ignored, as schedulers send one to every process of a job and launchers forward
  theirs (the scheduler's SIGKILL follows its grace period anyway). Installed only in the main
  thread (Python delivers signals there)."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.signal_name: str | None = None
    self._previous: dict = {}

  @property
  def requested(self) -> bool:
    return self.signal_name is not None

  def _handler(self, signum, frame) -> None:
    del frame
    if self.signal_name is not None:
      if signum != signal.SIGINT:
        return
      self.uninstall()  # a second Ctrl-C: no more waiting
      signal.signal(signum, signal.SIG_DFL)
      os.kill(os.getpid(), signum)
      return
    self.signal_name = signal.Signals(signum).name
    print(f'{self.signal_name} received: finishing the current step and saving a checkpoint '
          '(send it again to stop at once)', file=sys.stderr, flush=True)

  def install(self) -> 'StopRequest':
    if threading.current_thread() is threading.main_thread() and not self._previous:
      self._previous = {s: signal.signal(s, self._handler) for s in self.SIGNALS}
    return self

  def uninstall(self) -> None:
    for s, previous in self._previous.items():
      signal.signal(s, previous)
    self._previous = {}


@contextlib.contextmanager
def stop_on_signals():
  """A StopRequest installed for the duration of a block."""
  request = StopRequest().install()
  try:
    yield request
  finally:
    request.uninstall()


# ----------------------------------------------------------------------------- child processes

PARENT_ENV = 'CNN_LAB_PARENT_PID'  # set by a launcher: the child ends when that process does
_PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int, signum: int = signal.SIGTERM) -> None:
  """Asks Linux to send `signum` to this process when its parent dies (prctl PDEATHSIG; it
  survives exec), and sends it now if `parent` already died. A no-op elsewhere than Linux."""
  if not sys.platform.startswith('linux'):
    return
  with contextlib.suppress(OSError, AttributeError):
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0)
  if os.getppid() != parent:
    os.kill(os.getpid(), signum)


def die_with_launcher() -> None:
  """For a process started by a launcher that set PARENT_ENV (sweeps): end with it. The
  variable is removed so this process's own children do not inherit the wrong parent."""
  parent = os.environ.pop(PARENT_ENV, '')
  if parent.isdigit():
    die_with_parent(int(parent))


def child_env() -> dict:
  """The environment of a child that must end with this process (see die_with_launcher)."""
  return {**os.environ, PARENT_ENV: str(os.getpid())}


# ----------------------------------------------------------------------------- file systems

_DISK_ERRNOS = {errno.ENOSPC: 'no space left on the device',
                errno.EDQUOT: 'disk quota exceeded',
                errno.EROFS: 'the file system is read-only',
                errno.EACCES: 'permission denied',
                errno.EPERM: 'operation not permitted',
                errno.EFBIG: 'file size limit exceeded'}
_DISK_TEXTS = {'No space left on device': errno.ENOSPC, 'Disk quota exceeded': errno.EDQUOT,
               'Read-only file system': errno.EROFS, 'Permission denied': errno.EACCES,
               'File too large': errno.EFBIG}


def disk_error(exc: BaseException) -> tuple[str, str | None] | None:
  """(what went wrong, the path when known) when `exc` or an exception it was raised from is a
  file-system failure (OSError, or TensorFlow / tensorstore wrapping one in its message)."""
  seen = set()
  while exc is not None and id(exc) not in seen:
    seen.add(id(exc))
    if isinstance(exc, OSError) and exc.errno in _DISK_ERRNOS:
      return _DISK_ERRNOS[exc.errno], exc.filename
    text = str(exc)
    for needle, code in _DISK_TEXTS.items():
      if needle in text:
        return _DISK_ERRNOS[code], None
    exc = exc.__cause__ or exc.__context__
  return None


class QuietDiskTracebacks(logging.Filter):
  """Drops log records that carry a file-system failure's traceback (orbax's background save
  threads log one per thread before the error reaches the main thread): main.py reports it
  once, as one line."""

  def filter(self, record: logging.LogRecord) -> bool:
    exc = record.exc_info[1] if record.exc_info else None
    return exc is None or disk_error(exc) is None
