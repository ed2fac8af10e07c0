"""The paper's other targets (Tables 1, 2, 4, 16): the flow-derived maps of data prep (`--motion_maps`), their storage
and lookup in the clip, and the `flow`/`hof`/`mbh`/combined targets, `interpolate` and `density` inside the jitted
step."""
import cv2
import jax
import numpy as np
import pytest
import tensorflow as tf

from configs import pretrain_ssv2
from data_prep import hog as prep_hog
from data_prep import video_targets
from data_prep.options import PrepConfig
from m3video_jax import config_lib
from m3video_jax import targets
from m3video_jax import tasks
from m3video_jax.data import clip_device
from m3video_jax.data import pretraining
from m3video_jax.data import schema

MAP_FUNCTIONS = {'hof': prep_hog.hof_cell_map, 'mbh': prep_hog.mbh_cell_map, 'flow': prep_hog.flow_cell_map}


def _smooth_flow(rng, h=64, w=96):
  """A smooth random flow field, px."""
  f = cv2.GaussianBlur(rng.normal(size=(h, w, 2)).astype(np.float32) * 20, (0, 0), 6)
  return f * (3.0 / np.abs(f).max())


def test_a_uniform_translation_puts_all_hof_mass_in_one_bin_and_none_in_mbh():
  for (dx, dy), b in (((2.5, 0.0), 0), ((0.0, 2.5), 2), ((-2.5, 0.0), 4), ((-1.5, -1.5), 5)):
    flow = np.zeros((32, 48, 2), np.float32)
    flow[..., 0], flow[..., 1] = dx, dy
    hof = prep_hog.hof_cell_map(flow)
    magnitude = np.hypot(dx, dy)
    # All the mass in bin b, up to OpenCV's angle precision (cartToPolar: about 0.3 degrees).
    np.testing.assert_allclose(hof[..., b], magnitude, rtol=1e-3)
    assert np.abs(np.delete(hof, b, axis=-1)).max() < 1e-3 * magnitude
    assert np.abs(prep_hog.mbh_cell_map(flow)).max() == 0.0
    np.testing.assert_allclose(prep_hog.flow_cell_map(flow), np.broadcast_to([dx, dy], (4, 6, 2)), rtol=1e-6)
  # Below HOF_MIN_FLOW every pixel counts in the zero-motion bin.
  still = np.full((32, 48, 2), 0.1, np.float32)
  np.testing.assert_allclose(prep_hog.hof_cell_map(still)[..., 8], 1.0)
  assert prep_hog.hof_cell_map(still)[..., :8].max() == 0.0


def test_a_flow_edge_puts_mbh_mass_at_the_edge_only():
  flow = np.zeros((32, 64, 2), np.float32)
  flow[:, 32:, 0] = 3.0  # The right half moves right: a vertical motion boundary at x = 32.
  mbh = prep_hog.mbh_cell_map(flow)
  per_column = mbh.sum(axis=(0, 2))
  assert set(np.nonzero(per_column)[0]) == {3, 4}  # The cells on either side of the boundary.
  assert mbh[..., 9:].max() == 0.0  # dy is uniform: no MBHy.
  # The dx image's gradient points along +x: HOG bin 0 (orientation 0 degrees) of MBHx.
  assert mbh[:, 3:5, 0].min() > 0 and np.delete(mbh[:, 3:5, :9], 0, axis=-1).max() < 1e-6


@pytest.mark.parametrize('name', ['hof', 'mbh', 'flow'])
def test_each_map_is_flip_equivariant(name):
  """The map of the mirrored flow (x mirrored, dx negated) is the mirrored map with schema's flip applied."""
  flow = _smooth_flow(np.random.default_rng(0))
  mirrored = flow[:, ::-1].copy()
  mirrored[..., 0] *= -1
  got = MAP_FUNCTIONS[name](mirrored)
  want = MAP_FUNCTIONS[name](flow)[:, ::-1]
  if name == 'flow':
    want = want * np.asarray(schema.FLOW_FLIP_SIGN, np.float32)
  else:
    want = want[..., list(schema.MOTION_MAP_FLIPS[name])]
  np.testing.assert_allclose(got, want, atol=1e-5 * np.abs(want).max())


def _moving_square_video(n=10, h=64, w=96, speed=2.0):
  """A textured square moving `speed` px/frame right over a static textured background."""
  rng = np.random.default_rng(3)
  background = cv2.GaussianBlur(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), (5, 5), 1.5)
  square = cv2.GaussianBlur(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8), (5, 5), 1.5)
  frames = []
  for i in range(n):
    f = background.copy()
    x = int(round(16 + speed * i))
    f[16:48, x:x + 32] = square
    frames.append(f)
  return frames


@pytest.fixture(scope='module')
def square_targets():
  prep = PrepConfig(short_side=0, traj_len=4, flow='dis_medium', camera_motion='none',
                    motion_maps=('hof', 'mbh', 'flow'))
  return prep, video_targets.extract_from_frames(iter(_moving_square_video()), prep, fps=25.0)


def test_stored_maps_decode_within_their_quantum_and_flow_follows_the_known_motion(square_targets):
  prep, vt = square_targets
  meta = schema.VideoMeta(video_id='sq', label=0, label_name='x', source_path='/sq.mp4', fps=25.0)
  rec = schema.decode(video_targets.to_record(vt, meta, prep))
  assert rec['schema_version'] == schema.SCHEMA_VERSION and rec['motion_maps'] == ('hof', 'mbh', 'flow')
  n, gh, gw = vt.num_frames, 8, 12
  for name, c in schema.MOTION_MAP_CHANNELS.items():
    assert rec[f'{name}_map'].shape == vt.motion_maps[name].shape == (n - 1, gh, gw, c)
  # Flow: int8 quarter pixels, so within half a quantum of the computed cell means.
  assert np.abs(rec['flow_map'] - vt.motion_maps['flow']).max() <= 0.5 / schema.DISP_UNITS_PER_PX + 1e-6
  # HOF/MBH: square-root companding, as the HOG map (at most one code of 255 at the frame's maximum).
  for name in ('hof', 'mbh'):
    scale = vt.motion_maps[name].max(axis=(1, 2, 3), keepdims=True)
    assert np.abs(rec[f'{name}_map'] - vt.motion_maps[name]).max() <= 2 / 255 * scale.max()
  # The square's inner cells (away from its edges) move at the known 2 px/frame to the right.
  inner = vt.motion_maps['flow'][2:, 3:5, 4:6]
  np.testing.assert_allclose(np.median(inner[..., 0]), 2.0, atol=0.25)
  assert np.abs(np.median(inner[..., 1])) < 0.25
  # Its HOF mass is in bin 0 (rightwards), the static background's in the zero bin.
  assert rec['hof_map'][2:, 3:5, 4:6].mean(axis=(0, 1, 2)).argmax() == 0
  assert rec['hof_map'][2:, 0, :].mean(axis=(0, 1)).argmax() == 8
  # Without --motion_maps nothing is stored and the record is byte-for-byte what it was.
  plain = PrepConfig(short_side=0, traj_len=4)
  vt_plain = video_targets.VideoTargets(**{**vt.__dict__, 'motion_maps': {}})
  assert 'motion_maps' not in plain.to_json()
  assert schema.decode(video_targets.to_record(vt_plain, meta, plain))['motion_maps'] == ()


def test_version_3_records_still_read():
  """A record written before the motion maps (schema_version 3) decodes and serves the trajectory target."""
  from tensorflow.core.example import example_pb2

  prep = PrepConfig(short_side=0, traj_len=4)
  vt = video_targets.extract_from_frames(iter(_moving_square_video()), prep)
  raw = video_targets.to_record(vt, schema.VideoMeta('v3', 1, 'x', '/v3.mp4', 25.0), prep)
  ex = example_pb2.Example.FromString(raw)
  ex.features.feature[schema.VERSION].int64_list.value[0] = 3
  old = schema.decode(ex.SerializeToString())
  assert old['schema_version'] == 3 and old['motion_maps'] == () and 'hof_map' not in old
  config = _clip_config('trajectory', res=48)
  spec = pretraining.ClipSpec.from_config(config)
  clip = pretraining.make_clip_fn(config, spec)(tf.constant(0, tf.int64), tf.constant(0, tf.int64),
                                                tf.constant(ex.SerializeToString()))
  assert clip['traj_disp'].shape[-2:] == (2, 2)  # traj_len=2 of the 4 stored steps.


def _clip_config(target='hof', clip_ops='host', interpolate='paper', **data):
  c = pretrain_ssv2.get_config(f'tiny,target={target},interpolate={interpolate},traj_len=2')
  c.data.update({**dict(num_frames=8, frame_stride=2, res=48, flip=False, clip_ops=clip_ops, prep_short_side=48,
                        crop_scales=(1.0,), train_files='unused-*.tfrecord'), **data})
  return c


@pytest.fixture(scope='module')
def indexed_record():
  """A 48 x 64, 30-frame record whose frame n is gray level 8n and whose maps of pair n are the constant n + 1 (HOF,
  MBH, HOG) and (n / 4, -n / 4) px (flow): what a clip reads says which frames it read."""
  n, h, w = 30, 48, 64
  gh, gw = h // 8, w // 8
  jpegs = [cv2.imencode('.jpg', np.full((h, w, 3), 8 * i, np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 100])[1].tobytes()
           for i in range(n)]
  pairs = np.arange(n - 1, dtype=np.float32)[:, None, None, None]
  maps = {'hof': np.broadcast_to(pairs + 1, (n - 1, gh, gw, 9)),
          'mbh': np.broadcast_to(pairs + 1, (n - 1, gh, gw, 18)),
          'flow': np.concatenate([np.broadcast_to(pairs / 4, (n - 1, gh, gw, 1)),
                                  np.broadcast_to(-pairs / 4, (n - 1, gh, gw, 1))], -1)}
  starts = schema.num_starts(n, 8, 2)
  hog_map = np.broadcast_to(np.arange(n, dtype=np.float32)[:, None, None, None] + 1, (n, gh, gw, 9))
  return schema.encode(schema.VideoMeta('idx', 0, 'x', '/idx.mp4', 25.0), jpegs, h, w,
                       np.zeros((starts, 8, gh, gw, 2), np.float32), np.ones((starts, gh, gw), bool), hog_map,
                       traj_start_stride=2, motion_maps=maps)


def _clip(record, config, index=0):
  spec = pretraining.ClipSpec.from_config(config)
  clip = pretraining.make_clip_fn(config, spec)(tf.constant(0, tf.int64), tf.constant(index, tf.int64),
                                                tf.constant(record))
  clip = {k: v.numpy()[None] for k, v in clip.items()}
  return {k: np.asarray(v)[0] for k, v in jax.jit(lambda b: clip_device.assemble(b, spec))(clip).items()}


@pytest.mark.parametrize('clip_ops', ['host', 'device'])
@pytest.mark.parametrize('interpolate', ['paper', 'true', 'false'])
def test_maps_are_read_at_the_frames_interpolate_says(indexed_record, clip_ops, interpolate):
  """Every raw frame of each tubelet's window (default, interpolate=true), or only the frames the model sees (false),
  on both clip paths; the maps sit at the output cells, flow in model px."""
  config = _clip_config('hog+hof+mbh+flow', clip_ops, interpolate)
  for index in range(3):
    clip = _clip(indexed_record, config, index)
    first = np.rint(clip['video'][::2, 0, 0, 0] / 8).astype(int)  # Each tubelet's first frame (gray level 8n).
    offsets = [0, 2] if interpolate == 'false' else [0, 1, 2, 3]
    want = first[:, None] + np.asarray(offsets)[None, :]  # [Tt, F] frame (pair) indices.
    assert set(clip) >= {'map_hof', 'map_mbh', 'map_flow'} and 'hof_map_raw' not in clip and 'map_origin' not in clip
    for name, c in (('hof', 9), ('mbh', 18)):
      assert clip[f'map_{name}'].shape == (4, 6, 6, len(offsets), c)
      np.testing.assert_allclose(clip[f'map_{name}'], np.broadcast_to((want + 1)[:, None, None, :, None],
                                                                      clip[f'map_{name}'].shape), rtol=1e-5)
    np.testing.assert_allclose(clip['map_flow'][..., 0],
                               np.broadcast_to(want[:, None, None] / 4, (4, 6, 6, len(offsets))), atol=1e-5)
    np.testing.assert_allclose(clip['map_flow'][..., 1], -clip['map_flow'][..., 0], atol=1e-5)
    if interpolate == 'true':  # The dense HOG part reads the stored HOG maps of the same frames.
      np.testing.assert_allclose(clip['map_hog'][..., 0], np.broadcast_to((want + 1)[:, None, None], (4, 6, 6, 4)),
                                 rtol=1e-5)
    else:
      assert 'map_hog' not in clip  # The static HOG is computed from the clip itself.


def test_map_lookup_flips_with_the_frames():
  """A flipped clip's maps have their bins mirrored (HOF, MBH) and dx negated (flow). The maps here vary along y,
  frames and bins only, so the lookup position along x (mirrored as the trajectories' start points, which
  tests/clip_device_test.py checks) does not enter."""
  layout = clip_device.ClipLayout(num_frames=4, frame_stride=2, tubelet=2, res=32, traj_len=2, with_hog=False,
                                  prep_short_side=48, maps=('hof', 'mbh', 'flow'), map_offsets=(0, 1, 2, 3))
  raw = clip_device.example_raw(layout, 1, rng=np.random.default_rng(4))
  for name in layout.maps:
    key = f'{name}_map_raw'
    raw[key] = np.broadcast_to(raw[key][:, :, :, :1], raw[key].shape).copy()
  raw['crop'][0] = (8, 16, 32, 24)
  raw['map_origin'][0] = (0, 1)
  plain = clip_device.assemble({**raw, 'flip': np.zeros(1, bool)}, layout)
  flipped = clip_device.assemble({**raw, 'flip': np.ones(1, bool)}, layout)
  for name in ('hof', 'mbh'):
    want = np.asarray(plain[f'map_{name}'])[..., list(schema.MOTION_MAP_FLIPS[name])]
    assert not np.allclose(want, plain[f'map_{name}'])
    np.testing.assert_allclose(flipped[f'map_{name}'], want, rtol=1e-5, atol=1e-6)
  want = np.asarray(plain['map_flow']) * np.asarray(schema.FLOW_FLIP_SIGN)
  np.testing.assert_allclose(flipped['map_flow'], want, rtol=1e-5, atol=1e-6)
  # Flow in model px: dx scaled by res / crop width, dy by res / crop height.
  np.testing.assert_allclose(plain['map_flow'][..., 0] * 24 / 32,
                             clip_device.assemble({**raw, 'crop': np.asarray([[8, 16, 32, 32]], np.int32)},
                                                  layout)['map_flow'][..., 0], rtol=1e-5, atol=1e-6)


def test_a_target_without_its_maps_in_the_records_is_refused_up_front(tmp_path):
  """Records prepared without --motion_maps cannot serve the HOF target: a DataError naming the flag, before
  training."""
  from m3video_jax.data import stream

  prep = PrepConfig(short_side=0, traj_len=4)
  vt = video_targets.extract_from_frames(iter(_moving_square_video()), prep)
  path = str(tmp_path / 'train-00000-of-00001.tfrecord')
  with tf.io.TFRecordWriter(path) as w:
    w.write(video_targets.to_record(vt, schema.VideoMeta('a', 0, 'x', '/a.mp4', 25.0), prep))
  spec = pretraining.ClipSpec.from_config(_clip_config('hog+hof', prep_short_side=64))
  with pytest.raises(stream.DataError, match='--motion_maps=hof'):
    pretraining.check_stored_records([path], spec)
  pretraining.check_stored_records([path], pretraining.ClipSpec.from_config(_clip_config('trajectory')))


NEW_TARGETS = [('flow', 'paper'), ('hof', 'paper'), ('mbh', 'paper'), ('hog+flow', 'paper'), ('hog+hof', 'paper'),
               ('hog+mbh', 'paper'), ('hog+mbh', 'true'), ('hog+mbh', 'false'), ('hog', 'true'),
               ('hog+trajectory_position', 'paper'), ('trajectory+hof+mbh', 'paper'), ('trajectory', 'false')]


@pytest.fixture(scope='module')
def square_record(square_targets):
  prep, vt = square_targets
  return video_targets.to_record(vt, schema.VideoMeta('sq', 0, 'x', '/sq.mp4', 25.0), prep)


@pytest.mark.parametrize('target, interpolate', NEW_TARGETS)
def test_every_new_target_in_the_jitted_step(square_record, target, interpolate):
  """Shapes, parts and masks of each new target from real prepared clips, inside the jitted loss."""
  config = _clip_config(target, 'host', interpolate, num_frames=4, res=32, prep_short_side=64, crop_scales=(0.75,))
  task = tasks.get_task(config)
  task.validate()
  spec = pretraining.ClipSpec.from_config(config)
  fn = pretraining.make_clip_fn(config, spec)
  clips = [fn(tf.constant(0, tf.int64), tf.constant(i, tf.int64), tf.constant(square_record)) for i in range(2)]
  batch = {k: np.stack([c[k].numpy() for c in clips]) for k in clips[0]}
  dims = task.part_dims
  params = task.init_params(jax.random.key(0))
  out = jax.jit(lambda p, b: task.forward(p, b, jax.random.key(1), train=False))(params, batch)
  n = (4 // 2) * (32 // 16) ** 2
  assert out['target'].shape == out['weight'].shape == (2, n, sum(dims.values()))
  assert np.isfinite(np.asarray(out['target'])).all()
  comps = target.split('+')
  names = [{'trajectory_position': 'position'}.get(c, c) for c in comps]
  if 'trajectory' in comps:
    names = [x for c in comps for x in (['position', 'shape'] if c == 'trajectory' else [c])]
  assert list(dims) == names
  pt, k = 2, 4
  frames = pt if interpolate == 'false' else pt * 2
  for name in ('hof', 'mbh', 'flow'):
    if name in dims:
      assert dims[name] == k * frames * schema.MOTION_MAP_CHANNELS[name]
  if 'hog' in dims:
    assert dims['hog'] == (k * frames * 9 if interpolate == 'true' else 108)
  # Map parts weigh every element; trajectory parts only the valid trajectories.
  offset = 0
  weight = np.asarray(out['weight'])
  for name, size in dims.items():
    part = weight[..., offset:offset + size]
    if name in ('hof', 'mbh', 'flow', 'hog'):
      assert part.min() == 1.0
    else:
      assert set(np.unique(part)) <= {0.0, 1.0}
    offset += size
  loss, metrics = jax.jit(lambda p, b: task.loss_fn(p, b, jax.random.key(1)))(params, batch)
  assert np.isfinite(float(loss))
  for name in dims:
    assert f'{name}_vs_zero' in metrics and f'{name}_moving_vs_zero' in metrics


def _traj_batch(rng, steps):
  return {
      'video': np.zeros((1, 2, 16, 16, 3), np.float32),
      'traj_disp': rng.normal(size=(1, 1, 2, 2, steps, 2)).astype(np.float32),
      'traj_valid': np.array([[[[True, True], [False, True]]]]),
      'traj_hog': rng.random((1, 1, 2, 2, steps, 9)).astype(np.float32),
  }


def test_interpolate_false_reads_only_the_frames_the_model_sees():
  """L steps at the input stride s: displacements summed over s raw steps, HOG of every s-th raw frame; the values of
  the other raw frames do not matter."""
  rng = np.random.default_rng(2)
  batch = _traj_batch(rng, 6)
  cfg = targets.default_config()
  cfg.update(traj_len=3, interpolate=False, position_norm='none', shape_norm='none')
  target, _ = targets.compute(batch, cfg, frame_stride=2)
  target = np.asarray(target)[0, 0]
  disp = batch['traj_disp'][0, 0].reshape(4, 6, 2)  # Points k = 2 * row + col.
  np.testing.assert_allclose(target[:24].reshape(4, 3, 2), disp.reshape(4, 3, 2, 2).sum(2), rtol=1e-5)
  np.testing.assert_allclose(target[24:].reshape(4, 3, 9), batch['traj_hog'][0, 0].reshape(4, 6, 9)[:, ::2])
  other = dict(batch, traj_hog=batch['traj_hog'].copy())
  other['traj_hog'][..., 1::2, :] = 99.0  # HOG at frames the model does not see.
  np.testing.assert_array_equal(np.asarray(targets.compute(other, cfg, frame_stride=2)[0])[0, 0], target)
  with pytest.raises(ValueError, match='input stride'):
    targets.compute(_traj_batch(rng, 5), cfg, frame_stride=2)
  # The pipeline reads L x s raw steps for it.
  config = _clip_config('trajectory', interpolate='false')
  assert pretraining.ClipSpec.from_config(config).traj_len == 4  # traj_len=2 at stride 2.


def test_sparse_densities_pool_the_valid_trajectories():
  batch = _traj_batch(np.random.default_rng(6), 2)
  disp = batch['traj_disp'][0, 0].reshape(4, 2, 2)
  hog_ = batch['traj_hog'][0, 0].reshape(4, 2, 9)
  valid = np.array([True, True, False, True])
  cfg = targets.default_config()
  cfg.update(traj_len=2, position_norm='none', shape_norm='none', density='sparse_mean')
  assert targets.part_dims(cfg) == {'position': 4, 'shape': 18}
  target, weight = (np.asarray(a)[0, 0] for a in targets.compute(batch, cfg))
  np.testing.assert_allclose(target[:4], disp[valid].mean(0).reshape(-1), rtol=1e-5)
  np.testing.assert_allclose(target[4:], hog_[valid].mean(0).reshape(-1), rtol=1e-5)
  assert weight.min() == 1.0
  cfg.density = 'sparse_max'
  target, _ = (np.asarray(a)[0, 0] for a in targets.compute(batch, cfg))
  path = np.where(valid, np.linalg.norm(disp, axis=-1).sum(-1), -1)
  np.testing.assert_allclose(target[:4], disp[path.argmax()].reshape(-1), rtol=1e-6)
  np.testing.assert_allclose(target[4:], hog_[path.argmax()].reshape(-1), rtol=1e-6)


def test_target_args_of_the_paper_tables():
  for arg, kind, position, shape in (('hog+trajectory_position', 'hog+trajectory', True, False),
                                     ('trajectory+hof+mbh', 'trajectory+hof+mbh', True, True),
                                     ('hog+flow', 'hog+flow', False, False)):
    c = pretrain_ssv2.get_config(f'target={arg}')
    assert (c.target.kind, c.target.position, c.target.shape) == (kind, position, shape)
    c.data.train_files = '/data/ssv2/train-*.tfrecord'
    tasks.get_task(c).validate()
  c = pretrain_ssv2.get_config('target=hog+mbh,interpolate=false,density=sparse_max')
  assert c.target.interpolate is False and c.target.density == 'sparse_max'
  assert pretrain_ssv2.get_config().target.interpolate is None
  with pytest.raises(ValueError, match="'hogg' is not one of"):
    pretrain_ssv2.get_config('target=hogg+mbh')
  with pytest.raises(ValueError, match='interpolate'):
    config_lib.apply_pretrain_args(pretrain_ssv2.get_config(),
                                   config_lib.parse_arg('interpolate=maybe', **config_lib.PRETRAIN_ARGS))
