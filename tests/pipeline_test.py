"""Input pipeline: clip sampling, alignment of frames and trajectories under crop/flip, determinism, resume, errors."""
import os

import numpy as np
import pytest
import tensorflow as tf

from m3video_jax.data import clip_device
from m3video_jax.data import clip_ops
from m3video_jax.data import pretraining
from m3video_jax.data import stream
from m3video_jax.data import schema
from configs import pretrain_ssv2

SIZE = 128  # Square test video, prep resolution.
NUM_FRAMES = 14
VELOCITY = 4.0  # px per frame in x and y: the dot sits on a grid point at every even frame.
DOT0 = 20.0


def dot_position(f):
  return DOT0 + VELOCITY * f, DOT0 + VELOCITY * f


def dot_video_record(video_id='dot', label=3, hog_bin=1, traj_len=4):
  """A record whose frames show a bright dot moving by (4, 4) px per frame, with matching stored trajectories.

  All trajectories move with the dot (a uniform field); only the trajectory that starts on the dot is marked invalid,
  so the invalid output point marks where the dot's trajectory is. Every HOG cell holds one unit in `hog_bin`.
  """
  yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
  jpegs = []
  for f in range(NUM_FRAMES):
    x, y = dot_position(f)
    img = 255 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 2.0 ** 2))
    rgb = np.repeat(img[..., None], 3, axis=-1).astype(np.uint8)
    jpegs.append(tf.io.encode_jpeg(rgb, quality=100).numpy())
  stride = 2
  s = schema.num_starts(NUM_FRAMES, traj_len, stride)
  g = SIZE // 8
  disp = np.full((s, traj_len, g, g, 2), VELOCITY, np.float32)
  valid = np.ones((s, g, g), bool)
  for i in range(s):
    x, y = dot_position(stride * i)
    valid[i, int(y) // 8, int(x) // 8] = False
  hog = np.zeros((NUM_FRAMES, g, g, 9), np.float32)
  hog[..., hog_bin] = 1.0
  meta = schema.VideoMeta(video_id=video_id, label=label, label_name=f'class{label}', source_path=f'/x/{video_id}.mp4',
                          fps=25.0)
  return schema.encode(meta, jpegs, SIZE, SIZE, disp, valid, hog, traj_start_stride=stride)


def clip_config(**data):
  c = pretrain_ssv2.get_config('tiny')
  # The device path: the host's raw parts, finished by `clip_device.assemble` (`run_clip`), as on a GPU or TPU.
  c.data.update(num_frames=4, frame_stride=2, res=SIZE, clip_ops='device', **data)
  c.target.traj_len = 4
  return c


def run_clip(config, record, index, train=True):
  """One clip of `record` as the model sees it: with `data.clip_ops='device'` (`clip_config`) the host's raw parts
  assembled by `clip_device.assemble`, as the jitted step does."""
  spec = pretraining.ClipSpec.from_config(config)
  fn = pretraining.make_clip_fn(config, spec, train=train)
  out = {k: v.numpy() for k, v in fn(tf.constant(0, tf.int64), tf.constant(index, tf.int64),
                                     tf.constant(record)).items()}
  if spec.on_device:
    out = {k: np.asarray(v)[0] for k, v in clip_device.assemble({k: v[None] for k, v in out.items()}, spec).items()}
  return out


def centroid(frame):
  """Intensity-weighted centre (x, y) of the dot in one frame."""
  img = frame.astype(np.float32).mean(-1)
  img = np.clip(img - np.percentile(img, 50), 0, None)
  img = np.where(img > 0.3 * img.max(), img, 0)
  yy, xx = np.mgrid[0:img.shape[0], 0:img.shape[1]]
  return float((img * xx).sum() / img.sum()), float((img * yy).sum() / img.sum())


def grid_points(g, step=8):
  return np.arange(g) * step + step / 2


@pytest.fixture(scope='module')
def record():
  return dot_video_record()


def test_flip_keeps_dot_on_its_trajectory(record):
  config = clip_config(crop_scales=(1.0,), flip=True)
  flipped = []
  for index in range(12):
    out = run_clip(config, record, index)
    x0, y0 = centroid(out['video'][0])
    start_frame = None
    for f in range(0, NUM_FRAMES, 2):
      if abs(dot_position(f)[1] - y0) < 1:
        start_frame = f
    mirrored = abs((SIZE - 1 - dot_position(start_frame)[0]) - x0) < 1
    flipped.append(mirrored)
    # The invalid output points (the trajectory that starts on the dot) sit on the dot. A mirrored grid point lands
    # 1 px from an output grid point (pixel x -> size - 1 - x), hence up to ~1 px plus JPEG centroid noise.
    inv_y, inv_x = np.nonzero(~out['traj_valid'][0])
    pts = np.stack([grid_points(SIZE // 8)[inv_x], grid_points(SIZE // 8)[inv_y]], -1)
    dist = np.hypot(pts[:, 0] - x0, pts[:, 1] - y0)
    assert dist.min() <= 1.25, (index, pts, (x0, y0))
    assert dist.max() <= 8.0
    # Displacements follow the dot: two raw steps separate consecutive clip frames (stride 2).
    x1, y1 = centroid(out['video'][1])
    moved = out['traj_disp'][0, 0, 0, 0] + out['traj_disp'][0, 0, 0, 1]
    np.testing.assert_allclose(moved, [x1 - x0, y1 - y0], atol=0.5)
    expected_bin = schema.HOG_FLIP_PERMUTATION[1] if mirrored else 1
    assert np.argmax(out['traj_hog'][0, 5, 5, 0]) == expected_bin
  assert any(flipped) and not all(flipped), 'flip=True should flip about half of the clips'


def test_crop_scales_displacements_and_keeps_dot_on_trajectory(record):
  config = clip_config(crop_scales=(0.75,))
  res = 64
  config.data.res = res
  checked = 0
  for index in range(16):
    out = run_clip(config, record, index)
    video = out['video']
    if video[0].mean(-1).max() < 64 or video[1].mean(-1).max() < 64:
      continue  # The dot left the crop in this clip.
    x0, y0 = centroid(video[0])
    x1, y1 = centroid(video[1])
    if min(x0, y0, x1, y1) < 3 or max(x0, y0, x1, y1) > res - 4:
      continue
    disp = out['traj_disp'][0]
    # 96-px crop resized to 64: the (4, 4) px/frame motion becomes (8/3, 8/3) per raw step.
    np.testing.assert_allclose(disp[..., 0, :], 4.0 * res / 96, atol=1e-4)
    np.testing.assert_allclose(disp[0, 0, 0] + disp[0, 0, 1], [x1 - x0, y1 - y0], atol=0.5)
    inv_y, inv_x = np.nonzero(~out['traj_valid'][0])
    pts = np.stack([grid_points(res // 8)[inv_x], grid_points(res // 8)[inv_y]], -1)
    assert np.hypot(pts[:, 0] - x0, pts[:, 1] - y0).min() <= 8 * 96 / 64 / 2 + 1
    checked += 1
  assert checked >= 3


def test_clip_shapes_and_eval_clip_is_deterministic(record):
  config = clip_config()
  out = run_clip(config, record, 0, train=False)
  g = SIZE // 8
  assert out['video'].shape == (4, SIZE, SIZE, 3) and out['video'].dtype == np.uint8
  assert out['traj_disp'].shape == (2, g, g, 4, 2)
  assert out['traj_valid'].shape == (2, g, g) and out['traj_valid'].dtype == bool
  assert out['traj_hog'].shape == (2, g, g, 4, 9)
  assert out['label'] == 3
  again = run_clip(config, record, 7, train=False)
  np.testing.assert_array_equal(out['video'], again['video'])


def test_tubelets_without_stored_trajectories_are_invalid():
  """A clip longer than the video: tubelets past the last stored start get no valid trajectory."""
  config = clip_config()
  config.data.num_frames = 16  # Needs 31 frames at stride 2; the video has 14.
  out = run_clip(config, dot_video_record(), 0)
  assert out['traj_valid'].shape[0] == 8
  assert not out['traj_valid'][-1].any()
  assert out['traj_valid'][0].sum() > 0


def test_shorter_traj_len_uses_its_own_validity():
  """A point that leaves the frame after 2 of its 4 stored steps is valid for L = 2 and invalid for L = 4."""
  meta = schema.VideoMeta(video_id='v', label=0, label_name='', source_path='/v.mp4', fps=25.0)
  jpegs = [tf.io.encode_jpeg(np.zeros((64, 64, 3), np.uint8)).numpy()] * 12
  s, g = schema.num_starts(12, 4, 2), 8
  inside = np.full((s, g, g), 4, np.uint8)
  inside[:, 3, 3] = 2
  record = schema.encode(meta, jpegs, 64, 64, np.zeros((s, 4, g, g, 2), np.float32), inside >= 4,
                         np.zeros((12, g, g, 9), np.float32), traj_start_stride=2, traj_inside_steps=inside)
  assert schema.decode(record)['traj_inside_steps'][0, 3, 3] == 2
  for traj_len, expect in ((2, True), (4, False)):
    config = clip_config(crop_scales=(1.0,))
    config.data.res = 64
    config.target.traj_len = traj_len
    out = run_clip(config, record, 0)
    assert out['traj_valid'][0, 3, 3] == expect
    assert out['traj_valid'].sum() == out['traj_valid'].size - (0 if expect else 2)


def write_shards(directory, num_shards=2, per_shard=3, corrupt=None, traj_len=4, prefix='train', first_label=0):
  paths = []
  for s in range(num_shards):
    path = os.path.join(directory, f'{prefix}-{s:05d}-of-{num_shards:05d}.tfrecord')
    with tf.io.TFRecordWriter(path) as w:
      for i in range(per_shard):
        rec = dot_video_record(video_id=f'v{s}_{i}', label=first_label + s * per_shard + i, traj_len=traj_len)
        if corrupt == (s, i):
          rec = rec[:len(rec) // 3]
        w.write(rec)
    paths.append(path)
  return paths


def take(it, n):
  return [next(it) for _ in range(n)]


def test_stream_is_deterministic_and_resumes_exactly(tmp_path):
  write_shards(str(tmp_path))
  config = clip_config(train_files=str(tmp_path / '*.tfrecord'), batch_size=2, shuffle_buffer=4)
  config.data.res = 32
  a = take(pretraining.train_iterator(config), 5)
  b = take(pretraining.train_iterator(config), 5)
  for x, y in zip(a, b):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  # Crosses an epoch (6 records, batch 2): step 3 starts the second epoch.
  resumed = take(pretraining.train_iterator(config, start_step=2), 3)
  for x, y in zip(a[2:], resumed):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  assert a[0]['frames'].shape == (2, 4, 32, 32, 3)  # The decoded crops (data.clip_ops='device').
  assert sorted(np.concatenate([x['label'] for x in a[:3]]).tolist()) == list(range(6))
  with config.unlocked():
    config.seed = 1
  c = take(pretraining.train_iterator(config), 3)
  assert any(not np.array_equal(x['frames'], y['frames']) for x, y in zip(a, c))


def test_clips_per_record_draws_several_clips_of_each_record_and_resumes_exactly(tmp_path):
  write_shards(str(tmp_path))
  config = clip_config(train_files=str(tmp_path / '*.tfrecord'), batch_size=4, shuffle_buffer=4, clips_per_record=2)
  config.data.res = 32
  a = take(pretraining.train_iterator(config), 4)
  # Each batch: 2 records x 2 consecutive clips; an epoch (6 records) takes 3 steps and sees every record once.
  labels = np.stack([x['label'] for x in a])
  np.testing.assert_array_equal(labels[:, 0::2], labels[:, 1::2])
  assert sorted(labels[:3, 0::2].ravel().tolist()) == list(range(6))
  # The two clips of a record are drawn independently (start and crop): with the dot moving 4 px per frame, their
  # frames differ for most records.
  assert sum(not np.array_equal(x['frames'][i], x['frames'][i + 1]) for x in a for i in (0, 2)) >= 4
  resumed = take(pretraining.train_iterator(config, start_step=2), 2)
  for x, y in zip(a[2:], resumed):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  with config.unlocked():
    config.data.clips_per_record = 1
    config.data.batch_size = 2
  single = take(pretraining.train_iterator(config), 1)[0]
  assert single['frames'].shape == (2, 4, 32, 32, 3)


def test_processes_read_disjoint_shards(tmp_path):
  write_shards(str(tmp_path), num_shards=4, per_shard=2)
  config = clip_config(train_files=str(tmp_path / '*.tfrecord'), batch_size=4)
  config.data.res = 32
  labels = []
  for p in range(2):
    it = pretraining.train_iterator(config, process_index=p, process_count=2)
    labels.append(set(np.concatenate([x['label'] for x in take(it, 2)]).tolist()))
  assert not labels[0] & labels[1]
  assert labels[0] | labels[1] == set(range(8))


def test_each_process_draws_its_own_shuffle_and_augmentation_and_resumes_exactly(tmp_path):
  """Two processes reading identical records (shard 0 and 1 are copies) get different record orders and clip draws;
  each process's stream still resumes exactly, and process 0's stream is the one-process stream."""
  paths = write_shards(str(tmp_path), num_shards=1, per_shard=6)
  copy = str(tmp_path / 'train-00001-of-00002.tfrecord')
  tf.io.gfile.copy(paths[0], copy)
  tf.io.gfile.rename(paths[0], str(tmp_path / 'train-00000-of-00002.tfrecord'))
  config = clip_config(train_files=str(tmp_path / '*.tfrecord'), batch_size=4, shuffle_buffer=6)
  config.data.res = 32
  first = [take(pretraining.train_iterator(config, process_index=p, process_count=2), 4) for p in range(2)]
  # Same six records on both sides, but not the same sequence of clips.
  assert sorted(np.concatenate([b['label'] for b in first[0][:3]]).tolist()) == \
      sorted(np.concatenate([b['label'] for b in first[1][:3]]).tolist())
  assert not any(np.array_equal(x['frames'], y['frames']) for x, y in zip(first[0], first[1]))
  for p in range(2):
    resumed = take(pretraining.train_iterator(config, process_index=p, process_count=2, start_step=1), 3)
    for x, y in zip(first[p][1:], resumed):
      for k in x:
        np.testing.assert_array_equal(x[k], y[k])
  assert stream.process_seed(config.seed, 0) == config.seed  # One process: the stream of earlier versions.


def test_a_stream_started_inside_an_epoch_is_the_full_stream_from_there(tmp_path):
  """`record_stream` skips whole windows of shards by their record counts: started at any offset, it yields what the
  stream from the epoch's start yields from that offset on, across window and epoch boundaries."""
  shards, counts = [], []
  for s in range(37):  # 3 windows of 16 shards (the last one short), uneven shard sizes.
    path = str(tmp_path / f'r-{s:05d}.tfrecord')
    with tf.io.TFRecordWriter(path) as w:
      for i in range(1 + s % 4):
        w.write(f'{s}/{i}'.encode())
    shards.append(path)
    counts.append(1 + s % 4)
  epoch = sum(counts)
  full = [(int(e), r.numpy()) for e, r in stream.record_stream(shards, 5, 0, 8, 16).take(2 * epoch + 10)]
  assert sorted(r for e, r in full[:epoch]) == sorted(f'{s}/{i}'.encode() for s in range(37)
                                                      for i in range(counts[s]))
  assert [r for _, r in full[:epoch]] != [r for _, r in full[epoch:2 * epoch]]  # Each epoch its own order.
  for offset in (1, 15, 16, 40, 41, epoch - 1):
    got = [(int(e), r.numpy()) for e, r in stream.record_stream(shards, 5, 0, 8, 16, counts=counts,
                                                                 offset=offset).take(epoch)]
    assert got == full[offset:offset + epoch], offset
  got = [(int(e), r.numpy()) for e, r in stream.record_stream(shards, 5, 1, 8, 16, counts=counts,
                                                               offset=7).take(3)]
  assert got == full[epoch + 7:epoch + 10]


def test_corrupt_record_error_names_the_shard(tmp_path):
  paths = write_shards(str(tmp_path), corrupt=(1, 2))
  config = clip_config(train_files=str(tmp_path / '*.tfrecord'), batch_size=2)
  config.data.res = 32
  with pytest.raises(stream.CorruptRecordError, match=os.path.basename(paths[1]) + r' \(record 2\)'):
    take(pretraining.train_iterator(config), 3)


def test_skip_corrupt_counts_skipped_records(tmp_path):
  write_shards(str(tmp_path), corrupt=(0, 1))
  config = clip_config(train_files=str(tmp_path / '*.tfrecord'), batch_size=2, skip_corrupt=True)
  config.data.res = 32
  it = pretraining.train_iterator(config)
  batches = take(it, 5)  # 5 good records per epoch, 10 records in 5 batches: two skips.
  assert it.num_skipped == 2
  assert all(1 not in x['label'] for x in batches)


def damage(path, how):
  data = open(path, 'rb').read()
  if how == 'crc':  # 16 bytes flipped in the middle of the file: record 1 of 3 fails its CRC.
    mid = len(data) // 2
    data = data[:mid] + bytes(b ^ 0xFF for b in data[mid:mid + 16]) + data[mid + 16:]
  else:  # Cut in half (a partial copy).
    data = data[:len(data) // 2]
  with open(path, 'wb') as f:
    f.write(data)


def write_manifest(directory, paths, per_shard=3, **config):
  import json
  with open(os.path.join(directory, 'manifest.json'), 'w') as f:
    json.dump({'config': config, 'schema_version': schema.SCHEMA_VERSION,
               'shards': [{'file': os.path.basename(p), 'records': per_shard, 'bytes': os.path.getsize(p)}
                          for p in paths]}, f)


@pytest.mark.parametrize('manifest', [True, False])
@pytest.mark.parametrize('how', ['crc', 'truncate', 'not_a_tfrecord'])
def test_damaged_shards_are_named_or_skipped(tmp_path, how, manifest):
  """A CRC-corrupt or truncated shard, or a non-TFRecord file matched by the glob, used to stop training with a raw
  `DataLossError: corrupted record at 12` naming no file."""
  paths = write_shards(str(tmp_path))
  if manifest:
    write_manifest(str(tmp_path), paths)
  if how == 'not_a_tfrecord':
    bad = str(tmp_path / 'notes.tfrecord')
    with open(bad, 'w') as f:
      f.write('{"shards": []}\n')
  else:
    bad = paths[1]
    damage(bad, how)
  config = clip_config(train_files=str(tmp_path / '*.tfrecord'), batch_size=2)
  config.data.res = 32
  # Found at start from the size, the header or by counting (no manifest); a CRC error under a manifest when read.
  expected = os.path.basename(bad) + (r' .*\(record 1\): corrupted record' if how == 'crc' else
                                      r' has \d+ bytes, but the manifest' if manifest and how == 'truncate' else
                                      r' has an unreadable record \(record 1\): truncated record' if how == 'truncate'
                                      else ' does not start with a TFRecord header')
  with pytest.raises(stream.CorruptRecordError, match=expected) as info:
    take(pretraining.train_iterator(config), 6)
  assert 'function_node' not in str(info.value) and '[Op:' not in str(info.value)
  with config.unlocked():
    config.data.skip_corrupt = True
  it = pretraining.train_iterator(config)
  labels = np.concatenate([x['label'] for x in take(it, 6)])
  if how == 'crc' and manifest:  # Read past record 0 of the shard: the rest of that shard is skipped and counted.
    assert it.num_skipped > 0 and not {4, 5} & set(labels.tolist())
  elif how == 'not_a_tfrecord':
    assert it.info['shards'] == paths and sorted(set(labels.tolist())) == list(range(6))
  else:  # The damaged shard is dropped before the stream starts: only shard 0's records.
    assert it.info['shards'] == paths[:1] and set(labels.tolist()) == {0, 1, 2} and it.num_skipped == 0


def test_missing_files_and_short_trajectories_give_clear_errors(tmp_path):
  config = clip_config(train_files=str(tmp_path / 'nothing-*.tfrecord'))
  with pytest.raises(FileNotFoundError, match='matches no file'):
    pretraining.train_iterator(config)
  write_shards(str(tmp_path), num_shards=1)
  config = clip_config(train_files=str(tmp_path / '*.tfrecord'))
  config.target.traj_len = 6
  with pytest.raises(ValueError, match='L=4 steps'):
    pretraining.train_iterator(config)


@pytest.mark.parametrize('manifest', [True, False])
def test_shards_of_another_prep_config_are_named_up_front_not_called_corrupt(tmp_path, manifest):
  """Shards of two prep runs in one glob (traj_len 6 and 4) with target.traj_len=6: the L=4 shards used to pass the
  check of the first shard (an L=6 one), then failed to decode as "corrupt" records, which data.skip_corrupt silently
  dropped."""
  os.makedirs(tmp_path / 'a_l6')  # Sorted first: its first shard was the only one checked.
  os.makedirs(tmp_path / 'l4')
  long_paths = write_shards(str(tmp_path / 'a_l6'), prefix='a', traj_len=6)
  short_paths = write_shards(str(tmp_path / 'l4'), prefix='b', first_label=6)
  if manifest:  # Settings from the manifests; else from every shard's first record.
    for directory, paths, traj_len in (('a_l6', long_paths, 6), ('l4', short_paths, 4)):
      write_manifest(str(tmp_path / directory), paths, traj_len=traj_len, traj_start_stride=2, segment_frames=0)
  config = clip_config(train_files=f'{tmp_path}/a_l6/*.tfrecord,{tmp_path}/l4/*.tfrecord', batch_size=2)
  config.data.res = 32
  config.target.traj_len = 6
  for skip_corrupt in (False, True):
    with config.unlocked():
      config.data.skip_corrupt = skip_corrupt
    with pytest.raises(stream.DataError) as info:
      take(pretraining.train_iterator(config), 6)
    message = str(info.value)
    assert not isinstance(info.value, stream.CorruptRecordError), message
    assert message.startswith('2 of the 4 shards of config.data.train_files were prepared with data_prep settings')
    assert all(p in message for p in short_paths) and not any(p in message for p in long_paths), message
    assert 'L=4 steps, but the target reads 6 (config.target.traj_len' in message and 'not damaged' in message
    assert ('l4/manifest.json' in message) == manifest, message
  # Every shard serves L=4 (the first 4 steps of the L=6 trajectories): both prep runs are read, nothing skipped.
  config.target.traj_len = 4
  it = pretraining.train_iterator(config)
  labels = np.concatenate([x['label'] for x in take(it, 6)])
  assert it.num_skipped == 0 and set(labels.tolist()) == set(range(12))


@pytest.mark.parametrize('size', [(169, 192), (256, 256), (224, 300)])
def test_opencv_resize_samples_like_tensorflow_bilinear(size):
  # The clip resize runs in OpenCV (8-bit fixed point); it must sample where TF's half-pixel bilinear resize does.
  # Measured: at most 1 level apart, 0.13 on average; sampling with aligned corners instead is 14-29 levels off.
  rng = np.random.default_rng(0)
  textured = tf.image.resize(rng.uniform(0, 255, (2, size[0] // 2, size[1] // 2, 3)), size, method='bicubic')
  frames = tf.saturate_cast(tf.round(textured), tf.uint8).numpy()
  want = tf.saturate_cast(tf.round(tf.image.resize(frames, [224, 224], method='bilinear')), tf.uint8).numpy()
  got = clip_ops._resize_uint8(frames, 224)  # pylint: disable=protected-access
  diff = np.abs(got.astype(int) - want.astype(int))
  assert diff.max() <= 1 and diff.mean() < 0.2, (diff.max(), diff.mean())
