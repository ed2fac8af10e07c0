"""The motion-target extraction job: video files -> TFRecord shards (+ manifest, failure report), on Apache Beam.

Local run (all cores, Beam's in-process portable runner in multi-processing mode; the default when no --runner is
given):
  python -m data_prep.extract --input=videos.csv --output_dir=/data/prep [--short_side=256 --traj_len=6 ...]
Any Beam pipeline option can follow (e.g. `--runner=DataflowRunner --project=... --region=... --temp_location=gs://...
--setup_file=./setup.py`); see docs/data_prep.md for Dataflow, Flink and Spark.

Pipeline: the launcher lists the inputs and plans the shards (`shards.plan_shards`), skips shards that are already
complete (resume), then `Create(pending shards) | Reshuffle | ParDo(ExtractShardFn)`; each shard's videos are processed
one by one in a crash-isolated child process (`isolated_worker`), written to a temp file and renamed into place.
Afterwards the launcher writes `manifest.json` and `failures.jsonl`, prints the storage figures and the Beam counters,
and exits non-zero if more than `--max_bad_fraction` of the inputs failed.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

from data_prep import inputs as inputs_lib
from data_prep import shards
from data_prep import video_io
from data_prep.config import CAMERA_MOTION_MODES, FLOW_METHODS, PrepConfig
from data_prep.inputs import VideoInput
from m3video_jax import paths
from m3video_jax.data import schema

COUNTER_NAMESPACE = 'data_prep'
DEFAULT_BEAM_ARGS = ('--runner=FnApiRunner', '--direct_running_mode=multi_processing', '--direct_num_workers=0',
                     '--default_sdk_harness_log_level=WARNING')


class TooManyFailuresError(RuntimeError):
  """More than `max_bad_fraction` of the inputs failed (the shards of the good inputs are still written)."""


def process_video(video: VideoInput, config: PrepConfig, worker=None) -> shards.VideoOutcome:
  """Runs the per-video path on one input and serialises it; never raises for a bad input.

  Args:
    video: the input.
    config: prep settings.
    worker: an `isolated_worker.IsolatedWorker` to decode and compute in (crash isolation), or None for in-process.

  Returns:
    A `VideoOutcome` with the record, or with `reason`/`message` if the video failed.
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
    record = video_targets.to_record(targets, meta, config)
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
  return shards.VideoOutcome(video.path, record=record, num_frames=targets.num_frames,
                             non_jpeg_bytes=schema.non_jpeg_bytes(record), jpeg_bytes=jpeg, stage_seconds=seconds)


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
      from data_prep import isolated_worker
      if isolation == 'subprocess':
        self._worker = isolated_worker.IsolatedWorker(timeout_s=video_timeout_s or None,
                                                      init=(cv2.setNumThreads, (opencv_threads,)))
      if launcher is not None and launcher == (socket.gethostname(), os.getppid()):  # A local worker of the launcher.
        isolated_worker.exit_with_parent(on_exit=self._worker.kill if self._worker is not None else None)

    def _count(self, out: shards.VideoOutcome) -> None:
      if out.record is None:
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
        label_map_path: str | None = None, log=None) -> dict[str, Any]:
  """Runs the extraction job and returns the manifest (also written to `output_dir/manifest.json`).

  Args:
    input_spec: list file(s), directory or glob (see `data_prep.inputs`).
    output_dir: local directory or `tf.io.gfile` URL.
    config: per-video settings.
    job: job-level settings.
    beam_args: Beam pipeline options; None -> the local multi-processing defaults (`DEFAULT_BEAM_ARGS`).
    data_root: base of relative paths in list files (default: the list file's folder).
    label_map_path: JSON `{class name: index}` to use instead of sorted class names.
    log: stream for the summary and progress lines (default stderr).

  Returns:
    The manifest dict.

  Raises:
    TooManyFailuresError: more than `job.max_bad_fraction` of the inputs failed (outputs are still written).
    ValueError: bad arguments, no inputs, an unusable output directory or one that holds another job's shards.
    shards.OutputDirInUseError: another job is running on `output_dir` (a ValueError).
  """
  job = job or JobOptions()
  log = log or sys.stderr
  t_start = time.time()
  listed = inputs_lib.list_inputs(input_spec, data_root=data_root, label_map_path=label_map_path)
  if not listed.videos:
    raise ValueError(f'--input={input_spec!r} lists no video files (extensions: {inputs_lib.VIDEO_EXTENSIONS})')
  tasks = shards.plan_shards(listed.videos, job.prefix, job.videos_per_shard, job.min_shards)
  if '://' in output_dir:
    shards.gfile().makedirs(output_dir)
  paths.writable_dir(output_dir, '--output_dir')
  with shards.output_dir_lock(output_dir):
    return _run_locked(listed, tasks, input_spec, output_dir, config, job, beam_args, log, t_start)


def _run_locked(listed, tasks, input_spec, output_dir, config, job, beam_args, log, t_start) -> dict[str, Any]:
  """`run` once the output directory's lock is held."""
  import apache_beam as beam
  from apache_beam.options.pipeline_options import PipelineOptions
  from data_prep import progress

  shards.prepare_output_dir(output_dir, tasks, config, overwrite=job.overwrite)
  if listed.label_map:
    shards.write_json_atomic(shards.join(output_dir, shards.LABEL_MAP), listed.label_map)
  pending = [t for t in tasks if shards.completed_result(output_dir, t) is None]
  print(f'[data_prep] {len(listed.videos)} videos in {len(tasks)} shards; {len(tasks) - len(pending)} shards already '
        f'complete, {len(pending)} to do -> {output_dir}', file=log, flush=True)

  counters: dict[str, int] = {}
  if pending:
    args = list(beam_args) if beam_args is not None else []
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
      result = pipeline.run()
      result.wait_until_finish()
    finally:
      monitor.stop()
    print(f'[data_prep] {monitor.line()}', file=log, flush=True)
    counters = _counters(result)

  manifest = write_manifest(output_dir, tasks, config, job, listed, input_spec, time.time() - t_start)
  _print_summary(manifest, counters, log)
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


def _print_summary(manifest: dict[str, Any], counters: dict[str, int], log) -> None:
  m = manifest
  print(f'[data_prep] done: {m["records"]} records in {m["num_shards"]} shards, {m["videos_failed"]} of {m["videos"]} '
        f'inputs failed{" " + json.dumps(m["failure_reasons"]) if m["failure_reasons"] else ""}, '
        f'{m["frames"]:,} frames', file=log)
  print(f'[data_prep] non-JPEG bytes per source frame: {m["non_jpeg_bytes_per_frame"] / 1024:.2f} KiB '
        f'(budget 16 KiB); JPEG: {m["jpeg_bytes_per_frame"] / 1024:.2f} KiB', file=log)
  if counters:
    print('[data_prep] Beam counters: ' + ', '.join(f'{k}={v}' for k, v in sorted(counters.items())), file=log)
  if m['videos_failed']:
    print(f'[data_prep] failure report: {m["failure_report"]}', file=log)
  log.flush()


def build_arg_parser() -> argparse.ArgumentParser:
  d = PrepConfig()
  j = JobOptions()
  p = argparse.ArgumentParser(
      prog='python -m data_prep.extract',
      description='Extract frames, warped-flow trajectories and HOG maps into TFRecord shards (Apache Beam). '
      'Unknown flags are passed to Beam as pipeline options.')
  p.add_argument('--input', action='append', required=True,
                 help='CSV/list file (path,label or "path label"), directory of class folders, or glob. Repeatable.')
  p.add_argument('--output_dir', required=True, help='Output directory (local or gs://...).')
  p.add_argument('--data_root', default=None, help='Base of relative paths in list files (default: its folder).')
  p.add_argument('--label_map', default=None, help='JSON {class name: index} (default: sorted class names).')
  p.add_argument('--prefix', default=j.prefix, help='Shard file prefix: <prefix>-NNNNN-of-MMMMM.tfrecord.')
  p.add_argument('--short_side', type=int, default=d.short_side, help='Prep short side in px (0 = native size).')
  p.add_argument('--traj_len', type=int, default=d.traj_len, help='Trajectory length L (flow steps).')
  p.add_argument('--traj_start_stride', type=int, default=d.traj_start_stride, help='Frames between trajectory starts.')
  p.add_argument('--flow', choices=FLOW_METHODS, default=d.flow, help='Optical-flow method.')
  p.add_argument('--camera_motion', choices=CAMERA_MOTION_MODES, default=d.camera_motion,
                 help='Camera-motion removal: compose (1 flow/frame), rewarp (paper: warp + 2nd flow), none.')
  p.add_argument('--no_camera_motion', action='store_true', help='Same as --camera_motion=none.')
  p.add_argument('--flow_bound', type=float, default=d.flow_bound, help='Clip flow to +-this many px.')
  p.add_argument('--ransac_threshold', type=float, default=d.ransac_threshold, help='RANSAC threshold (px).')
  p.add_argument('--jpeg_quality', type=int, default=d.jpeg_quality, help='JPEG quality of stored frames.')
  p.add_argument('--max_frames', type=int, default=d.max_frames, help='Keep at most this many frames (0 = all).')
  p.add_argument('--min_native_side', type=int, default=d.min_native_side, help='Reject smaller videos (px).')
  p.add_argument('--videos_per_shard', type=int, default=j.videos_per_shard, help='Max videos per shard.')
  p.add_argument('--min_shards', type=int, default=j.min_shards, help='At least this many shards (if enough videos).')
  p.add_argument('--max_bad_fraction', type=float, default=j.max_bad_fraction,
                 help='Fail the job (exit 1) if more than this fraction of inputs fail.')
  p.add_argument('--isolation', choices=('subprocess', 'none'), default=j.isolation,
                 help='Decode each video in a crash-isolated child process (default) or in the Beam worker.')
  p.add_argument('--video_timeout_s', type=float, default=j.video_timeout_s, help='Per-video time limit (0 = none).')
  p.add_argument('--opencv_threads', type=int, default=j.opencv_threads, help='OpenCV threads per worker.')
  p.add_argument('--progress_interval_s', type=float, default=j.progress_interval_s,
                 help='Seconds between progress lines (0 = off).')
  p.add_argument('--overwrite', action='store_true', help='Delete shards of another job in --output_dir.')
  return p


def main(argv: Sequence[str] | None = None) -> int:
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # TF is only used for gfile and TFRecord writing here.
  args, beam_args = build_arg_parser().parse_known_args(argv)
  try:
    config = PrepConfig(short_side=args.short_side, traj_len=args.traj_len, traj_start_stride=args.traj_start_stride,
                        flow=args.flow, camera_motion='none' if args.no_camera_motion else args.camera_motion,
                        flow_bound=args.flow_bound, ransac_threshold=args.ransac_threshold,
                        jpeg_quality=args.jpeg_quality, max_frames=args.max_frames,
                        min_native_side=args.min_native_side)
    job = JobOptions(prefix=args.prefix, videos_per_shard=args.videos_per_shard, min_shards=args.min_shards,
                     max_bad_fraction=args.max_bad_fraction, isolation=args.isolation,
                     video_timeout_s=args.video_timeout_s, opencv_threads=args.opencv_threads,
                     progress_interval_s=args.progress_interval_s, overwrite=args.overwrite)
    inputs = args.input[0] if len(args.input) == 1 else args.input
    run(inputs, args.output_dir, config, job, beam_args=beam_args, data_root=args.data_root,
        label_map_path=args.label_map)
  except TooManyFailuresError as e:
    print(f'[data_prep] FAILED: {e}', file=sys.stderr)
    return 1
  except ValueError as e:
    print(f'[data_prep] error: {e}', file=sys.stderr)
    return 2
  return 0


if __name__ == '__main__':
  sys.exit(main())
