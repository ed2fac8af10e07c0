"""The motion-target extraction job: video files -> TFRecord shards (+ manifest, failure report), on Apache Beam.

Local run (all cores, Beam's in-process portable runner in multi-processing mode; the default when no --runner is
given):
  python -m data_prep.extract --input=videos.csv --output_dir=/data/prep [--short_side=256 --traj_len=6 ...]
Any Beam pipeline option can follow (e.g. `--runner=DataflowRunner --project=... --region=... --temp_location=gs://...
--setup_file=./setup.py`, or `--runner=dask --dask_client_address=HOST:8786` for a Dask cluster); see
docs/data_prep.md for Dask, Dataflow, Flink and Spark.

Pipeline: the launcher lists the inputs and plans the shards (`shards.plan_shards`), skips shards that are already
complete (resume), then `Create(pending shards) | Reshuffle | ParDo(ExtractShardFn)`; each shard's videos are processed
one by one in a crash-isolated child process (`isolated_worker`), written to a temp file and renamed into place.
Afterwards the launcher writes `manifest.json` and `failures.jsonl`, prints the storage figures and the Beam counters,
and exits non-zero if more than `--max_bad_fraction` of the inputs failed.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from data_prep import input_files
from data_prep import inputs as inputs_lib
from data_prep import datasets
from data_prep.datasets import FORMATS
from data_prep import shards
from data_prep import tfds_io
from data_prep import video_io
from data_prep.options import CAMERA_MOTION_MODES, FLOW_METHODS, PrepConfig
from data_prep.input_files import VideoInput
from m3video_jax import cli
from m3video_jax.data import schema

COUNTER_NAMESPACE = 'data_prep'
DEFAULT_BEAM_ARGS = ('--runner=FnApiRunner', '--direct_running_mode=multi_processing', '--direct_num_workers=0',
                     '--default_sdk_harness_log_level=WARNING')


class TooManyFailuresError(RuntimeError):
  """More than `max_bad_fraction` of the inputs failed (the shards of the good inputs are still written)."""


class RunnerStartError(ValueError):
  """The Beam runner could not start (a job server jar it cannot fetch); the message names the flag that fixes it."""


class DiskFullError(cli.UserError):
  """The device of the output directory is full (or the quota used up); the shards completed so far are kept."""


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


def _drop_stderr_write_errors() -> None:
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
  if _runner(out) == DASK_RUNNER and not any(a.startswith(('--dask_npartitions', '--dask_partition_size'))
                                             for a in out):
    out.append(f'--dask_npartitions={max(num_tasks, 1)}')
  return out


def _runner(args: Sequence[str]) -> str:
  return next((a.split('=', 1)[1] for a in args if a.startswith('--runner=')), '')


def _check_runner_installed(args: Sequence[str]) -> None:
  """Imports the Dask runner when it is asked for (so its options are known), or says how to install it."""
  if _runner(args) != DASK_RUNNER:
    return
  import importlib
  try:
    for module in ('dask.distributed', 'apache_beam.runners.dask.dask_runner'):
      importlib.import_module(module)
  except ImportError as e:
    raise RunnerStartError(f'--runner=dask needs Dask ({e}); install it with pip install -e ".[dask]"') from None


def _runner_start_error(args: Sequence[str], error: Exception) -> RunnerStartError | None:
  """A one-line `RunnerStartError` for a runner that could not start (an unreachable Dask scheduler, a job server jar
  that could not be fetched), or None for any other error."""
  text = str(error)
  if _runner(args) == DASK_RUNNER and isinstance(error, OSError):
    address = next((a.split('=', 1)[1] for a in args if a.startswith('--dask_client_address=')), '')
    return RunnerStartError(f'--runner=dask cannot reach the Dask scheduler at --dask_client_address={address} '
                            f'({text.splitlines()[0] if text else type(error).__name__}); start it (dask scheduler) '
                            'or fix the address, or leave the flag out for a local cluster on this machine')
  if 'Unable to fetch remote job server jar' not in text:
    return None
  runner = _runner(args) or 'the runner'
  flag = _JOB_SERVER_JAR_FLAGS.get(runner.rsplit('.', 1)[-1].lower(), '--<runner>_job_server_jar')
  m = re.search(r'jar at (\S+): ', text)
  url = m.group(1) if m else 'its URL'
  return RunnerStartError(f'--runner={runner} cannot start: Beam could not download its job server jar ({url}; no '
                          f'network access?). Download that jar where there is network and pass {flag}=<local jar>, '
                          'or start the job server yourself and pass --job_endpoint=HOST:PORT')


def process_video(video: VideoInput, config: PrepConfig, worker=None) -> shards.VideoOutcome:
  """Runs the per-video path on one input and serialises it; never raises for a bad input.

  Args:
    video: the input.
    config: prep settings.
    worker: an `isolated_worker.IsolatedWorker` to decode and compute in (crash isolation), or None for in-process.

  Returns:
    A `VideoOutcome` with the record(s) (several with `config.segment_frames`), or with `reason`/`message` if the
    video failed.
  """
  from data_prep import isolated_worker
  from data_prep import video_targets

  try:
    if worker is not None:
      targets, seconds = worker.call(video_targets.extract_video_timed, video.path, config)
    else:
      targets, seconds = video_targets.extract_video_timed(video.path, config)
    t0 = time.perf_counter()
    meta = schema.VideoMeta(video_id=video_targets.video_id(video.path), label=video.label,
                            label_name=video.label_name, source_path=video.path, fps=targets.fps)
    records = video_targets.to_records(targets, meta, config)
    seconds['encode'] = seconds.get('encode', 0.0) + time.perf_counter() - t0
  except video_io.BadVideoError as e:
    return shards.VideoOutcome(video.path, reason=e.reason, message=e.message)
  except isolated_worker.WorkerCrashed as e:
    return shards.VideoOutcome(video.path, reason=video_io.DECODER_CRASH, message=str(e))
  except isolated_worker.WorkerTimeout as e:
    return shards.VideoOutcome(video.path, reason=video_io.TIMEOUT, message=str(e))
  except Exception as e:  # Anything unexpected is one failed input, not a failed job.
    return shards.VideoOutcome(video.path, reason=video_io.ERROR, message=f'{type(e).__name__}: {e}')
  jpeg = sum(len(b) for b in targets.jpeg_frames)
  return shards.VideoOutcome(video.path, records=records, num_frames=targets.num_frames,
                             non_jpeg_bytes=sum(schema.non_jpeg_bytes(r) for r in records), jpeg_bytes=jpeg,
                             stage_seconds=seconds)


def _make_dofn(config: PrepConfig, output_dir: str, isolation: str, video_timeout_s: float, opencv_threads: int,
               launcher: tuple[str, int] | None = None):
  """The shard DoFn. `launcher`: (host, pid) of the launching process; a worker process it started itself (the
  local runners) exits when it dies, so a killed job leaves no worker writing into the output directory."""
  import apache_beam as beam

  class ExtractShardFn(beam.DoFn):
    """Processes the videos of one `ShardTask` and writes its shard; emits the shard's result dict."""

    def __init__(self):
      super().__init__()
      self._ok = beam.metrics.Metrics.counter(COUNTER_NAMESPACE, 'videos_ok')
      self._failed = beam.metrics.Metrics.counter(COUNTER_NAMESPACE, 'videos_failed')
      self._frames = beam.metrics.Metrics.counter(COUNTER_NAMESPACE, 'frames')
      self._shards = beam.metrics.Metrics.counter(COUNTER_NAMESPACE, 'shards_written')
      self._worker = None

    def setup(self):
      import cv2
      cv2.setNumThreads(opencv_threads)
      if launcher is not None and launcher != (socket.gethostname(), os.getpid()):  # A worker process of its own.
        _drop_stderr_write_errors()  # Its stderr may be the launcher's _work/beam.log, on a full device.
      from data_prep import isolated_worker
      if isolation == 'subprocess':
        self._worker = isolated_worker.IsolatedWorker(timeout_s=video_timeout_s or None,
                                                      init=(cv2.setNumThreads, (opencv_threads,)))
      if launcher is not None and launcher == (socket.gethostname(), os.getppid()):  # A local worker of the launcher.
        isolated_worker.exit_with_parent(on_exit=self._worker.kill if self._worker is not None else None)

    def _count(self, out: shards.VideoOutcome) -> None:
      if out.records is None:
        self._failed.inc()
      else:
        self._ok.inc()
        self._frames.inc(out.num_frames)

    def _process_one(self, video: VideoInput) -> shards.VideoOutcome:
      return process_video(video, config, self._worker)

    def process(self, task: shards.ShardTask):
      result = shards.write_shard(output_dir, task, self._process_one, on_video=self._count)
      self._shards.inc()
      yield result

    def teardown(self):
      if self._worker is not None:
        self._worker.close()

  return ExtractShardFn()


def _code_version() -> dict[str, str]:
  """Package version and, when run from a git checkout, the commit (with `-dirty` for local changes)."""
  from importlib import metadata
  try:
    version = metadata.version('m3video_jax')
  except metadata.PackageNotFoundError:
    version = 'unknown'
  sha = ''
  try:
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sha = subprocess.run(['git', '-C', repo, 'describe', '--always', '--dirty', '--abbrev=12'], capture_output=True,
                         text=True, timeout=10, check=True).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    pass
  return {'package': version, 'git': sha}


@dataclasses.dataclass
class JobOptions:
  """Job-level settings besides the per-video `PrepConfig`."""
  prefix: str = 'videos'
  videos_per_shard: int = 64
  min_shards: int = 16
  max_bad_fraction: float = 0.05
  isolation: str = 'subprocess'  # 'subprocess' | 'none'
  video_timeout_s: float = 3600.0
  opencv_threads: int = 1
  progress_interval_s: float = 10.0
  overwrite: bool = False

  def __post_init__(self):
    if self.isolation not in ('subprocess', 'none'):
      raise ValueError(f'isolation={self.isolation!r} must be "subprocess" or "none"')
    if not 0.0 <= self.max_bad_fraction <= 1.0:
      raise ValueError(f'max_bad_fraction={self.max_bad_fraction} must be in [0, 1]')
    if not self.prefix or '/' in self.prefix:
      raise ValueError(f'prefix={self.prefix!r} must be a non-empty file name prefix without "/"')


def run(input_spec: str | Sequence[str], output_dir: str, config: PrepConfig, job: JobOptions | None = None, *,
        beam_args: Sequence[str] | None = None, data_root: str | None = None,
        label_map_path: str | None = None, log=None, quiet_libraries: bool = False, fmt: str = 'auto',
        split: str | None = None, split_id: int = 0) -> dict[str, Any]:
  """Runs the extraction job and returns the manifest (also written to the job directory's `manifest.json`).

  Args:
    input_spec: list file(s), directory, glob, official annotation file or `tfds:` input (`data_prep.inputs`).
    output_dir: local directory or `tf.io.gfile` URL. With a split (`split`, or the split an official annotation
      file names) it is the dataset directory: the split's shards go to `<output_dir>/<split>/<prefix>-*.tfrecord`
      and the dataset's `label_map.json` and TFDS metadata stay in `output_dir`.
    config: per-video settings.
    job: job-level settings.
    beam_args: Beam pipeline options; None -> the local multi-processing defaults (`DEFAULT_BEAM_ARGS`).
    data_root: base of relative paths in list files and of the videos of annotation files.
    label_map_path: JSON class list to use instead of sorted class names (or the SSV2 labels file).
    log: stream for the summary and progress lines (default stderr).
    quiet_libraries: send what Beam, its workers and TensorFlow print while the pipeline runs to
      `<job dir>/_work/beam.log` instead of the terminal (the CLI without `--verbose`).
    fmt: input format (`datasets.FORMATS`; 'auto' detects it).
    split, split_id: the split to prepare (official formats, TFDS) and UCF101/HMDB51's split number.

  Returns:
    The manifest dict.

  Raises:
    TooManyFailuresError: more than `job.max_bad_fraction` of the inputs failed (outputs are still written).
    ValueError: bad arguments, no inputs, a label out of range, a class list that differs from the one of a split
      already in the dataset directory, an unusable output directory or one that holds another job's shards.
    shards.OutputDirInUseError: another job is running on the output directory (a ValueError).
    DiskFullError: the output's device is full (a `cli.UserError`); the complete shards stay, a re-run resumes.
  """
  job = job or JobOptions()
  log = log or sys.stderr
  t_start = time.time()
  if split is not None and not re.fullmatch(r'[A-Za-z0-9_]+', split):
    raise ValueError(f'--split={split!r} must be a name of letters, digits and "_" (e.g. train, val, test)')
  dataset_map = _read_dataset_label_map(output_dir)
  # A list's class names take the indices of the splits already written (official formats bring their own list).
  listed = inputs_lib.list_inputs(input_spec, data_root=data_root, label_map_path=label_map_path, fmt=fmt,
                                  split=split, split_id=split_id, default_label_map=dataset_map if split else None)
  if not listed.videos:
    raise ValueError(f'--input={input_spec!r} lists no video files (extensions: {input_files.VIDEO_EXTENSIONS})')
  dataset_dir = None
  if listed.split:
    dataset_dir, output_dir = output_dir, shards.join(output_dir, listed.split)
    _check_same_classes(dataset_dir, dataset_map, listed)
  _check_labels(listed)
  tasks = shards.plan_shards(listed.videos, job.prefix, job.videos_per_shard, job.min_shards)
  if '://' in output_dir:
    shards.gfile().makedirs(output_dir)
  schema.writable_dir(output_dir, '--output_dir')
  _report_missing(listed, data_root, log)
  with shards.output_dir_lock(output_dir):
    return _run_locked(listed, tasks, input_spec, output_dir, config, job, beam_args, log, t_start,
                       quiet_libraries, dataset_dir)


def _read_dataset_label_map(output_dir: str) -> dict[str, int] | None:
  """The class list of the splits already written to `output_dir` (its `label_map.json`), if any."""
  path = shards.join(output_dir, shards.LABEL_MAP)
  if not input_files.exists(path):
    return None
  try:
    return input_files.label_map_from_json(json.loads(input_files.read_text(path)), path)
  except ValueError as e:
    raise ValueError(f'{path} (the class list of this dataset directory) is damaged: {e}') from None


def _check_same_classes(dataset_dir: str, dataset_map: dict[str, int] | None, listed) -> None:
  """Refuses a split whose class list differs from the one already in the dataset directory."""
  if dataset_map is None or not listed.label_map or listed.label_map == dataset_map:
    return
  path = shards.join(dataset_dir, shards.LABEL_MAP)
  diff = sorted(set(listed.label_map.items()) ^ set(dataset_map.items()))[:3]
  raise ValueError(f'the class list of this split ({len(listed.label_map)} classes) differs from {path} '
                   f'({len(dataset_map)} classes, written with an earlier split), e.g. {diff}: every split of a '
                   'dataset must use one class list; pass that file as --label_map, or use another --output_dir')


def _check_labels(listed) -> None:
  """Every label is -1 (unlabelled) or an index of the class list."""
  n = input_files.num_classes(listed.label_map)
  for v in listed.videos:
    if v.label < -1 or (n and v.label >= n):
      raise ValueError(f'{v.path} has label {v.label}, outside the label map\'s classes 0..{n - 1}'
                       if n else f'{v.path} has label {v.label}; expected -1 (unlabelled) or a class index >= 0')


def _report_missing(listed, data_root: str | None, log) -> None:
  """Says how many listed local videos do not exist (they are reported as `missing` failures); refuses a list none
  of whose videos exist (a wrong --data_root)."""
  local = [v.path for v in listed.videos if not input_files.is_remote(v.path) and not tfds_io.is_tfds_path(v.path)]
  missing = [p for p in local if not os.path.exists(p)]
  if not missing:
    return
  where = f'--data_root={data_root}' if data_root else 'the default --data_root (the annotation file\'s folder)'
  if len(missing) == len(listed.videos):
    raise ValueError(f'none of the {len(missing)} listed videos exists (e.g. {missing[0]}); check {where}')
  print(f'[data_prep] {len(missing)} of the {len(listed.videos)} listed videos do not exist (e.g. {missing[0]}); '
        'they are reported as "missing" in failures.jsonl', file=log, flush=True)


def _write_dataset_metadata(dataset_dir: str, listed, manifest: dict[str, Any], *, split_layout: bool, log) -> bool:
  """Writes the TFDS description (`tfds_io.write_metadata`) of every split in `dataset_dir`
  (`<split>/<prefix>-*.tfrecord`; without a split the shard prefix is the split name). Returns whether it did."""
  names = [n for n, _ in sorted(listed.label_map.items(), key=lambda kv: kv[1])] or None
  prefix = manifest['job']['prefix']
  if split_layout:
    splits = {}
    for entry in shards.gfile().listdir(dataset_dir):
      path = shards.join(dataset_dir, entry.rstrip('/'), shards.MANIFEST)
      if shards.gfile().exists(path):
        with shards.gfile().GFile(path) as f:
          other = json.load(f)
        if other.get('split') != entry.rstrip('/'):
          continue
        if other['job']['prefix'] != prefix:
          print(f'[data_prep] warning: split {other["split"]} has shard prefix {other["job"]["prefix"]!r}, this one '
                f'{prefix!r}: the TFDS metadata describes only the splits with prefix {prefix!r}', file=log)
          continue
        splits[other['split']] = other
    template = '{SPLIT}/' + prefix + '-{SHARD_X_OF_Y}.tfrecord'
  else:
    splits = {manifest['job']['prefix']: manifest}
    template = '{SPLIT}-{SHARD_X_OF_Y}.tfrecord'
  try:
    from data_prep import tfds_io
    tfds_io.write_metadata(dataset_dir, splits, names, template,
                           description=f'{listed.dataset or "videos"}: data_prep.extract output')
  except Exception as e:  # The shards are complete either way; only the TFDS description is missing.
    print(f'[data_prep] warning: the TFDS metadata (dataset_info.json) was not written: {type(e).__name__}: {e}',
          file=log, flush=True)
    return False
  return True


@contextlib.contextmanager
def _library_output_to_log(output_dir: str, log, enabled: bool):
  """With `enabled`: everything written to file descriptor 2 while the pipeline runs (Beam's worker processes, the
  isolated video workers, TensorFlow and Beam in this process) goes to `<output_dir>/_work/beam.log` (this run's only;
  a temp file, removed after a success, for a URL output), and the job's own lines go on to `log`. When the pipeline
  fails, the last lines of that log are shown.

  Yields:
    The stream for the job's own lines.
  """
  if not enabled:
    yield log
    return
  url = '://' in output_dir
  if url:
    fd, path = tempfile.mkstemp(prefix='data_prep_beam_', suffix='.log')
  else:
    path = os.path.join(output_dir, shards.WORK_DIR, shards.BEAM_LOG)
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
  _drop_stderr_write_errors()  # The in-process runners' workers print to it (see `_DropWriteErrors`).
  failed = False
  try:
    yield ours
  except (TooManyFailuresError, RunnerStartError):  # Their messages say all there is.
    raise
  except BaseException as e:
    failed = not cli.is_disk_full(e)  # So does `_run_locked`'s line for a full disk (which holds this log too).
    raise
  finally:
    sys.stderr.flush()
    sys.stderr = stderr
    os.dup2(saved, 2)
    os.close(saved)
    ours.flush()  # Left open: the progress thread may still print its last line to it.
    if url and not failed:
      os.remove(path)
    if failed:
      try:
        with open(path, errors='replace') as f:
          tail = f.read().splitlines()[-25:]
      except OSError:
        tail = []
      print(f'[data_prep] the pipeline failed; what Beam and its workers printed is in {path}, last lines:\n  '
            + '\n  '.join(tail), file=log, flush=True)


def _run_locked(listed, tasks, input_spec, output_dir, config, job, beam_args, log, t_start,
                quiet_libraries, dataset_dir) -> dict[str, Any]:
  """`run` once the output directory's lock is held.

  Raises:
    DiskFullError: when the output's device is full, wherever it was found (a worker writing a shard, the launcher
      writing the manifest); the shards complete by then stay, and the same command resumes.
  """
  try:
    shards.prepare_output_dir(output_dir, tasks, config, overwrite=job.overwrite)
    if listed.label_map:
      shards.write_json_atomic(shards.join(output_dir, shards.LABEL_MAP), listed.label_map)
      if dataset_dir is not None:  # Now, so that a split started while this one runs is held to the same list.
        shards.write_json_atomic(shards.join(dataset_dir, shards.LABEL_MAP), listed.label_map)
    _check_runner_installed(runner_args(beam_args or (), 1))
    _warn_unknown_beam_args(beam_args or (), log)  # After the lock: a refused second job exits without importing Beam.
    with _library_output_to_log(output_dir, log, quiet_libraries) as ours:
      return _run_pipeline(listed, tasks, input_spec, output_dir, config, job, beam_args, ours, t_start, dataset_dir)
  except Exception as e:
    if isinstance(e, cli.UserError) or not cli.is_disk_full(e):
      raise
    done = sum(shards.completed_result(output_dir, t) is not None for t in tasks)
    raise DiskFullError(f'--output_dir={output_dir}: no space left on its device; {done} of {len(tasks)} shards are '
                        'complete and kept. Free space and re-run the same command: it resumes with the missing '
                        'shards') from None


def _run_pipeline(listed, tasks, input_spec, output_dir, config, job, beam_args, log, t_start,
                  dataset_dir) -> dict[str, Any]:
  """The pipeline, the manifest, the dataset's metadata (`dataset_dir`: the dataset directory of a split, else None)
  and the summary."""
  import apache_beam as beam
  from apache_beam.options.pipeline_options import PipelineOptions
  from data_prep import progress

  pending = [t for t in tasks if shards.completed_result(output_dir, t) is None]
  print(f'[data_prep] {len(listed.videos)} videos in {len(tasks)} shards; {len(tasks) - len(pending)} shards already '
        f'complete, {len(pending)} to do -> {output_dir}', file=log, flush=True)

  counters: dict[str, int] = {}
  if pending:
    args = runner_args(beam_args if beam_args is not None else [], len(pending))
    if not any(a.startswith('--runner') for a in args):
      args = list(DEFAULT_BEAM_ARGS) + args
    options = PipelineOptions(args)
    monitor = progress.ProgressMonitor(output_dir, tasks, job.progress_interval_s, stream=log).start()
    try:
      pipeline = beam.Pipeline(options=options)
      _ = (pipeline
           | 'ShardTasks' >> beam.Create(pending)
           | 'Distribute' >> beam.Reshuffle()
           | 'ExtractShard' >> beam.ParDo(_make_dofn(config, output_dir, job.isolation, job.video_timeout_s,
                                                     job.opencv_threads, launcher=(socket.gethostname(), os.getpid()))))
      try:
        result = pipeline.run()
      except (RuntimeError, OSError) as e:  # OSError: distributed's "Timed out trying to connect".
        start_error = _runner_start_error(args, e)
        if start_error is None:
          raise
        raise start_error from None
      result.wait_until_finish()
    finally:
      monitor.stop()
    print(f'[data_prep] {monitor.line()}', file=log, flush=True)
    counters = _counters(result)
    if not counters:
      print(f'[data_prep] Beam counters: not reported by {_runner(args).rsplit(".", 1)[-1]} (the manifest below has '
            'the same figures)', file=log, flush=True)

  manifest = write_manifest(output_dir, tasks, config, job, listed, input_spec, time.time() - t_start)
  tfds_dir = dataset_dir or output_dir
  if not _write_dataset_metadata(tfds_dir, listed, manifest, split_layout=dataset_dir is not None, log=log):
    tfds_dir = None
  _print_summary(manifest, counters, log, output_dir, tfds_dir)
  if manifest['status'] != 'ok':
    raise TooManyFailuresError(
        f'{manifest["videos_failed"]} of {manifest["videos"]} inputs failed ({manifest["failed_fraction"]:.1%}), '
        f'more than --max_bad_fraction={job.max_bad_fraction}; see {shards.join(output_dir, shards.FAILURES)}')
  return manifest


def _counters(result) -> dict[str, int]:
  try:
    from apache_beam.metrics.metric import MetricsFilter
    query = result.metrics().query(MetricsFilter().with_namespace(COUNTER_NAMESPACE))
    return {c.key.metric.name: int(c.committed if c.committed is not None else c.attempted)
            for c in query['counters']}
  except Exception:  # Some runners do not report metrics; the manifest has the same numbers.
    return {}


def write_manifest(output_dir: str, tasks: Sequence[shards.ShardTask], config: PrepConfig, job: JobOptions,
                   listed: inputs_lib.InputList, input_spec, seconds: float) -> dict[str, Any]:
  """Collects the shard results into `manifest.json` and `failures.jsonl`.

  Raises:
    RuntimeError: if a shard has no complete result (the pipeline did not finish it).
  """
  results = []
  for t in tasks:
    res = shards.completed_result(output_dir, t)
    if res is None:
      raise RuntimeError(f'shard {t.name} is not complete after the pipeline ran; re-run the same command to resume')
    results.append(res)
  failures = [f for r in results for f in r['failures']]
  videos = sum(r['videos'] for r in results)
  frames = sum(r['frames'] for r in results)
  non_jpeg = sum(r['non_jpeg_bytes'] for r in results)
  jpeg = sum(r['jpeg_bytes'] for r in results)
  stage_seconds: dict[str, float] = {}
  for r in results:
    for k, v in r['stage_seconds'].items():
      stage_seconds[k] = stage_seconds.get(k, 0.0) + v
  failed_fraction = len(failures) / videos if videos else 0.0
  reasons: dict[str, int] = {}
  for f in failures:
    reasons[f['reason']] = reasons.get(f['reason'], 0) + 1
  manifest = {
      'schema_version': schema.SCHEMA_VERSION,
      'code_version': _code_version(),
      'created': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
      'input': input_spec if isinstance(input_spec, str) else list(input_spec),
      'config': config.to_json(),
      'job': dataclasses.asdict(job),
      'file_pattern': f'{job.prefix}-*-of-{len(tasks):05d}.tfrecord',
      'shards': [{'file': r['shard'], 'records': r['records'], 'bytes': r['bytes']} for r in results],
      'num_shards': len(results),
      'records': sum(r['records'] for r in results),
      'videos': videos,
      'videos_failed': len(failures),
      'failed_fraction': failed_fraction,
      'failure_reasons': reasons,
      'failure_report': shards.FAILURES,
      'frames': frames,
      'non_jpeg_bytes_per_frame': non_jpeg / frames if frames else 0.0,
      'jpeg_bytes_per_frame': jpeg / frames if frames else 0.0,
      'label_map': listed.label_map,
      'num_classes': input_files.num_classes(listed.label_map),
      'dataset': listed.dataset,
      'split': listed.split,
      'split_id': listed.split_id,
      'cpu_seconds_per_stage': stage_seconds,
      'wall_seconds_last_run': seconds,
      'status': 'ok' if failed_fraction <= job.max_bad_fraction else 'too_many_failures',
  }
  report = shards.join(output_dir, shards.FAILURES)
  tmp = report + '.tmp'
  with shards.gfile().GFile(tmp, 'w') as f:
    f.write(''.join(json.dumps(x, sort_keys=True) + '\n' for x in failures))
  shards.gfile().rename(tmp, report, overwrite=True)
  shards.write_json_atomic(shards.join(output_dir, shards.MANIFEST), manifest)
  return manifest


def _print_summary(manifest: dict[str, Any], counters: dict[str, int], log, output_dir: str,
                   tfds_dir: str | None) -> None:
  m = manifest
  print(f'[data_prep] done: {m["records"]} records in {m["num_shards"]} shards, {m["videos_failed"]} of {m["videos"]} '
        f'inputs failed{" " + json.dumps(m["failure_reasons"]) if m["failure_reasons"] else ""}, '
        f'{m["frames"]:,} frames', file=log)
  print(f'[data_prep] non-JPEG bytes per source frame: {m["non_jpeg_bytes_per_frame"] / 1024:.2f} KiB '
        f'(budget 20 KiB); JPEG: {m["jpeg_bytes_per_frame"] / 1024:.2f} KiB', file=log)
  if counters:
    print('[data_prep] Beam counters: ' + ', '.join(f'{k}={v}' for k, v in sorted(counters.items())), file=log)
  pattern = shards.join(output_dir, m['file_pattern'])
  written = [('manifest', shards.join(output_dir, shards.MANIFEST))]
  if m['videos_failed']:
    written.append(('failure report', shards.join(output_dir, m['failure_report'])))
  if tfds_dir:
    written.append(('TFDS dataset (tfds.builder_from_directory)', shards.join(tfds_dir, 'dataset_info.json')))
  commands = [f"python -m m3video_jax.visualize --shards='{pattern}' --output=/tmp/trajectories.png  # check by eye",
              f"python -m m3video_jax.main --config=configs/pretrain_{'k400' if m['dataset'] == 'k400' else 'ssv2'}.py "
              f"--workdir=$WD --config.data.train_files='{pattern}'"]
  if m['dataset'] in datasets.OFFICIAL and m['split']:
    dataset_dir = os.path.dirname(output_dir.rstrip('/'))
    commands.append(f'python -m m3video_jax.main --config=configs/finetune_{m["dataset"]}.py:data={dataset_dir} '
                    '--workdir=$FT --config.init_from=$WD  # once its held-out split is prepared too')
  cli.summary(f'[data_prep] wrote {pattern}', written, commands, stream=log)


def define_flags(fv) -> None:
  """The job's flags; any other `--flag` is a Beam pipeline option (`main`)."""
  from absl import flags

  d = PrepConfig()
  j = JobOptions()

  def flag(kind, name, default, help_text, **kwargs):
    getattr(flags, f'DEFINE_{kind}')(name=name, default=default, help=help_text, flag_values=fv, **kwargs)

  flag('multi_string', 'input', None, 'CSV/list file (path,label or "path label"), directory of class folders, glob, '
       'official annotation file of SSV2 (*.json), Kinetics (*.csv), UCF101 (ucfTrainTestlist/) or HMDB51 '
       '(testTrainMulti_7030_splits/), or tfds:<name>[/<config>]:<split>. Repeatable.', required=True)
  flag('string', 'output_dir', None, 'Output directory (local or gs://...); with a split, the dataset directory '
       '(shards in <output_dir>/<split>/).', required=True)
  flag('enum', 'format', 'auto', 'Input format (auto: detected from each --input).', enum_values=list(FORMATS))
  flag('string', 'split', None, 'Split to prepare (official formats, TFDS; for a list: write it as this split of '
       'the dataset in --output_dir). Default: the split the annotation file names.')
  flag('integer', 'split_id', 0, 'UCF101/HMDB51 split number 1, 2 or 3 (default: the list file\'s, else 1).')
  flag('string', 'data_root', None, 'Base of relative paths in list files and folder of the videos of annotation '
       'files (default: the annotation file\'s folder; UCF101/HMDB51: the folder above the split files).')
  flag('string', 'label_map', None, 'JSON {class name: index} or list of names (SSV2: the official labels file; '
       'default: sorted class names, or the list of the splits already in --output_dir).')
  flag('string', 'prefix', j.prefix, 'Shard file prefix: <prefix>-NNNNN-of-MMMMM.tfrecord.')
  flag('integer', 'short_side', d.short_side, 'Prep short side in px (0 = native size).')
  flag('integer', 'traj_len', d.traj_len, 'Trajectory length L (flow steps).')
  flag('integer', 'traj_start_stride', d.traj_start_stride, 'Frames between trajectory starts.')
  flag('enum', 'flow', d.flow, 'Optical-flow method.', enum_values=list(FLOW_METHODS))
  flag('enum', 'camera_motion', d.camera_motion,
       'Camera-motion removal: compose (1 flow/frame), rewarp (paper: warp + 2nd flow), none.',
       enum_values=list(CAMERA_MOTION_MODES))
  flag('bool', 'no_camera_motion', False, 'Same as --camera_motion=none.')
  flag('float', 'flow_bound', d.flow_bound, 'Clip flow to +-this many px.')
  flag('float', 'ransac_threshold', d.ransac_threshold, 'RANSAC threshold (px).')
  flag('integer', 'jpeg_quality', d.jpeg_quality, 'JPEG quality of stored frames.')
  flag('integer', 'max_frames', d.max_frames, 'Keep at most this many frames (0 = all).')
  flag('integer', 'min_native_side', d.min_native_side, 'Reject smaller videos (px).')
  flag('integer', 'segment_frames', d.segment_frames, 'Write videos longer than this as records of this many '
       'frames (segments; 0 = one record per video). For pretraining-only data: a clip then reads ~K frames, not the '
       'whole video. Classification needs whole videos.')
  flag('integer', 'segment_overlap', d.segment_overlap, 'Frames shared by consecutive segments.')
  flag('list', 'motion_maps', [], 'Flow-derived maps to store per frame pair, any of hof,mbh,flow (the HOF, MBH and '
       'Flow targets; default none: records as without the option).')
  flag('integer', 'videos_per_shard', j.videos_per_shard, 'Max videos per shard.')
  flag('integer', 'min_shards', j.min_shards, 'At least this many shards (if enough videos).')
  flag('float', 'max_bad_fraction', j.max_bad_fraction, 'Fail the job (exit 1) if more than this fraction of inputs '
       'fail.')
  flag('enum', 'isolation', j.isolation, 'Decode each video in a crash-isolated child process (default) or in the '
       'Beam worker.', enum_values=['subprocess', 'none'])
  flag('float', 'video_timeout_s', j.video_timeout_s, 'Per-video time limit (0 = none).')
  flag('integer', 'opencv_threads', j.opencv_threads, 'OpenCV threads per worker.')
  flag('float', 'progress_interval_s', j.progress_interval_s, 'Seconds between progress lines (0 = off).')
  flag('bool', 'overwrite', False, 'Replace the output of a job with other inputs or settings in --output_dir: '
       'deletes its <prefix>-NNNNN-of-MMMMM.tfrecord shards, manifest.json, failures.jsonl and _work/; any other '
       'file there (another *.tfrecord included) is kept.')


def _main(f, beam_args: list[str]) -> int:
  config = PrepConfig(short_side=f.short_side, traj_len=f.traj_len, traj_start_stride=f.traj_start_stride,
                      flow=f.flow, camera_motion='none' if f.no_camera_motion else f.camera_motion,
                      flow_bound=f.flow_bound, ransac_threshold=f.ransac_threshold, jpeg_quality=f.jpeg_quality,
                      max_frames=f.max_frames, min_native_side=f.min_native_side, segment_frames=f.segment_frames,
                      segment_overlap=f.segment_overlap, motion_maps=tuple(f.motion_maps))
  job = JobOptions(prefix=f.prefix, videos_per_shard=f.videos_per_shard, min_shards=f.min_shards,
                   max_bad_fraction=f.max_bad_fraction, isolation=f.isolation, video_timeout_s=f.video_timeout_s,
                   opencv_threads=f.opencv_threads, progress_interval_s=f.progress_interval_s, overwrite=f.overwrite)
  inputs = f.input[0] if len(f.input) == 1 else f.input
  try:
    run(inputs, f.output_dir, config, job, beam_args=beam_args, data_root=f.data_root, label_map_path=f.label_map,
        quiet_libraries=not f.verbose, fmt=f.format, split=f.split, split_id=f.split_id)
  except TooManyFailuresError as e:
    print(f'[data_prep] FAILED: {e}', file=sys.stderr)
    return 1
  return 0


def _warn_unknown_beam_args(beam_args: Sequence[str], log=None) -> None:
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


def main(argv: Sequence[str] | None = None) -> int:
  """The CLI (`m3video_jax.cli` convention; unknown flags are Beam pipeline options). Exit status: 0 done, 1 more than
  `--max_bad_fraction` of the inputs failed, 2 refused input (a one-line `[data_prep] error:`)."""
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # TF is only used for gfile and TFRecord writing here.
  return cli.run(define_flags, _main, argv, doc=__doc__, prog='python -m data_prep.extract', known_only=True,
                 errors=(ValueError, cli.UserError), error_status=2, error_prefix='[data_prep] ')


if __name__ == '__main__':
  sys.exit(main())
