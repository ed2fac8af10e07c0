"""The one convention of the command-line tools (`python -m data_prep.extract`, `m3video_jax.main`, `.evaluate`,
`.visualize`, `.interop.export`, `.interop.import_weights`, `.interop.features`, `data_prep.synthetic`):

- absl flags, `--name=value` (booleans `--name` / `--noname`), `--help` lists them;
- a tool's flags are defined by its `define_flags(fv)` into a `FlagValues` of its own (`run`), so tools can be imported
  together and run in-process any number of times (as the tests do). `m3video_jax.main` alone defines absl's global
  flags, which its `--config.<field>=value` overrides need (same syntax for the user);
- quiet by default: TensorFlow's C++ notices, Beam's, Orbax's and TFDS's INFO lines and JAX's compile logs only with
  `--verbose` (`quiet_libraries`); the tool's own progress and warnings always show;
- bad input is one line, `error: <what was wrong, the flag or file, what was expected>`, and a non-zero exit status
  (no traceback);
- a tool ends with a summary: what was written where, and the command to run next (`summary`).

Only the standard library and absl: `data_prep` imports this module and `data/schema.py`, nothing else of the package.
"""
from __future__ import annotations

import contextlib
import datetime
import errno
import logging
import os
import socket
import sys
from collections.abc import Callable, Iterable, Sequence

from absl import flags


class UserError(Exception):
  """Bad input a user can fix (a file, a line of it, a flag, a config field, a full disk): every tool, `m3video_jax.main`
  included, prints it as one `error:` line and exits non-zero. The message names what was wrong (file and line where
  there is one) and what was expected. Readers and writers raise it (or a subclass) instead of letting a library's
  exception escape as a traceback."""


class ConfigError(UserError, ValueError):
  """A config field, or the workdir, cannot be used; the message names it, its value and what is expected. A
  `UserError` (one `error:` line) and, for the callers that catch it so, a ValueError. (`config_lib.ConfigError`.)"""


def check_config(ok: bool, field: str, value, expected: str) -> None:
  """Raises `ConfigError` `config.<field>=<value> is invalid: expected <expected>` unless `ok` (`config_lib.check`)."""
  if not ok:
    raise ConfigError(f'config.{field}={value!r} is invalid: expected {expected}')


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


# Output locations given on a command line (data prep shards, features, training workdirs): checked before any
# work, with one-line errors naming the flag.


class UnusableOutputError(UserError, ValueError):
  """An output directory that is a file, cannot be created or is not writable; the message names the flag."""


def writable_dir(path: str, flag: str) -> str:
  """Creates the local directory `path` if needed and checks it by writing a probe file (`os.access` says yes to root
  on a read-only mount). URLs (`gs://...`) are returned unchecked.

  Returns:
    `path`.

  Raises:
    UnusableOutputError: `'{flag}={path} is a file, not a directory'`, `... cannot be created: <why>` or
      `... is not writable: <why>`.
  """
  if '://' in path:
    return path
  if os.path.exists(path) and not os.path.isdir(path):
    raise UnusableOutputError(f'{flag}={path} is a file, not a directory')
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise UnusableOutputError(f'{flag}={path} cannot be created: {e.strerror}') from None
  probe = os.path.join(path, f'.write-test-{os.getpid()}')
  try:
    with open(probe, 'wb'):
      pass
    os.remove(probe)
  except OSError as e:
    raise UnusableOutputError(f'{flag}={path} is not writable: {e.strerror}') from None
  return path


def is_disk_full(error: BaseException | None) -> bool:
  """Whether `error`, or an exception it was raised from, says the device or the quota is full: an `OSError` with that
  errno, or only its text (TensorFlow's `ResourceExhaustedError`, Tensorstore's errors, a Beam worker's error re-raised
  by the runner: 'No space left on device')."""
  while error is not None:
    if isinstance(error, OSError) and error.errno in _DISK_FULL:
      return True
    if any(os.strerror(code) in str(error) for code in _DISK_FULL):
      return True
    error = error.__cause__ or error.__context__
  return False


# Bad input as reported by the tools: one line, no traceback.
USER_ERRORS = (UserError, ValueError, FileNotFoundError, FileExistsError, ImportError)
# Libraries whose INFO lines would drown a tool's own output; their warnings still show.
_QUIET_PATHS = ('/orbax/', '/jax/_src/', '/jax/experimental/', '/apache_beam/', '/tensorflow/',
                '/tensorflow_datasets/')
_QUIET_LOGGERS = ('apache_beam', 'orbax', 'jax', 'tensorflow', 'apitools', 'oauth2client', 'urllib3',
                  'google.auth', 'google_auth_httplib2')


# Warnings that say nothing to a user of these tools (Beam's optional GCP clients are not installed).
_NOISE = ('apitools not found',)


class _QuietLibraries(logging.Filter):

  def filter(self, record: logging.LogRecord) -> bool:
    if any(str(record.msg).startswith(n) for n in _NOISE):
      return False
    return record.levelno >= logging.WARNING or not any(p in record.pathname for p in _QUIET_PATHS)


_QUIET = _QuietLibraries()
_TF_QUIET = '2'  # TF_CPP_MIN_LOG_LEVEL: errors only.
_SUMMARY = True  # --summary of the tool running in this process (`run`).


def quiet_libraries(verbose: bool) -> None:
  """Keeps TensorFlow, Beam, Orbax and JAX at warnings (and TF's C++ log at errors) unless `verbose`.

  Also exported as `TF_CPP_MIN_LOG_LEVEL` / `M3VIDEO_VERBOSE` to the environment, so child processes (Beam workers,
  isolated data-prep workers, a demo's data prep) are quiet too, and `TF_ENABLE_ONEDNN_OPTS=0` (unless set). Call it
  before TensorFlow is imported.
  """
  from absl import logging as absl_logging  # pylint: disable=import-outside-toplevel

  os.environ['M3VIDEO_VERBOSE'] = '1' if verbose else '0'
  # TensorFlow's oneDNN kernels (on by default on CPUs with AVX-512 VNNI/BF16, off elsewhere) announce themselves on
  # stderr at import, whatever TF_CPP_MIN_LOG_LEVEL says, and round matmuls differently. Off unless the environment
  # says otherwise, in both modes: the same input-pipeline numbers on every CPU, and quiet tools stay quiet.
  os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')
  handlers = logging.getLogger().handlers + [absl_logging.get_absl_handler()]
  if verbose:  # Undoes an earlier quiet run in this process.
    if os.environ.get('TF_CPP_MIN_LOG_LEVEL') == _TF_QUIET:
      del os.environ['TF_CPP_MIN_LOG_LEVEL']
    for name in _QUIET_LOGGERS:
      logging.getLogger(name).setLevel(logging.NOTSET)
    for handler in handlers:
      handler.removeFilter(_QUIET)
    return
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', _TF_QUIET)
  for name in _QUIET_LOGGERS:
    logging.getLogger(name).setLevel(logging.WARNING)
  for handler in handlers:
    if _QUIET not in handler.filters:
      handler.addFilter(_QUIET)


def verbose_from_env() -> bool:
  """Whether the parent tool ran with `--verbose` (for child processes started by a tool)."""
  return os.environ.get('M3VIDEO_VERBOSE') == '1'


def run(define_flags: Callable[[flags.FlagValues], None], main: Callable[[flags.FlagValues, list[str]], int | None],
        argv: Sequence[str] | None = None, *, doc: str = '', prog: str = '', known_only: bool = False,
        errors: tuple[type[BaseException], ...] = USER_ERRORS, error_status: int = 1, error_prefix: str = '') -> int:
  """Parses `argv` into a fresh `FlagValues` and runs `main(fv, rest)`; returns the exit status.

  Args:
    define_flags: defines the tool's flags into the `FlagValues` it is given (`flag_values=fv`).
    main: the tool; `rest` holds the arguments no flag took (only with `known_only`, e.g. Beam pipeline options).
      Returns an exit status (None = 0).
    argv: the arguments after the program name (default `sys.argv[1:]`).
    doc: the tool's usage text (its module docstring), printed by `--help`.
    prog: the command shown in `--help` and errors (default: the program name).
    known_only: leave unknown `--flags` to `main` instead of refusing them.
    errors: exception types reported as one `error:` line with `error_status` (anything else is a bug: traceback).
    error_prefix: printed before `error:` (e.g. `[data_prep] `).
  """
  argv = list(sys.argv[1:] if argv is None else argv)
  prog = prog or os.path.basename(sys.argv[0] or 'tool')
  fv = flags.FlagValues()
  define_flags(fv)
  flags.DEFINE_bool('verbose', False, 'Also show the INFO lines of TensorFlow, Beam, Orbax and JAX.', flag_values=fv)
  flags.DEFINE_bool('summary', True, 'End with what was written where and the next command (tools run by other tools '
                    'pass --nosummary).', flag_values=fv)
  if any(a in ('-h', '--help', '--helpshort', '--helpfull', '-?') for a in argv):
    print((doc.strip() + '\n\n' if doc else '') + 'flags:\n' + fv.get_help(include_special_flags=False))
    return 0
  try:
    rest = fv([prog, *argv], known_only=known_only)[1:]
  except flags.Error as e:
    message = '; '.join(line.strip() for line in str(e).splitlines() if line.strip())
    print(f'{error_prefix}error: {message} (see {prog} --help)', file=sys.stderr)
    return error_status
  if rest and not known_only:
    print(f'{error_prefix}error: unexpected arguments {rest} (see {prog} --help)', file=sys.stderr)
    return error_status
  from absl import logging as absl_logging  # pylint: disable=import-outside-toplevel
  absl_logging.use_absl_handler()  # The tool's own INFO lines, as under `absl.app.run`.
  absl_logging.set_verbosity(absl_logging.INFO)
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()  # absl's own flags are not used; this stops its "before flag parsing" notice.
  quiet_libraries(fv.verbose)
  global _SUMMARY
  _SUMMARY = fv.summary
  try:
    status = main(fv, rest)
  except errors as e:
    print(f'{error_prefix}error: {e}', file=sys.stderr)
    return error_status
  finally:
    _SUMMARY = True  # Library calls after this run print their summaries again.
  return int(status or 0)


def summary(head: str, written: Iterable[tuple[str, str]] = (), next_commands: Iterable[str] = (),
            stream=None) -> list[str]:
  """Prints (stdout by default) and returns a tool's closing lines: `head`, then `  <what>: <where>` for every file
  or directory written, then `  next: <command>` for each suggested command. With `--nosummary` only `head`."""
  lines = [head]
  if _SUMMARY:
    lines += [f'  {what}: {where}' for what, where in written] + [f'  next: {c}' for c in next_commands]
  print('\n'.join(lines), file=stream or sys.stdout, flush=True)
  return lines


@contextlib.contextmanager
def exclusive_lock(path: str, in_use: Callable[[str], Exception]):
  """Holds an exclusive lock (flock) on the local file `path` until the block ends; the file names the holder (pid, host,
  start time). The OS releases the lock when the process ends however it ends (exit, exception, SIGKILL), so a stale
  lock never blocks a re-run.

  Raises:
    in_use(holder): when another process (or another open of `path`) holds the lock.
  """
  import fcntl  # pylint: disable=import-outside-toplevel

  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      raise in_use(os.pread(fd, 4096, 0).decode(errors='replace').strip() or 'unknown') from None
    started = datetime.datetime.now().astimezone().isoformat(timespec='seconds')
    os.ftruncate(fd, 0)
    os.pwrite(fd, f'pid {os.getpid()} on {socket.gethostname()}, started {started}\n'.encode(), 0)
    yield
  finally:
    os.close(fd)  # Releases the lock.
