"""Crash isolation: run functions in a long-lived child Python process that may die without taking the job down.

A decoder bug (segfault, abort) or an out-of-memory kill while decoding one file would otherwise kill the Beam worker
and, locally, the whole job. `IsolatedWorker.call(fn, *args)` pickles `fn` (by reference) and its arguments to a child
process (`python -m data_prep.isolated_worker`), waits for the pickled result with a timeout, and re-raises the
child's exception if `fn` raised. If the child dies or times out, `WorkerCrashed` / `WorkerTimeout` is raised and the
next call starts a fresh child. The child is reused across calls, so the cost per call is only pickling the arguments
and the result through a pipe (a few ms for a video's targets; measured in `bench/prep_throughput.py`).

Protocol on the pipes: 8-byte big-endian length, then a pickle. Request `(fn, args, kwargs)`; reply `(True, result)`
or `(False, exception)`. The child's own stdout is redirected to stderr so stray prints cannot corrupt replies.
"""
from __future__ import annotations

import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

_HEADER = struct.Struct('>Q')


class WorkerCrashed(RuntimeError):
  """The child process died while running a call (signal or exit); `returncode` as in `subprocess`."""

  def __init__(self, returncode: int | None, detail: str = ''):
    if returncode is not None and returncode < 0:
      try:
        what = f'killed by signal {signal.Signals(-returncode).name}'
      except ValueError:
        what = f'killed by signal {-returncode}'
    else:
      what = f'exited with code {returncode}'
    super().__init__(f'worker process {what}{": " + detail if detail else ""}')
    self.returncode = returncode


class WorkerTimeout(RuntimeError):
  """A call took longer than its timeout; the child was killed."""


class RemoteError(RuntimeError):
  """The child raised an exception that could not be pickled back; the message keeps its type and text."""


def _read_exact(fd: int, n: int, deadline: float | None) -> bytes | None:
  """Reads n bytes from fd; None on EOF; raises WorkerTimeout after `deadline` (time.monotonic)."""
  chunks, got = [], 0
  while got < n:
    if deadline is not None:
      remaining = deadline - time.monotonic()
      if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
        raise WorkerTimeout('no reply before the deadline')
    chunk = os.read(fd, min(n - got, 1 << 20))
    if not chunk:
      return None
    chunks.append(chunk)
    got += len(chunk)
  return b''.join(chunks)


def _child_env() -> dict[str, str]:
  """The parent's environment, with its `sys.path` so the child imports the same modules (also under pytest)."""
  env = dict(os.environ)
  paths = [p for p in sys.path if p and os.path.isdir(p)]
  if os.environ.get('PYTHONPATH'):
    paths.append(os.environ['PYTHONPATH'])
  env['PYTHONPATH'] = os.pathsep.join(dict.fromkeys(paths))
  return env


class IsolatedWorker:
  """A restartable child process that runs picklable functions. Not thread-safe; one per Beam DoFn instance."""

  def __init__(self, timeout_s: float | None = 600.0, init: tuple[Callable[..., Any], tuple] | None = None):
    """Args:
      timeout_s: default time limit per call (None = no limit).
      init: `(fn, args)` run in every new child before its first call (e.g. `(cv2.setNumThreads, (1,))`).
    """
    self.timeout_s = timeout_s
    self._init = init
    self._proc: subprocess.Popen | None = None
    self.starts = 0

  @property
  def restarts(self) -> int:
    """How many times a child had to be replaced (after a crash or timeout)."""
    return max(self.starts - 1, 0)

  def _start(self) -> subprocess.Popen:
    if self._proc is None or self._proc.poll() is not None:
      self._proc = subprocess.Popen([sys.executable, '-m', 'data_prep.isolated_worker'], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, env=_child_env(), close_fds=True)
      self.starts += 1
      if self._init is not None:
        self._call(self._proc, self._init[0], self._init[1], {}, self.timeout_s)
    return self._proc

  def call(self, fn: Callable[..., Any], *args, timeout_s: float | None = None, **kwargs) -> Any:
    """Runs `fn(*args, **kwargs)` in the child and returns its result (or raises its exception).

    Raises:
      WorkerCrashed: the child died during the call.
      WorkerTimeout: no reply within `timeout_s` (default: the worker's); the child is killed.
    """
    return self._call(self._start(), fn, args, kwargs, self.timeout_s if timeout_s is None else timeout_s)

  def _call(self, proc: subprocess.Popen, fn, args, kwargs, timeout: float | None) -> Any:
    payload = pickle.dumps((fn, args, kwargs), protocol=pickle.HIGHEST_PROTOCOL)
    try:
      proc.stdin.write(_HEADER.pack(len(payload)) + payload)
      proc.stdin.flush()
    except (BrokenPipeError, OSError) as e:
      self._reap()
      raise WorkerCrashed(self._returncode(), f'could not send the call: {e}') from None
    deadline = None if timeout is None else time.monotonic() + timeout
    fd = proc.stdout.fileno()
    try:
      header = _read_exact(fd, _HEADER.size, deadline)
      body = None if header is None else _read_exact(fd, _HEADER.unpack(header)[0], deadline)
    except WorkerTimeout:
      self.kill()
      raise WorkerTimeout(f'{getattr(fn, "__name__", fn)} took longer than {timeout} s') from None
    if body is None:
      self._reap()
      raise WorkerCrashed(self._returncode())
    ok, value = pickle.loads(body)
    if ok:
      return value
    raise value

  def _returncode(self) -> int | None:
    return None if self._proc is None else self._proc.returncode

  def _reap(self) -> None:
    if self._proc is not None:
      try:
        self._proc.wait(timeout=10)
      except subprocess.TimeoutExpired:
        self._proc.kill()
        self._proc.wait()

  def kill(self) -> None:
    if self._proc is not None and self._proc.poll() is None:
      self._proc.kill()
      self._proc.wait()

  def close(self) -> None:
    """Stops the child (EOF on its stdin makes it exit)."""
    if self._proc is None:
      return
    try:
      self._proc.stdin.close()
      self._proc.wait(timeout=10)
    except (OSError, subprocess.TimeoutExpired):
      self.kill()
    self._proc.stdout.close()
    self._proc = None

  def __enter__(self) -> IsolatedWorker:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def exit_with_parent(interval_s: float = 0.5, on_exit: Callable[[], Any] | None = None) -> threading.Thread:
  """Ends this process (exit code 3) within `interval_s` of its parent's death (when it is re-parented).

  A worker must not outlive the job that started it: after a SIGKILL of the launcher it would keep writing into an
  output directory that a re-run is already cleaning up. `on_exit` runs first (e.g. to kill a child of ours).
  """
  parent = os.getppid()

  def watch():
    while os.getppid() == parent:
      time.sleep(interval_s)
    try:
      if on_exit is not None:
        on_exit()
    finally:
      os._exit(3)

  thread = threading.Thread(target=watch, name='exit_with_parent', daemon=True)
  thread.start()
  return thread


def _serve() -> None:
  """Child main loop: read a call, run it, write the reply; exit on EOF or when the parent dies."""
  exit_with_parent()
  out_fd = os.dup(1)
  os.dup2(2, 1)  # Anything printed to stdout (Python or C) now goes to stderr.
  sys.stdout = sys.stderr
  in_fd = sys.stdin.fileno()
  while True:
    header = _read_exact(in_fd, _HEADER.size, None)
    if header is None:
      return
    body = _read_exact(in_fd, _HEADER.unpack(header)[0], None)
    if body is None:
      return
    try:
      fn, args, kwargs = pickle.loads(body)
      reply = (True, fn(*args, **kwargs))
    except Exception as e:  # Sent back to the caller, which re-raises it.
      reply = (False, e)
    try:
      data = pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as e:  # Unpicklable result or exception.
      data = pickle.dumps((False, RemoteError(f'{type(reply[1]).__name__}: {reply[1]} (reply not picklable: {e})')))
    os.write(out_fd, _HEADER.pack(len(data)))
    view = memoryview(data)
    while view:
      view = view[os.write(out_fd, view):]


if __name__ == '__main__':
  _serve()
