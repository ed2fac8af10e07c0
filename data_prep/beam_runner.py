"""How the extraction job meets Apache Beam: runner names and arguments, installed-runner checks, one-line start
errors, unknown-argument warnings, the job's counters, and the redirect of what Beam and its workers print to a log.
`extract.py` is the job; this module is the plumbing every runner shares (docs/data_prep.md, "Other runners").
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Sequence

from m3video_jax import cli

COUNTER_NAMESPACE = 'data_prep'


def default_args(num_tasks: int, args: Sequence[str] = ()) -> list[str]:
  """The local runner's arguments for `num_tasks` pending shards, followed by `args` (the user's, which win).

  A shard is the unit of work a worker takes, so the pool has at most one worker per pending shard; with one pending
  shard (one video, a re-run that finishes a job) the job runs in this process: starting a worker pool costs ~6 s,
  more than extracting a small video (docs/data_prep.md). Worker flags the user gives (`--direct_running_mode`,
  `--direct_num_workers`) keep the pool as they say.
  """
  workers = min(os.cpu_count() or 1, num_tasks)
  if any(a.startswith(('--direct_running_mode', '--direct_num_workers')) for a in args):
    workers = 0  # Beam's "every core", under the user's flags.
  mode = 'in_memory' if workers == 1 else 'multi_processing'
  return ['--runner=FnApiRunner', f'--direct_running_mode={mode}', f'--direct_num_workers={workers}',
          '--default_sdk_harness_log_level=WARNING', *args]


class RunnerStartError(ValueError):
  """The Beam runner could not start (a job server jar it cannot fetch); the message names the flag that fixes it."""


class _DropWriteErrors:
  """`sys.stderr` that drops what it cannot write instead of raising. Beam's worker prints a failed bundle's traceback
  to stderr before it reports the failure; with stderr in `_work/beam.log` on a full device that print raised, the
  report never came and the job waited forever."""

  def __init__(self, stream):
    self.stream = stream

  def write(self, text):
    try:
      return self.stream.write(text)
    except OSError:
      return len(text)

  def flush(self):
    try:
      self.stream.flush()
    except OSError:
      pass

  def __getattr__(self, name):
    return getattr(self.stream, name)


def drop_stderr_write_errors() -> None:
  """Makes `sys.stderr` drop what it cannot write (`_DropWriteErrors`)."""
  if not isinstance(sys.stderr, _DropWriteErrors):
    sys.stderr = _DropWriteErrors(sys.stderr)


_JOB_SERVER_JAR_FLAGS = {'flinkrunner': '--flink_job_server_jar', 'sparkrunner': '--spark_job_server_jar'}
DASK_RUNNER = 'apache_beam.runners.dask.dask_runner.DaskRunner'
RUNNER_NAMES = {'dask': DASK_RUNNER, 'daskrunner': DASK_RUNNER}  # Short names Beam itself does not know.


def runner_args(args: Sequence[str], num_tasks: int) -> list[str]:
  """The Beam arguments with short runner names expanded (`--runner=dask` -> the Dask runner's full name) and, on
  Dask, one partition per pending shard unless `--dask_npartitions`/`--dask_partition_size` is given (Beam's own
  guess put every shard on one worker)."""
  out = []
  for a in args:
    if a.startswith('--runner='):
      name = a.split('=', 1)[1]
      a = '--runner=' + RUNNER_NAMES.get(name.lower(), name)
    out.append(a)
  if runner_name(out) == DASK_RUNNER and not any(a.startswith(('--dask_npartitions', '--dask_partition_size'))
                                                 for a in out):
    out.append(f'--dask_npartitions={max(num_tasks, 1)}')
  return out


def _flag_value(args: Sequence[str], flag: str) -> str:
  """The value of `--flag=value` among Beam arguments ('' when it is not given)."""
  return next((a.split('=', 1)[1] for a in args if a.startswith(f'--{flag}=')), '')


def runner_name(args: Sequence[str]) -> str:
  """The `--runner` of Beam arguments ('' when none is given)."""
  return _flag_value(args, 'runner')


def check_runner_installed(args: Sequence[str]) -> None:
  """Imports the Dask runner when it is asked for (so its options are known), or says how to install it."""
  if runner_name(args) != DASK_RUNNER:
    return
  import importlib
  try:
    for module in ('dask.distributed', 'apache_beam.runners.dask.dask_runner'):
      importlib.import_module(module)
  except ImportError as e:
    raise RunnerStartError(f'--runner=dask needs Dask ({e}); install it with pip install -e ".[dask]"') from None


def runner_start_error(args: Sequence[str], error: Exception) -> RunnerStartError | None:
  """A one-line `RunnerStartError` for a runner that could not start (an unreachable Dask scheduler, a job server jar
  that could not be fetched), or None for any other error."""
  text = str(error)
  if runner_name(args) == DASK_RUNNER and isinstance(error, OSError):
    address = _flag_value(args, 'dask_client_address')
    return RunnerStartError(f'--runner=dask cannot reach the Dask scheduler at --dask_client_address={address} '
                            f'({text.splitlines()[0] if text else type(error).__name__}); start it (dask scheduler) '
                            'or fix the address, or leave the flag out for a local cluster on this machine')
  if 'Unable to fetch remote job server jar' not in text:
    return None
  runner = runner_name(args) or 'the runner'
  flag = _JOB_SERVER_JAR_FLAGS.get(runner.rsplit('.', 1)[-1].lower(), '--<runner>_job_server_jar')
  m = re.search(r'jar at (\S+): ', text)
  url = m.group(1) if m else 'its URL'
  return RunnerStartError(f'--runner={runner} cannot start: Beam could not download its job server jar ({url}; no '
                          f'network access?). Download that jar where there is network and pass {flag}=<local jar>, '
                          'or start the job server yourself and pass --job_endpoint=HOST:PORT')


@contextlib.contextmanager
def library_output_to_log(log_path: str | None, log, enabled: bool,
                          plain_errors: tuple[type[BaseException], ...] = ()):
  """With `enabled`: everything written to file descriptor 2 while the pipeline runs (Beam's worker processes, the
  isolated video workers, TensorFlow and Beam in this process) goes to `log_path` (this run's only; None: a temp file,
  removed after a success, e.g. for a URL output), and the job's own lines go on to `log`. When the pipeline fails,
  the last lines of that log are shown, unless the error is one of `plain_errors` (or `RunnerStartError`), whose
  messages say all there is, or a full disk (said by the caller).

  Yields:
    The stream for the job's own lines.
  """
  if not enabled:
    yield log
    return
  temporary = log_path is None
  if temporary:
    fd, path = tempfile.mkstemp(prefix='data_prep_beam_', suffix='.log')
  else:
    path = log_path
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
  try:
    ours = os.fdopen(os.dup(log.fileno()), 'w', buffering=1) if log.fileno() == 2 else log
  except (AttributeError, OSError, ValueError):  # A stream without a descriptor (a StringIO, a test's capture).
    ours = log
  sys.stdout.flush()
  sys.stderr.flush()
  saved = os.dup(2)
  os.dup2(fd, 2)
  os.close(fd)
  stderr = sys.stderr
  drop_stderr_write_errors()  # The in-process runners' workers print to it (see `_DropWriteErrors`).
  failed = False
  try:
    yield ours
  except BaseException as e:
    failed = not (isinstance(e, (RunnerStartError, *plain_errors)) or cli.is_disk_full(e))
    raise
  finally:
    sys.stderr.flush()
    sys.stderr = stderr
    os.dup2(saved, 2)
    os.close(saved)
    ours.flush()  # Left open: the progress thread may still print its last line to it.
    if temporary and not failed:
      os.remove(path)
    if failed:
      try:
        with open(path, errors='replace') as f:
          tail = f.read().splitlines()[-25:]
      except OSError:
        tail = []
      print(f'[data_prep] the pipeline failed; what Beam and its workers printed is in {path}, last lines:\n  '
            + '\n  '.join(tail), file=log, flush=True)


def counters(result) -> dict[str, int]:
  """The job's Beam counters (`COUNTER_NAMESPACE`) from a finished pipeline; {} where the runner reports none."""
  try:
    from apache_beam.metrics.metric import MetricsFilter
    query = result.metrics().query(MetricsFilter().with_namespace(COUNTER_NAMESPACE))
    return {c.key.metric.name: int(c.committed if c.committed is not None else c.attempted)
            for c in query['counters']}
  except Exception:  # Some runners do not report metrics; the manifest has the same numbers.
    return {}


def warn_unknown_beam_args(beam_args: Sequence[str], log=None) -> None:
  """Says on the terminal which arguments neither this job nor Beam knows (a mistyped flag would otherwise vanish:
  Beam's own warning goes to `_work/beam.log`). Only a warning: a runner's options are known once it is imported."""
  if not beam_args:
    return
  import logging

  from apache_beam.options.pipeline_options import PipelineOptions

  unknown: list[str] = []

  class Catch(logging.Handler):

    def emit(self, record):
      if record.msg.startswith('Discarding unparseable args'):
        unknown.extend(record.args[0] if record.args else [])

  logger = logging.getLogger('apache_beam.options.pipeline_options')
  catch, propagate = Catch(), logger.propagate
  logger.addHandler(catch)
  logger.propagate = False  # Said once, below.
  try:
    PipelineOptions(list(beam_args)).get_all_options()
  finally:
    logger.removeHandler(catch)
    logger.propagate = propagate
  if unknown:
    print(f'[data_prep] warning: {unknown} are neither data_prep.extract flags nor Beam pipeline options known here; '
          'Beam ignores them (see python -m data_prep.extract --help)', file=log or sys.stderr, flush=True)
