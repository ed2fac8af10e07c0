"""The demo config end to end: synthetic videos -> Beam data prep -> pretraining -> checkpoint, on a few tiny videos."""
import json
import os

import numpy as np

from configs import demo
from m3video_jax import checkpointing
from m3video_jax import train_lib


def test_demo_prepares_data_trains_and_resumes(tmp_path):
  config = demo.get_config('num_videos=8,steps=6')
  with config.unlocked():
    config.data.synthetic_frames = 24
    config.checkpoint_every_steps = 3
    config.log_every_steps = 3
  first = train_lib.train_and_evaluate(config, str(tmp_path))
  assert np.isfinite(first['train/loss'])
  manifest = json.load(open(tmp_path / 'data' / 'tfrecords' / 'manifest.json'))
  assert manifest['records'] >= 4 and manifest['videos_failed'] == 0
  assert checkpointing.resolve_checkpoint(str(tmp_path))[1] == 6
  assert any(f.startswith('events.out.tfevents') for f in os.listdir(tmp_path))
  # Same command with more steps: reuses the prepared data and resumes from step 6.
  with config.unlocked():
    config.total_steps = 9
  second = train_lib.train_and_evaluate(config, str(tmp_path))
  assert np.isfinite(second['train/loss'])
  assert checkpointing.resolve_checkpoint(str(tmp_path))[1] == 9
