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

import dataclasses
import datetime
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

from data_prep import beam_runner
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
from m3video_jax.data import prep_outputs
from m3video_jax.data import schema

class TooManyFailuresError(RuntimeError):
  """More than `max_bad_fraction` of the inputs failed (the shards of the good inputs are still written)."""


class DiskFullError(cli.UserError):
  """The device of the output directory is full (or the quota used up); the shards completed so far are kept."""


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
      self._ok = beam.metrics.Metrics.counter(beam_runner.COUNTER_NAMESPACE, 'videos_ok')
      self._failed = beam.metrics.Metrics.counter(beam_runner.COUNTER_NAMESPACE, 'videos_failed')
      self._frames = beam.metrics.Metrics.counter(beam_runner.COUNTER_NAMESPACE, 'frames')
      self._shards = beam.metrics.Metrics.counter(beam_runner.COUNTER_NAMESPACE, 'shards_written')
      self._worker = None

    def setup(self):
      import cv2
      cv2.setNumThreads(opencv_threads)
      if launcher is not None and launcher != (socket.gethostname(), os.getpid()):  # A worker process of its own.
        beam_runner.drop_stderr_write_errors()  # Its stderr may be the launcher's _work/beam.log, on a full device.
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
    beam_args: Beam pipeline options; None -> the local runner on this machine's cores (`beam_runner.default_args`).
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
  cli.writable_dir(output_dir, '--output_dir')
  _report_missing(listed, data_root, log)
  planned = _PlannedJob(listed=listed, tasks=tuple(tasks), input_spec=input_spec, output_dir=output_dir,
                        dataset_dir=dataset_dir, config=config, options=job,
                        beam_args=None if beam_args is None else tuple(beam_args), quiet_libraries=quiet_libraries,
                        t_start=t_start)
  with shards.output_dir_lock(output_dir):
    return _run_locked(planned, log)


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
  n = prep_outputs.num_classes(listed.label_map)
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


@dataclasses.dataclass(frozen=True)
class _PlannedJob:
  """One extraction job once its inputs are listed and its shards planned: what `_run_locked` and `_run_pipeline`
  work from."""
  listed: inputs_lib.InputList
  tasks: tuple[shards.ShardTask, ...]
  input_spec: str | Sequence[str]
  output_dir: str  # The split's directory for a split (its shards, manifest and failure report).
  dataset_dir: str | None  # The dataset directory of a split (its label map and TFDS metadata), else None.
  config: PrepConfig
  options: JobOptions
  beam_args: tuple[str, ...] | None  # None: the local runner (beam_runner.default_args).
  quiet_libraries: bool
  t_start: float


def _run_locked(job: _PlannedJob, log) -> dict[str, Any]:
  """`run` once the output directory's lock is held.

  Raises:
    DiskFullError: when the output's device is full, wherever it was found (a worker writing a shard, the launcher
      writing the manifest); the shards complete by then stay, and the same command resumes.
  """
  output_dir = job.output_dir
  try:
    shards.prepare_output_dir(output_dir, job.tasks, job.config, overwrite=job.options.overwrite)
    if job.listed.label_map:
      shards.write_json_atomic(shards.join(output_dir, shards.LABEL_MAP), job.listed.label_map)
      if job.dataset_dir is not None:  # Now, so that a split started while this one runs is held to the same list.
        shards.write_json_atomic(shards.join(job.dataset_dir, shards.LABEL_MAP), job.listed.label_map)
    beam_runner.check_runner_installed(beam_runner.runner_args(job.beam_args or (), 1))
    # After the lock: a refused second job exits without importing Beam.
    beam_runner.warn_unknown_beam_args(job.beam_args or (), log)
    log_path = None if '://' in output_dir else os.path.join(output_dir, shards.WORK_DIR, shards.BEAM_LOG)
    with beam_runner.library_output_to_log(log_path, log, job.quiet_libraries,
                                           plain_errors=(TooManyFailuresError,)) as ours:
      return _run_pipeline(job, ours)
  except Exception as e:
    if isinstance(e, cli.UserError) or not cli.is_disk_full(e):
      raise
    done = sum(shards.completed_result(output_dir, t) is not None for t in job.tasks)
    raise DiskFullError(f'--output_dir={output_dir}: no space left on its device; {done} of {len(job.tasks)} shards '
                        'are complete and kept. Free space and re-run the same command: it resumes with the missing '
                        'shards') from None


def _run_pipeline(job: _PlannedJob, log) -> dict[str, Any]:
  """The pipeline, the manifest, the dataset's metadata and the summary."""
  import apache_beam as beam
  from apache_beam.options.pipeline_options import PipelineOptions
  from data_prep import progress

  output_dir, tasks = job.output_dir, job.tasks
  pending = [t for t in tasks if shards.completed_result(output_dir, t) is None]
  print(f'[data_prep] {len(job.listed.videos)} videos in {len(tasks)} shards; {len(tasks) - len(pending)} shards '
        f'already complete, {len(pending)} to do -> {output_dir}', file=log, flush=True)

  counters: dict[str, int] = {}
  if pending:
    args = beam_runner.runner_args(job.beam_args if job.beam_args is not None else [], len(pending))
    if not any(a.startswith('--runner') for a in args):
      args = beam_runner.default_args(len(pending), args)
    options = PipelineOptions(args)
    o = job.options
    monitor = progress.ProgressMonitor(output_dir, list(tasks), o.progress_interval_s, stream=log).start()
    try:
      pipeline = beam.Pipeline(options=options)
      _ = (pipeline
           | 'ShardTasks' >> beam.Create(pending)
           | 'Distribute' >> beam.Reshuffle()
           | 'ExtractShard' >> beam.ParDo(_make_dofn(job.config, output_dir, o.isolation, o.video_timeout_s,
                                                     o.opencv_threads, launcher=(socket.gethostname(), os.getpid()))))
      try:
        result = pipeline.run()
      except (RuntimeError, OSError) as e:  # OSError: distributed's "Timed out trying to connect".
        start_error = beam_runner.runner_start_error(args, e)
        if start_error is None:
          raise
        raise start_error from None
      result.wait_until_finish()
    finally:
      monitor.stop()
    print(f'[data_prep] {monitor.line()}', file=log, flush=True)
    counters = beam_runner.counters(result)
    if not counters:
      print(f'[data_prep] Beam counters: not reported by {beam_runner.runner_name(args).rsplit(".", 1)[-1]} (the '
            'manifest below has the same figures)', file=log, flush=True)

  manifest = write_manifest(output_dir, tasks, job.config, job.options, job.listed, job.input_spec,
                            time.time() - job.t_start)
  tfds_dir = job.dataset_dir or output_dir
  if not _write_dataset_metadata(tfds_dir, job.listed, manifest, split_layout=job.dataset_dir is not None, log=log):
    tfds_dir = None
  _print_summary(manifest, counters, log, output_dir, tfds_dir)
  if manifest['status'] != 'ok':
    raise TooManyFailuresError(
        f'{manifest["videos_failed"]} of {manifest["videos"]} inputs failed ({manifest["failed_fraction"]:.1%}), '
        f'more than --max_bad_fraction={job.options.max_bad_fraction}; see '
        f'{shards.join(output_dir, shards.FAILURES)}')
  return manifest


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
      prep_outputs.MANIFEST_SCHEMA_VERSION: schema.SCHEMA_VERSION,
      'code_version': _code_version(),
      'created': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
      'input': input_spec if isinstance(input_spec, str) else list(input_spec),
      prep_outputs.MANIFEST_CONFIG: config.to_json(),
      'job': dataclasses.asdict(job),
      'file_pattern': f'{job.prefix}-*-of-{len(tasks):05d}.tfrecord',
      prep_outputs.MANIFEST_SHARDS: [{prep_outputs.MANIFEST_FILE: r['shard'], 'records': r['records'],
                                      'bytes': r['bytes']} for r in results],
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
      'num_classes': prep_outputs.num_classes(listed.label_map),
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


def main(argv: Sequence[str] | None = None) -> int:
  """The CLI (`m3video_jax.cli` convention; unknown flags are Beam pipeline options). Exit status: 0 done, 1 more than
  `--max_bad_fraction` of the inputs failed, 2 refused input (a one-line `[data_prep] error:`)."""
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # TF is only used for gfile and TFRecord writing here.
  return cli.run(define_flags, _main, argv, doc=__doc__, prog='python -m data_prep.extract', known_only=True,
                 errors=(ValueError, cli.UserError), error_status=2, error_prefix='[data_prep] ')


if __name__ == '__main__':
  sys.exit(main())
