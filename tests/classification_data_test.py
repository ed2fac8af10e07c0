"""Classification input: per-clip augmentations (same op / box on every frame), sampling views, train/eval streams."""
import numpy as np
import pytest
import tensorflow as tf

import motion_records
from configs import finetune_ssv2
from m3video_jax.data import classification
from m3video_jax.data import clip_augment

RNG = np.random.default_rng(0)


def random_clip(t=3, size=24):
  return RNG.integers(0, 256, size=(t, size, size, 3)).astype(np.float32)


def test_every_rand_augment_op_acts_alike_on_every_frame():
  a, b = random_clip(1)[0], random_clip(1)[0]
  for op in range(len(clip_augment.RAND_AUGMENT_OPS)):
    out = clip_augment.apply_op(tf.constant(np.stack([a, b, a])), tf.constant(op), tf.constant(9.0),
                                tf.constant(op % 2 == 0)).numpy()
    alone = clip_augment.apply_op(tf.constant(b[None]), tf.constant(op), tf.constant(9.0),
                                  tf.constant(op % 2 == 0)).numpy()
    name = clip_augment.RAND_AUGMENT_OPS[op]
    np.testing.assert_array_equal(out[0], out[2], err_msg=name)  # identical frames stay identical
    np.testing.assert_allclose(out[1], alone[0], atol=1e-3, err_msg=name)  # a frame's result ignores its neighbours
    assert out.min() >= 0 and out.max() <= 255 and not np.array_equal(out, np.stack([a, b, a])), name


def test_rand_augment_draws_once_per_clip():
  clip = random_clip(4)
  for s in range(6):
    seed = tf.constant([s, 7], tf.int64)
    out = clip_augment.rand_augment(tf.constant(clip), seed, num_ops=4, magnitude=9.0, magnitude_std=0.5).numpy()
    for i in range(4):  # Each frame got exactly what the same draw gives it alone: same ops, magnitudes and signs.
      alone = clip_augment.rand_augment(tf.constant(clip[i:i + 1]), seed, num_ops=4, magnitude=9.0,
                                        magnitude_std=0.5).numpy()
      np.testing.assert_allclose(out[i], alone[0], atol=1e-3)


def test_pixel_ops_match_pil():
  image_module = pytest.importorskip('PIL.Image')
  ops = pytest.importorskip('PIL.ImageOps')
  enhance = pytest.importorskip('PIL.ImageEnhance')
  img = random_clip(1, 32)[0]
  img[:8] = np.clip(img[:8] * 0.3 + 40, 0, 255).round()  # An uneven histogram for equalize/autocontrast.
  pil = image_module.fromarray(img.astype(np.uint8))
  level = 0.7  # magnitude 7
  factor = 1 + 0.9 * level
  expected = {
      'AutoContrast': ops.autocontrast(pil), 'Equalize': ops.equalize(pil), 'Invert': ops.invert(pil),
      'PosterizeIncreasing': ops.posterize(pil, 4 - int(level * 4)),
      'SolarizeIncreasing': ops.solarize(pil, 256 - int(level * 256)),
      'ColorIncreasing': enhance.Color(pil).enhance(factor),
      'ContrastIncreasing': enhance.Contrast(pil).enhance(factor),
      'BrightnessIncreasing': enhance.Brightness(pil).enhance(factor),
      'SharpnessIncreasing': enhance.Sharpness(pil).enhance(factor),
  }
  for name, want in expected.items():
    got = clip_augment.apply_op(tf.constant(img[None]), tf.constant(clip_augment.RAND_AUGMENT_OPS.index(name)),
                                tf.constant(7.0), tf.constant(False)).numpy()[0]
    diff = np.abs(got - np.asarray(want, np.float32))
    assert diff.max() <= 1.0, (name, diff.max())  # PIL rounds some intermediate values differently by 1.


def test_random_erasing_same_box_on_every_frame():
  clip = tf.zeros([4, 32, 32, 3])
  erased_any = False
  for s in range(8):
    out = clip_augment.random_erasing(clip, tf.constant([s, 1], tf.int64), prob=1.0).numpy()
    box = np.any(out != 0, axis=-1)  # [T, H, W]
    for t in range(1, 4):
      np.testing.assert_array_equal(box[t], box[0])
    assert not np.array_equal(out[0], out[1])  # Fresh noise per frame inside the same box.
    rows, cols = np.nonzero(box[0])
    area = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    assert area == box[0].sum() and 0.02 * 1024 * 0.5 <= area <= 1024 / 3 * 1.5  # one rectangle of the drawn size
    erased_any = True
  assert erased_any
  out = clip_augment.random_erasing(clip, tf.constant([0, 1], tf.int64), prob=0.0).numpy()
  assert not out.any()


def test_random_resized_crop_params_in_range_eagerly_and_in_tf_data():
  def params(seed):
    return clip_augment.random_resized_crop_params(90, 160, seed, area_range=(0.25, 1.0))

  seeds = [tf.constant([s, 3], tf.int64) for s in range(50)]
  eager = np.array([[int(v) for v in params(s)] for s in seeds])
  in_data = np.array([list(v) for v in tf.data.Dataset.from_tensor_slices(tf.stack(seeds)).map(params)
                      .as_numpy_iterator()])
  np.testing.assert_array_equal(eager, in_data)
  oy, ox, h, w = eager.T
  assert np.all(oy >= 0) and np.all(ox >= 0) and np.all(oy + h <= 90) and np.all(ox + w <= 160)
  area = h * w / (90 * 160)
  assert np.all(area > 0.2) and np.all(area < 1.05)
  assert np.all((w / h > 0.7) & (w / h < 1.4))


def test_sampling_views_are_the_reference_positions():
  dense = classification.dense_indices(40, None, clip_frames=4, frame_stride=3, view=0, num_views=3).numpy()
  np.testing.assert_array_equal(dense, [0, 3, 6, 9])
  last = classification.dense_indices(40, None, clip_frames=4, frame_stride=3, view=2, num_views=3).numpy()
  np.testing.assert_array_equal(last, [30, 33, 36, 39])
  short = classification.dense_indices(5, None, clip_frames=4, frame_stride=3, view=0, num_views=1).numpy()
  np.testing.assert_array_equal(short, [0, 3, 4, 4])  # short videos repeat their last frame
  # Segments of 32 frames in 4: view v of 2 is frame floor((k + (v + 0.5) / 2) * 8).
  for view, expected in ((0, [2, 10, 18, 26]), (1, [6, 14, 22, 30])):
    np.testing.assert_array_equal(classification.segment_indices(32, None, clip_frames=4, view=view, num_views=2),
                                  expected)
  train = classification.segment_indices(32, tf.constant([1, 2], tf.int64), clip_frames=4).numpy()
  assert np.all((train >= [0, 8, 16, 24]) & (train < [8, 16, 24, 32]))
  windows = [[int(v) for v in classification.spatial_view_window(90, 160, s, 3)] for s in range(3)]
  assert windows == [[0, 0, 90, 90], [0, 35, 90, 90], [0, 70, 90, 90]]


def tiny_config(tmp_path, **data):
  c = finetune_ssv2.get_config('tiny')
  c.data.train_files = motion_records.write_motion_shards(tmp_path / 'train', num_videos=6, size=48, frames=12)
  c.data.eval_files = motion_records.write_motion_shards(tmp_path / 'val', num_videos=3, size=48, frames=12,
                                                         prefix='val', num_shards=1)
  c.data.update(**data)
  return c


def take(it, n):
  return [next(it) for _ in range(n)]


def test_train_stream_repeated_clips_determinism_and_resume(tmp_path):
  config = tiny_config(tmp_path, repeated_aug=2, batch_size=4)
  first = take(classification.train_iterator(config), 4)
  batch = first[0]
  assert batch['video'].shape == (4, 4, 32, 32, 3) and batch['video'].dtype == np.float32
  assert set(batch) == {'video', 'label'}
  # Two clips per video, consecutive: same label, different augmentation.
  for b in first:
    np.testing.assert_array_equal(b['label'][0::2], b['label'][1::2])
    assert not np.allclose(b['video'][0], b['video'][1])
  # Deterministic and resumable: a stream started at step 2 continues the first one exactly.
  resumed = take(classification.train_iterator(config, start_step=2), 2)
  for x, y in zip(first[2:], resumed):
    np.testing.assert_array_equal(x['video'], y['video'])
  labels = np.concatenate([b['label'] for b in first[:3]])[::2]  # one epoch = 6 videos = 3 steps
  assert sorted(labels.tolist()) == [0, 1, 2, 3, 4, 5]


def test_eval_stream_gives_every_view_of_every_video_once(tmp_path):
  config = tiny_config(tmp_path, sampling='dense', frame_stride=2)
  ds, info = classification.make_eval_dataset(config, num_temporal=2, num_spatial=3)
  assert info['num_videos'] == 3 and info['num_clips'] == 18
  batches = list(classification.padded_batches(ds, info['local_batch'], info['num_batches'] + 1))
  mask = np.concatenate([b['_mask'] for b in batches])
  index = np.concatenate([b['video_index'] for b in batches])[mask]
  assert mask.sum() == 18 and not batches[-1]['_mask'].any()
  np.testing.assert_array_equal(np.bincount(index), [6, 6, 6])
  video = np.concatenate([b['video'] for b in batches])[mask]
  # Square frames: the 3 spatial views coincide; the 2 temporal views differ.
  np.testing.assert_allclose(video[0], video[2], atol=1e-6)
  assert not np.allclose(video[0], video[3])


def test_a_label_beyond_num_classes_or_unlabelled_stops_training_and_evaluation_naming_the_record(tmp_path):
  import json

  from m3video_jax.data import stream

  config = tiny_config(tmp_path, batch_size=2, repeated_aug=1)  # Train labels 0..5 (6 videos), eval 0..2.
  with config.unlocked():
    config.model.num_classes = 5
  with pytest.raises(stream.LabelError, match=r'record .*train-0000[01]-of-00002.tfrecord \(record \d\) has label 5, '
                     r'outside \[0, config.model.num_classes=5\)'):
    take(classification.train_iterator(config), 3)  # One epoch: the label-5 record comes in it.
  with config.unlocked():
    config.model.num_classes = 2
  ds, info = classification.make_eval_dataset(config, num_temporal=1, num_spatial=1)
  with pytest.raises(stream.LabelError, match=r'eval record .*val-00000-of-00001.tfrecord \(record 2\) has label 2'):
    list(classification.padded_batches(ds, info['local_batch'], info['num_batches'], info['shards'],
                                       counts=info['counts'], num_classes=2))
  # The class list data_prep writes beside the shards is checked before any record is read.
  (tmp_path / 'val' / 'label_map.json').write_text(json.dumps({'a': 0, 'b': 1, 'c': 2}))
  with pytest.raises(stream.LabelError, match=r'label_map.json \(the class list of config.data.eval_files\) has 3 '
                     r'classes, but config.model.num_classes=2'):
    classification.make_eval_dataset(config, num_temporal=1, num_spatial=1)
  # Unlabelled records (label -1, fine for pretraining) are refused by classification.
  unlabelled = tmp_path / 'unlabelled'
  unlabelled.mkdir()
  rng = np.random.default_rng(1)
  with tf.io.TFRecordWriter(str(unlabelled / 'u-00000-of-00001.tfrecord')) as w:
    for i in range(2):
      frames = motion_records.synthetic.render(motion_records.synthetic.sample_spec(rng, 0, 48, 48, 12))
      w.write(motion_records.encode_video(frames, -1, f'u{i}'))
  with config.unlocked():
    config.data.train_files = str(unlabelled / '*.tfrecord')
  with pytest.raises(stream.LabelError, match=r'u-00000-of-00001.tfrecord \(record \d\) is unlabelled'):
    take(classification.train_iterator(config), 1)
