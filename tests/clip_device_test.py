"""The clip finished on the device (`data.clip_ops='device'`: host decodes, `clip_device.assemble` in the jitted step)
equals the clip finished on the host (`data.clip_ops='host'`), on real data prep output, for the same records and
seeds."""
import jax
import numpy as np
import pytest
import tensorflow as tf

from configs import pretrain_ssv2
from data_prep import synthetic
from data_prep import video_targets
from data_prep.options import PrepConfig
from m3video_jax import tasks
from m3video_jax.data import clip_device
from m3video_jax.data import pretraining
from m3video_jax.data import schema
from m3video_jax.data import stream


@pytest.fixture(scope='module')
def record():
  """A 16:9 synthetic video of a moving textured object, through the real tracking and HOG of data prep."""
  spec = synthetic.sample_spec(np.random.default_rng(5), 2, 128, 72, 28)
  prep = PrepConfig(short_side=0, traj_len=4)
  targets = video_targets.extract_from_frames(iter(synthetic.render(spec)), prep, fps=25.0)
  meta = schema.VideoMeta(video_id='v', label=2, label_name='x', source_path='/v.mp4', fps=25.0)
  return video_targets.to_record(targets, meta, prep)


def clip_config(clip_ops, **data):
  c = pretrain_ssv2.get_config('tiny')
  c.data.update({**dict(num_frames=8, frame_stride=2, res=48, flip=True, clip_ops=clip_ops, prep_short_side=72), **data})
  c.target.traj_len = 4
  return c


def host_and_device_clips(record, index, train=True, **data):
  """(host-finished clip, device-finished clip) of `record` at stream position `index`."""
  out = []
  for mode in ('host', 'device'):
    config = clip_config(mode, **data)
    spec = pretraining.ClipSpec.from_config(config)
    clip = pretraining.make_clip_fn(config, spec, train=train)(tf.constant(0, tf.int64), tf.constant(index, tf.int64),
                                                               tf.constant(record))
    clip = {k: v.numpy()[None] for k, v in clip.items()}
    if mode == 'device':
      assert clip_device.is_raw(clip)
      clip = jax.jit(lambda b, spec=spec: clip_device.assemble(b, spec))(clip)
    out.append({k: np.asarray(v)[0] for k, v in clip.items()})
  return out


def test_device_clips_equal_host_clips(record):
  crops, flips = set(), set()
  for index in range(12):
    a, b = host_and_device_clips(record, index)
    assert set(a) == set(b)
    # Frames: within one 8-bit level (the resize moved from OpenCV's fixed point to float on the device).
    assert a['video'].shape == b['video'].shape and b['video'].dtype == np.uint8
    assert np.abs(a['video'].astype(int) - b['video'].astype(int)).max() <= 1
    np.testing.assert_array_equal(a['traj_valid'], b['traj_valid'])
    assert a['traj_valid'].any()
    for key in ('traj_disp', 'traj_hog'):
      scale = np.abs(a[key]).max()
      assert scale > 0
      np.testing.assert_allclose(b[key], a[key], rtol=0, atol=1e-4 * scale, err_msg=f'{key}, clip {index}')
    np.testing.assert_allclose(b['traj_quantum'], a['traj_quantum'], rtol=1e-6)
    assert a['label'] == b['label'] and a['_id'] == b['_id']
    raw = pretraining.make_clip_fn(clip_config('device'), pretraining.ClipSpec.from_config(clip_config('device')))(
        tf.constant(0, tf.int64), tf.constant(index, tf.int64), tf.constant(record))
    crops.add(tuple(raw['crop'].numpy()[2:]))
    flips.add(bool(raw['flip']))
  # The clips covered flips both ways and several crop sizes (72 px short side, res 48: mostly resized down).
  assert flips == {True, False} and len(crops) >= 3


def test_device_eval_clips_and_other_sizes_equal_host_clips(record):
  a, b = host_and_device_clips(record, 0, train=False)
  assert np.abs(a['video'].astype(int) - b['video'].astype(int)).max() <= 1
  np.testing.assert_allclose(b['traj_hog'], a['traj_hog'], atol=1e-4 * np.abs(a['traj_hog']).max())
  for index in range(4):  # Crops smaller than res: the device upsamples.
    a, b = host_and_device_clips(record, index, res=64)
    assert np.abs(a['video'].astype(int) - b['video'].astype(int)).max() <= 1
    np.testing.assert_allclose(b['traj_disp'], a['traj_disp'], atol=1e-4 * np.abs(a['traj_disp']).max())
    np.testing.assert_array_equal(a['traj_valid'], b['traj_valid'])


def test_the_jitted_loss_is_the_same_on_raw_and_finished_batches(record):
  """The train step's loss (targets, mask, model) from the host's raw parts equals the loss from host-finished clips."""
  clips = [host_and_device_clips(record, i) for i in range(2)]
  finished = {k: np.stack([c[0][k] for c in clips]) for k in clips[0][0]}
  config = clip_config('device')
  spec = pretraining.ClipSpec.from_config(config)
  fn = pretraining.make_clip_fn(config, spec)
  raw = [fn(tf.constant(0, tf.int64), tf.constant(i, tf.int64), tf.constant(record)) for i in range(2)]
  raw = {k: np.stack([r[k].numpy() for r in raw]) for k in raw[0]}
  task = tasks.get_task(config)
  params = task.init_params(jax.random.key(0))
  loss = jax.jit(lambda p, b: task.loss_fn(p, b, jax.random.key(1))[0])
  np.testing.assert_allclose(float(loss(params, raw)), float(loss(params, finished)), rtol=1e-4)


def test_windows_and_bytes_follow_the_layout():
  """The host sends fixed windows: shapes from `ClipLayout`, and the bytes per clip of the paper's setting."""
  config = pretrain_ssv2.get_config()
  assert not clip_device.ClipLayout.from_config(config).on_device  # 'auto' on the CPU backend: tf.data finishes.
  config.data.clip_ops = 'device'
  layout = clip_device.ClipLayout.from_config(config)
  assert layout.on_device and layout.with_hog
  # 16 frames at stride 2, tubelets of 2, L = 6: tubelet starts 4 frames apart, so 7 * 4 + 6 = 34 maps cover them all.
  assert layout.hog_contiguous and layout.hog_frames == 34
  np.testing.assert_array_equal(layout.hog_frame_index()[1], [4, 5, 6, 7, 8, 9])
  raw = tasks.example_batch(config, 1)
  assert raw['frames'].shape == (1, 16, 224, 224, 3) and raw['traj_raw'].dtype == np.int8
  assert raw['hog_raw'].shape == (1, 34, layout.hog_window, layout.hog_window, schema.HOG_BINS)
  assert sum(v.nbytes for v in raw.values()) <= 3 * 2**20
  # Frame stride 4: tubelets 8 frames apart do not overlap, so the maps go per tubelet.
  config.data.frame_stride = 4
  layout = clip_device.ClipLayout.from_config(config)
  assert not layout.hog_contiguous and layout.hog_frames == 48
  np.testing.assert_array_equal(layout.hog_frame_index()[1], [6, 7, 8, 9, 10, 11])


def test_records_wider_than_the_windows_are_refused_up_front(record, tmp_path):
  """Frames whose short side exceeds `data.prep_short_side` (the windows would not cover a crop): a clear error naming
  the shard and the setting before training, not a corrupt-record gap later."""
  shard = str(tmp_path / 'train-00000-of-00001.tfrecord')
  with tf.io.TFRecordWriter(shard) as w:
    w.write(record)
  config = clip_config('device', prep_short_side=64, train_files=shard, batch_size=1)
  with pytest.raises(stream.DataError, match=r'short side of 72 px.*prep_short_side=64.*--config.data.prep_short_side=72'):
    pretraining.train_iterator(config)
  next(pretraining.train_iterator(clip_config('device', train_files=shard, batch_size=1)))  # 72: served.
