"""Segment records (data prep `--segment_frames`): bounds, contents equal to the whole video's, and who reads them."""
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from configs import pretrain_ssv2
from data_prep import synthetic
from data_prep import video_targets
from data_prep.options import PrepConfig
from m3video_jax.data import classification
from m3video_jax.data import pretraining
from m3video_jax.data import schema
from m3video_jax.data import stream


@pytest.mark.parametrize('n,k,overlap,stride', [(100, 48, 0, 2), (101, 48, 16, 2), (97, 48, 0, 2), (50, 48, 0, 2),
                                                 (300, 64, 32, 2), (40, 48, 0, 2), (93, 20, 6, 1), (120, 30, 0, 3)])
def test_segment_bounds_cover_the_video_with_aligned_starts(n, k, overlap, stride):
  bounds = video_targets.segment_bounds(n, k, overlap, stride)
  if n <= k:
    assert bounds == [(0, n)]
    return
  starts = [a for a, _ in bounds]
  assert starts == sorted(set(starts)) and starts[0] == 0 and bounds[-1][1] == n
  assert all(a % stride == 0 for a in starts)
  assert all(b - a == k for a, b in bounds[:-1]) and k <= bounds[-1][1] - bounds[-1][0] < k + stride
  # Consecutive full segments overlap by exactly `overlap`; no frame is left out.
  assert all(b0 - a1 == overlap for (_, b0), (a1, _) in zip(bounds[:-2], bounds[1:-1]))
  assert all(a1 <= b0 for (_, b0), (a1, _) in zip(bounds[:-1], bounds[1:]))


def test_segment_config_is_validated():
  with pytest.raises(ValueError, match='segment_frames=5 must be 0'):
    PrepConfig(segment_frames=5, traj_len=6)
  with pytest.raises(ValueError, match='multiple of traj_start_stride=2'):
    PrepConfig(segment_frames=48, segment_overlap=15)
  with pytest.raises(ValueError, match='needs segment_frames > 0'):
    PrepConfig(segment_overlap=4)


@pytest.fixture(scope='module')
def video():
  spec = synthetic.sample_spec(np.random.default_rng(3), 1, 64, 48, 31)
  config = PrepConfig(short_side=0, traj_len=4, segment_frames=12, segment_overlap=4)
  targets = video_targets.extract_from_frames(iter(synthetic.render(spec)), config, fps=25.0)
  meta = schema.VideoMeta(video_id='v', label=1, label_name='translate_right', source_path='/v.mp4', fps=25.0)
  return config, targets, meta


def test_segment_records_hold_the_slices_of_the_whole_video(video):
  config, targets, meta = video
  records = video_targets.to_records(targets, meta, config)
  bounds = video_targets.segment_bounds(targets.num_frames, 12, 4, 2)
  assert len(records) == len(bounds) == 4  # [0, 12), [8, 20), [16, 28), [18, 31)
  whole = schema.decode(video_targets.to_record(targets, meta, config))
  assert whole['segment_start'] == 0 and whole['video_frames'] == whole['num_frames'] == 31
  for record, (a, b) in zip(records, bounds):
    d = schema.decode(record)
    assert (d['segment_start'], d['video_frames'], d['num_frames']) == (a, 31, b - a)
    np.testing.assert_array_equal(d['frames'], whole['frames'][a:b])
    np.testing.assert_array_equal(d['hog_map'], whole['hog_map'][a:b])
    first = a // 2
    count = schema.num_starts(b - a, 4, 2)
    assert count > 0
    np.testing.assert_array_equal(d['traj_disp'], whole['traj_disp'][first:first + count])
    np.testing.assert_array_equal(d['traj_inside_steps'], whole['traj_inside_steps'][first:first + count])
    np.testing.assert_array_equal(d['traj_hog'], whole['traj_hog'][first:first + count])


def _write(tmp_path, records, segment_frames, name='train-00000-of-00001.tfrecord'):
  """One shard of `records`, with a manifest beside it unless `segment_frames` is None (copied shards)."""
  os.makedirs(tmp_path, exist_ok=True)
  shard = os.path.join(tmp_path, name)
  with tf.io.TFRecordWriter(shard) as w:
    for r in records:
      w.write(r)
  if segment_frames is None:
    return shard
  with open(os.path.join(tmp_path, 'manifest.json'), 'w') as f:
    json.dump({'config': {'segment_frames': segment_frames},
               'shards': [{'file': os.path.basename(shard), 'records': len(records),
                           'bytes': os.path.getsize(shard)}]}, f)
  return shard


def _pretrain_config(shard, num_frames):
  c = pretrain_ssv2.get_config('tiny')
  c.data.update(train_files=shard, num_frames=num_frames, frame_stride=2, res=32, batch_size=2, shuffle_buffer=4,
                clip_ops='device')
  c.target.traj_len = 4
  return c


def test_pretraining_reads_segments_and_refuses_segments_shorter_than_a_clip(video, tmp_path):
  config, targets, meta = video
  shard = _write(str(tmp_path), video_targets.to_records(targets, meta, config), 12)
  # 4 frames at stride 2 with L = 4: the last tubelet starts 4 frames in, its trajectories end 4 frames later: 9.
  batch = next(pretraining.train_iterator(_pretrain_config(shard, 4)))
  assert batch['frames'].shape == (2, 4, 32, 32, 3) and batch['traj_ok'].any()  # data.clip_ops='device'
  # 8 frames: the last tubelet starts 12 frames in: 12 + 4 + 1 = 17 frames > 12.
  with pytest.raises(ValueError, match=r'segments of 12 frames.*spans 17 frames.*--segment_frames >= 17'):
    pretraining.train_iterator(_pretrain_config(shard, 8))


def test_pretraining_takes_the_segment_length_from_the_manifest_when_the_first_record_is_a_whole_short_video(
    video, tmp_path):
  config, targets, meta = video
  frames = synthetic.render(synthetic.sample_spec(np.random.default_rng(4), 2, 64, 48, 10))
  short = video_targets.to_record(video_targets.extract_from_frames(iter(frames), config), meta, config)
  assert schema.decode(short)['video_frames'] == 10  # Not longer than the segments: one whole-video record.
  shard = _write(str(tmp_path), [short] + video_targets.to_records(targets, meta, config), 12)
  with pytest.raises(ValueError, match=r'manifest.json\) hold segments of 12 frames.*spans 17 frames'):
    pretraining.train_iterator(_pretrain_config(shard, 8))


def test_classification_refuses_segment_records(video, tmp_path):
  config, targets, meta = video
  shard = _write(str(tmp_path), video_targets.to_records(targets, meta, config), 12)
  with pytest.raises(stream.DataError, match='segments of 12 frames.*without --segment_frames'):
    classification.check_class_count([shard], 8, 'config.data.train_files')


def test_classification_refuses_segment_records_without_their_manifest(video, tmp_path):
  """Shards copied without `manifest.json`: the records' own `segment_start` / `video_frames` show the segments (a
  fine-tune used to train and test on them, "16 held-out videos" for 8)."""
  config, targets, meta = video
  whole = _write(str(tmp_path), [video_targets.to_record(targets, meta, config)], None, 'a-00000-of-00002.tfrecord')
  segments = _write(str(tmp_path), video_targets.to_records(targets, meta, config), None, 'a-00001-of-00002.tfrecord')
  classification.check_class_count([whole], 8, 'config.data.eval_files')  # Whole videos pass.
  with pytest.raises(stream.DataError) as info:
    classification.check_class_count([whole, segments], 8, 'config.data.eval_files')
  message = str(info.value)
  assert message.startswith('1 of the 2 shards of config.data.eval_files'), message
  assert segments in message and whole not in message, message
  assert 'read from their first records) hold segments of 12 frames' in message, message
  assert 'without --segment_frames' in message, message
