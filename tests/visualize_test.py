"""Trajectory drawing (m3video_jax/drawing.py), the data-prep visualiser and the prediction picture."""
import os

import numpy as np

from data_prep import synthetic
from data_prep import video_targets
from m3video_jax import visualize as prep_visualize
from data_prep.options import PrepConfig
from m3video_jax import drawing
from m3video_jax.data import schema

VELOCITY = (2.0, 1.0)  # px/frame, right and down: a swap of x and y would be seen.


def _translating_record(tmp_path, shard=None):
  """One prepared record of a synthetic video whose only object translates at VELOCITY over a static background
  (decoded; with `shard`, also written there as a one-record TFRecord file)."""
  rng = np.random.default_rng(4)
  spec = synthetic.sample_spec(rng, 1, 64, 64, 14, max_pan=0.0, object_scale=1.8)
  spec = synthetic.VideoSpec(**{**spec.__dict__, 'velocity': VELOCITY, 'center0': (24.0, 24.0)})
  frames = synthetic.render(spec)
  config = PrepConfig(short_side=0, traj_len=6, flow='dis_medium', camera_motion='none')
  targets = video_targets.extract_from_frames(iter(frames), config)
  meta = schema.VideoMeta(video_id='v', label=1, label_name='translate_right', source_path='v.mp4', fps=25.0)
  record = video_targets.to_record(targets, meta, config)
  if shard is not None:
    import tensorflow as tf

    with tf.io.TFRecordWriter(str(shard)) as writer:
      writer.write(record)
  return spec, schema.decode(record)


def test_drawn_trajectory_pixels_lie_on_the_known_motion(tmp_path):
  spec, rec = _translating_record(tmp_path)
  start, traj_len = 2, rec['traj_len']
  t0 = int(rec['traj_start_frames'][start])
  x0, y0 = schema.start_positions(*rec['traj_valid'].shape[1:])
  v = np.array(VELOCITY) * traj_len
  # Only trajectories that stay well inside the object are drawn (the others are made still, i.e. dots): their true
  # motion is known exactly, while the flow at the object's outline is not.
  inside = (synthetic.object_mask(spec, t0, x0, y0, margin=4)
            & synthetic.object_mask(spec, t0 + traj_len, x0 + v[0], y0 + v[1], margin=4))
  assert inside.sum() >= 4
  rec['traj_disp'][start][:, ~inside] = 0.0
  frame = rec['frames'][t0]
  drawn = drawing.start_panel(rec, start, scale=1, min_path=1.0)
  changed = np.abs(drawn.astype(int) - frame.astype(int)).max(-1) > 30
  lines = changed & ~np.all(drawn == np.array(drawing.STILL_DOT, np.uint8), -1)  # The dots are exactly STILL_DOT.
  ys, xs = np.nonzero(lines)
  assert len(xs) > 40
  # Line pixels lie within 1.5 px (anti-aliasing, flow error) of a segment from a drawn start along the true motion,
  # p0 -> p0 + L * v, and not along the motion with x and y swapped.
  p = np.stack([xs, ys], -1)[:, None].astype(float)  # [pixels, 1, 2]
  a = np.stack([x0[inside], y0[inside]], -1)[None].astype(float)  # [1, starts, 2]

  def distances(velocity):
    w = np.array(velocity) * traj_len
    s = np.clip(((p - a) @ w) / (w @ w), 0, 1)[..., None]
    return np.linalg.norm(p - (a + s * w), axis=-1).min(1)

  dist = distances(VELOCITY)
  assert np.quantile(dist, 0.95) <= 1.5 and dist.max() <= 2.0, np.sort(dist)[-10:]
  assert np.quantile(distances(VELOCITY[::-1]), 0.95) > 2.0
  # Every drawn start has pixels drawn around its midpoint.
  mid = np.round(np.stack([x0[inside], y0[inside]], -1) + v / 2).astype(int)
  assert all(lines[y - 1:y + 2, x - 1:x + 2].any() for x, y in mid)


def test_out_of_frame_trajectories_are_drawn_in_red_with_a_cross():
  image = np.zeros((32, 32, 3), np.uint8)
  out = drawing.draw_trajectories(image, np.array([4.0, 20.0]), np.array([16.0, 16.0]),
                                  np.array([[[-2.0, 0.0]] * 3, [[2.0, 0.0]] * 3]), np.array([False, True]))
  red = (out[..., 0].astype(int) > 3 * out[..., 1]) & (out[..., 0].astype(int) > 3 * out[..., 2]) & (out[..., 0] > 60)
  assert red[:, :10].sum() >= 6 and red[12:21, 0:8].any()  # The path and the cross at its last position (x = -2).
  assert not red[:, 14:].any()
  # Early segments are darker than late ones.
  assert out[16, 21].sum() < out[16, 25].sum()


def test_prep_visualizer_cli_writes_png_and_mp4(tmp_path, capsys):
  _translating_record(tmp_path, tmp_path / 'train-00000-of-00001.tfrecord')
  pattern = str(tmp_path / 'train-*.tfrecord')
  for name in ('a.png', 'a.mp4'):
    assert prep_visualize.main([f'--shards={pattern}', f'--output={tmp_path / name}']) == 0
    assert 'wrote' in capsys.readouterr().out and os.path.getsize(tmp_path / name) > 1000
  assert prep_visualize.main([f'--shards={pattern}', '--video_id=nope', f'--output={tmp_path / "b.png"}']) == 1
  assert "--video_id='nope'" in capsys.readouterr().err
  assert prep_visualize.main([f'--shards={tmp_path / "none-*"}', f'--output={tmp_path / "b.png"}']) == 1
  assert 'matches no file' in capsys.readouterr().err


def test_prediction_picture_cli_from_a_checkpoint_and_a_record(tmp_path, capsys):
  import json

  import jax
  from m3video_jax.interop import import_weights
  from m3video_jax import tasks
  from m3video_jax import visualize
  from tests.train_test import tiny_config

  config = tiny_config()
  params = jax.device_get(tasks.get_task(config).init_params(jax.random.key(0)))
  import_weights.write_checkpoint(params, json.loads(config.to_json_best_effort()), str(tmp_path / 'wd'))
  _translating_record(tmp_path, tmp_path / 'train-00000-of-00001.tfrecord')
  out = tmp_path / 'pred.png'
  assert visualize.main([f'--checkpoint={tmp_path / "wd"}', f'--shards={tmp_path / "train-*.tfrecord"}',
                         f'--output={out}']) == 0
  assert 'wrote' in capsys.readouterr().out
  import cv2
  image = cv2.imread(str(out))
  # One row per tubelet slot (4 frames / 2), four 32 px columns upscaled 4x, titles and gaps.
  t, res, scale = config.data.num_frames // 2, config.data.res, 4
  assert image.shape[1] == 4 * res * scale + 3 * 4
  assert image.shape[0] == 22 + t * (18 + res * scale) + (t - 1) * 4
  assert visualize.main([f'--checkpoint={tmp_path / "nowhere"}', f'--shards={tmp_path / "train-*.tfrecord"}',
                         f'--output={out}']) == 1
  assert 'no orbax checkpoint' in capsys.readouterr().err


def test_visualization_outputs_unnormalise_the_prediction_with_the_token_statistics():
  import jax
  from m3video_jax import masking
  from m3video_jax import tasks
  from m3video_jax import targets
  from tests.train_test import random_batch, tiny_config

  task = tasks.get_task(tiny_config(**{'target.shape': False}))
  batch = random_batch(task.config, seed=1, batch_size=2)
  params = task.init_params(jax.random.key(0))
  rng = jax.random.key(3)
  out = jax.device_get(task.visualization_outputs(params, batch, rng))
  fwd = jax.device_get(jax.jit(lambda p, b, r: task.forward(p, b, r, train=False))(params, batch, rng))
  raw, mean, scale = (np.asarray(a) for a in targets.position_statistics(
      dict(batch, video=fwd['video']), task.config.target))
  idx = np.asarray(masking.hidden_indices(fwd['hidden'], fwd['pred'].shape[1]))
  np.testing.assert_array_equal(out['target_disp'], raw)
  for b in range(2):
    want = fwd['pred'][b].reshape(idx.shape[1], *raw.shape[2:]) * scale[b, idx[b]] + mean[b, idx[b]]
    np.testing.assert_allclose(out["pred_disp"][b, idx[b]], want, rtol=1e-4, atol=1e-5)
    visible = np.setdiff1d(np.arange(raw.shape[1]), idx[b])
    assert not out['pred_disp'][b, visible].any()


def test_shards_that_are_not_tfrecords_are_one_error_line_naming_the_file(tmp_path, capsys):
  (tmp_path / 'notes-00000.tfrecord').write_bytes(np.random.default_rng(0).bytes(300))
  assert prep_visualize.main([f'--shards={tmp_path / "*.tfrecord"}', f'--output={tmp_path / "b.png"}']) == 1
  err = capsys.readouterr().err
  assert err.startswith(f'error: {tmp_path / "notes-00000.tfrecord"} (matched by --shards=') and len(
      err.strip().splitlines()) == 1, err
  assert 'is not a readable TFRecord file (corrupted record at 0' in err and 'Traceback' not in err
