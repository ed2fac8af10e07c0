"""Test helper: TFRecord shards of the synthetic motion videos, written in-process (no Beam, no flow).

The records carry the real rendered frames and labels of `data_prep.synthetic` and placeholder trajectories, which the
classification input never reads.
"""
import os

import cv2
import numpy as np

from data_prep import synthetic
from m3video_jax.data import schema


def encode_video(frames: np.ndarray, label: int, video_id: str) -> bytes:
  """A schema record of uint8 RGB frames `[N, H, W, 3]` with placeholder (L = 1) trajectories and HOG."""
  n, h, w = frames.shape[:3]
  jpegs = [cv2.imencode('.jpg', cv2.cvtColor(f, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
           for f in frames]
  gh, gw = schema.grid_shape(h, w)
  starts = schema.num_starts(n, 1, 2)
  meta = schema.VideoMeta(video_id=video_id, label=label, label_name=synthetic.CLASSES[label % 8],
                          source_path=f'/synthetic/{video_id}.mp4', fps=25.0)
  return schema.encode(meta, jpegs, h, w, np.zeros((starts, 1, gh, gw, 2), np.float32),
                       np.ones((starts, gh, gw), bool), np.zeros((n, gh, gw, 9), np.float32), traj_start_stride=2)


def write_motion_shards(directory, *, num_videos: int, size: int = 64, frames: int = 24, seed: int = 0,
                        num_shards: int = 2, prefix: str = 'train') -> str:
  """Renders `num_videos` synthetic videos (classes round robin) into `num_shards` shards; returns their glob."""
  import tensorflow as tf

  os.makedirs(directory, exist_ok=True)
  rng = np.random.default_rng(seed)
  writers = [tf.io.TFRecordWriter(os.path.join(directory, f'{prefix}-{i:05d}-of-{num_shards:05d}.tfrecord'))
             for i in range(num_shards)]
  for i in range(num_videos):
    spec = synthetic.sample_spec(rng, i % len(synthetic.CLASSES), size, size, frames)
    writers[i % num_shards].write(encode_video(synthetic.render(spec), spec.label, f'{prefix}{i:04d}'))
  for w in writers:
    w.close()
  return os.path.join(directory, f'{prefix}-*.tfrecord')
