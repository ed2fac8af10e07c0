"""Tests for m3video_jax/targets.py (and the loss on top of its targets)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from m3video_jax import config_lib
from m3video_jax import hog
from m3video_jax import losses
from m3video_jax import masking
from m3video_jax import targets


def _cfg(**overrides):
  c = targets.default_config()
  c.update(overrides)
  return c


def _random_batch(rng, b=2, t=4, h=32, w=48, steps=3, valid_prob=1.0):
  gh, gw = h // 8, w // 8
  return {
      'video': rng.normal(size=(b, t, h, w, 3)).astype(np.float32),
      'traj_disp': rng.normal(size=(b, t // 2, gh, gw, steps, 2)).astype(np.float32) * 3,
      'traj_valid': rng.random((b, t // 2, gh, gw)) < valid_prob,
      'traj_hog': rng.random((b, t // 2, gh, gw, steps, 9)).astype(np.float32),
      # Stored maps at the output cells, 4 frames per tubelet (pt 2 x frame stride 2).
      **{f'map_{name}': rng.random((b, t // 2, gh, gw, 4, c)).astype(np.float32)
         for name, c in (('hog', 9), ('flow', 2), ('hof', 9), ('mbh', 18))},
  }


def _one_token_batch():
  """One clip, one tubelet, one 16x16 token: K = 4 trajectories, 2 stored steps."""
  disp = np.full((1, 1, 2, 2, 2, 2), 100.0, np.float32)  # Step 1 must be ignored with traj_len=1.
  # Step 0, (dx, dy) of point k = 2 * gy + gx: mean 0, population variance 1.
  disp[0, 0, 0, 0, 0] = (1, 1)
  disp[0, 0, 0, 1, 0] = (-1, -1)
  disp[0, 0, 1, 0, 0] = (1, -1)
  disp[0, 0, 1, 1, 0] = (-1, 1)
  hog_ = np.full((1, 1, 2, 2, 2, 9), 7.0, np.float32)
  hog_[0, 0, 0, :, 0] = 2.0  # Points 0 and 1: all bins 2; points 2 and 3: all bins 0 -> mean 1, variance 1.
  hog_[0, 0, 1, :, 0] = 0.0
  return {
      'video': np.zeros((1, 2, 16, 16, 3), np.float32),
      'traj_disp': disp,
      'traj_valid': np.ones((1, 1, 2, 2), bool),
      'traj_hog': hog_,
  }


def test_default_config_is_paper_target_with_264_dims():
  cfg = targets.default_config()
  assert (cfg.kind, cfg.traj_len, cfg.position, cfg.shape) == ('trajectory', 6, True, True)
  assert (cfg.position_norm, cfg.shape_norm, cfg.noise_floor) == ('joint', 'joint', 'none')
  assert targets.part_dims(cfg) == {'position': 48, 'shape': 216}


@pytest.mark.parametrize('overrides, dims', [
    ({'shape': False}, {'position': 48}),
    ({'position': False, 'traj_len': 4}, {'shape': 144}),
    ({'kind': 'trajectory_reference', 'traj_len': 4, 'position_norm': 'per_step'}, {'position': 32, 'shape': 108}),
    ({'kind': 'pixel'}, {'pixel': 1536}),
    ({'kind': 'hog'}, {'hog': 108}),
])
def test_part_dims_of_variants(overrides, dims):
  assert targets.part_dims(_cfg(**overrides)) == dims


@pytest.mark.parametrize('overrides, field', [
    ({'kind': 'flux'}, 'target.kind'),
    ({'kind': 'hog+hog'}, 'target.kind'),
    ({'kind': 'hog+trajectory_reference'}, 'target.kind'),
    ({'density': 'sparse'}, 'target.density'),
    ({'mbh_norm': 'l2'}, 'target.mbh_norm'),
    ({'kind': 'trajectory_reference', 'density': 'sparse_max'}, 'target.density'),
    ({'traj_len': 0}, 'target.traj_len'),
    ({'position': False, 'shape': False}, 'target.position'),
    ({'norm_eps': 0.0}, 'target.norm_eps'),
    ({'hog_frame': -1}, 'target.hog_frame'),
])
def test_validate_names_the_bad_field(overrides, field):
  with pytest.raises(ValueError, match=field):
    targets.validate(_cfg(**overrides))


def test_trajectory_target_hand_computed_example():
  target, weight = targets.compute(_one_token_batch(), _cfg(traj_len=1))
  s = np.sqrt(1 + 1e-6)
  # position: index k*2L + j*2 + c; shape: index k*9L + j*9 + bin.
  want_pos = np.array([1, 1, -1, -1, 1, -1, -1, 1]) / s
  want_shape = np.array([1.0] * 18 + [-1.0] * 18) / s
  np.testing.assert_allclose(target[0, 0], np.concatenate([want_pos, want_shape]), rtol=1e-6)
  np.testing.assert_array_equal(weight, np.ones((1, 1, 44)))


def test_trajectory_target_hand_computed_with_an_invalid_trajectory():
  batch = _one_token_batch()
  batch['traj_valid'][0, 0, 1, 1] = False  # Point k = 3.
  target, weight = targets.compute(batch, _cfg(traj_len=1, position_eps=1e-12, shape_eps=1e-12))
  # Statistics over the valid points 0, 1, 2 only. position: mean 0, variance 1 -> values unchanged.
  np.testing.assert_allclose(target[0, 0, :8], [1, 1, -1, -1, 1, -1, -1, 1], rtol=1e-5)
  # shape: 18 values 2 and 9 values 0 -> mean 4/3, variance 8/9 -> 2 maps to 1/sqrt(2), 0 to -sqrt(2).
  want = [2 ** -0.5] * 18 + [-(2 ** 0.5)] * 18
  np.testing.assert_allclose(target[0, 0, 8:], want, rtol=1e-5)
  np.testing.assert_array_equal(weight[0, 0], [1] * 6 + [0] * 2 + [1] * 27 + [0] * 9)


def test_trajectory_target_layout_maps_grid_points_to_tokens():
  b, t, h, w, steps = 2, 4, 32, 48, 3
  gh, gw, ww = h // 8, w // 8, w // 16
  code = np.arange(b * (t // 2) * gh * gw * steps * 2, dtype=np.float32).reshape(b, t // 2, gh, gw, steps, 2)
  hcode = np.arange(b * (t // 2) * gh * gw * steps * 9, dtype=np.float32).reshape(b, t // 2, gh, gw, steps, 9)
  valid = np.random.default_rng(0).random((b, t // 2, gh, gw)) < 0.5
  batch = {'video': np.zeros((b, t, h, w, 3), np.float32), 'traj_disp': code, 'traj_valid': valid, 'traj_hog': hcode}
  length = 2
  target, weight = targets.compute(batch, _cfg(traj_len=length, position_norm='none', shape_norm='none'))
  target, weight = np.asarray(target), np.asarray(weight)
  assert target.shape == (b, (t // 2) * (h // 16) * ww, 4 * length * 11)
  pos_dim = 4 * length * 2
  for bi in range(b):
    for ti in range(t // 2):
      for gy in range(gh):
        for gx in range(gw):
          n = ti * (h // 16) * ww + (gy // 2) * ww + gx // 2
          k = (gy % 2) * 2 + gx % 2
          for j in range(length):
            for c in range(2):
              assert target[bi, n, k * 2 * length + j * 2 + c] == code[bi, ti, gy, gx, j, c]
              assert weight[bi, n, k * 2 * length + j * 2 + c] == valid[bi, ti, gy, gx]
            for bin_ in range(9):
              assert target[bi, n, pos_dim + k * 9 * length + j * 9 + bin_] == hcode[bi, ti, gy, gx, j, bin_]
              assert weight[bi, n, pos_dim + k * 9 * length + j * 9 + bin_] == valid[bi, ti, gy, gx]


def test_constant_prediction_gives_hand_computed_loss():
  # All trajectories valid and patch norm on: every part of every token has mean 0 and mean square 1 (up to eps),
  # so predicting the constant c gives mean((z - c)^2) = 1 + c^2, for the loss and for each part.
  batch = _random_batch(np.random.default_rng(1), steps=6)
  cfg = _cfg(position_eps=1e-12, shape_eps=1e-12)
  target, weight = targets.compute(batch, cfg)
  grid = (2, 2, 3)
  hidden = masking.tube_mask(jax.random.key(0), 2, grid, 0.5)
  nm = masking.num_hidden(grid, 0.5)
  c = 0.5
  pred = jnp.full((2, nm, 264), c)
  loss, metrics = losses.masked_l2(pred, target, weight, hidden, targets.part_dims(cfg))
  np.testing.assert_allclose(loss, 1 + c * c, rtol=1e-5)
  np.testing.assert_allclose(metrics['loss_position'], 1 + c * c, rtol=1e-5)
  np.testing.assert_allclose(metrics['loss_shape'], 1 + c * c, rtol=1e-5)
  np.testing.assert_allclose(metrics['valid_fraction'], 1.0)


def test_invalid_trajectories_contribute_nothing_to_the_loss():
  rng = np.random.default_rng(2)
  batch = _random_batch(rng, valid_prob=0.6)
  cfg = _cfg(traj_len=3)
  grid = (2, 2, 3)
  hidden = masking.tube_mask(jax.random.key(1), 2, grid, 0.5)
  nm = masking.num_hidden(grid, 0.5)
  dims = targets.part_dims(cfg)
  pred = rng.normal(size=(2, nm, sum(dims.values()))).astype(np.float32)
  target, weight = targets.compute(batch, cfg)
  loss, metrics = losses.masked_l2(pred, target, weight, hidden, dims)

  # Garbage in the out-of-frame trajectories, and in the predictions of their elements, changes nothing.
  invalid = ~batch['traj_valid']
  batch2 = {k: v.copy() for k, v in batch.items()}
  batch2['traj_disp'][invalid] = 1e4
  batch2['traj_hog'][invalid] = -5e3
  target2, weight2 = targets.compute(batch2, cfg)
  w_hidden = np.asarray(masking.gather_tokens(weight2, masking.hidden_indices(hidden, nm)))
  pred2 = np.where(w_hidden == 0, 1e3, pred)
  loss2, metrics2 = losses.masked_l2(pred2, target2, weight2, hidden, dims)
  np.testing.assert_allclose(loss2, loss, rtol=1e-6)
  np.testing.assert_allclose(metrics2['loss_shape'], metrics['loss_shape'], rtol=1e-6)
  assert 0 < float(metrics['valid_fraction']) < 1
  # Every point of a token has L*11 elements, so the element fraction equals the trajectory fraction.
  tok_valid = np.asarray(targets._grid_to_tokens(batch['traj_valid'], (2, 16, 16)))
  hid_valid = np.take_along_axis(tok_valid, np.asarray(masking.hidden_indices(hidden, nm))[..., None], 1)
  np.testing.assert_allclose(metrics['valid_fraction'], hid_valid.mean(), rtol=1e-6)


def test_reference_target_hand_computed_example():
  batch = _one_token_batch()
  batch['video'] = np.random.default_rng(3).normal(size=(1, 2, 16, 16, 3)).astype(np.float32)
  batch['traj_disp'][0, 0, :, :, 0] = 0.0
  batch['traj_disp'][0, 0, 0, 0, 0] = (20.0, 0.0)  # /20 -> dx of the 4 points [1, 0, 0, 0], all dy 0.
  cfg = _cfg(kind='trajectory_reference', traj_len=1, position_norm='per_step')
  target, weight = targets.compute(batch, cfg)
  assert target.shape == (1, 1, 8 + 108)
  # PatchStd per (c, step) over the 4 points: mean 1/4, unbiased std 1/2 -> [1.5, -0.5, -0.5, -0.5]; dy -> 0.
  np.testing.assert_allclose(target[0, 0, :8], np.array([1.5, -0.5, -0.5, -0.5, 0, 0, 0, 0]) * 0.5 / (0.5 + 1e-6),
                             rtol=1e-6, atol=1e-7)
  # Shape: RGB HOG of the 2nd frame of the tubelet, index (colour*9 + bin)*4 + 2*cell_row + cell_col.
  cells = hog.cell_histograms_numpy(batch['video'][0, 1])  # [2, 2, 3, 9]
  np.testing.assert_allclose(target[0, 0, 8:], cells.transpose(2, 3, 0, 1).reshape(-1), rtol=1e-4, atol=1e-5)
  np.testing.assert_array_equal(weight, np.ones((1, 1, 116)))


def test_reference_target_validity_is_any_of_four_on_the_position_part():
  rng = np.random.default_rng(4)
  batch = _random_batch(rng, b=1, t=2, h=16, w=32, steps=4)
  batch['traj_valid'][:] = False
  batch['traj_valid'][0, 0, 1, 0] = True  # One point of token 0; token 1 has none.
  _, weight = targets.compute(batch, _cfg(kind='trajectory_reference', traj_len=4, position_norm='per_step'))
  np.testing.assert_array_equal(weight[0, 0], np.ones(140))
  np.testing.assert_array_equal(weight[0, 1], [0] * 32 + [1] * 108)


def test_pixel_target_matches_videomae_normalised_pixels():
  rng = np.random.default_rng(5)
  video = rng.normal(size=(2, 4, 32, 16, 3)).astype(np.float32)
  target, weight = targets.compute({'video': video}, _cfg(kind='pixel'))
  mean, std = np.array(targets.IMAGENET_MEAN), np.array(targets.IMAGENET_STD)
  raw = video * std + mean
  # 'b (t p0) (h p1) (w p2) c -> b (t h w) (p0 p1 p2) c', then per-colour (x - mean) / (unbiased std + 1e-6).
  p = raw.reshape(2, 2, 2, 2, 16, 1, 16, 3).transpose(0, 1, 3, 5, 2, 4, 6, 7).reshape(2, 4, 512, 3)
  want = (p - p.mean(2, keepdims=True)) / (p.std(2, ddof=1, keepdims=True) + 1e-6)
  np.testing.assert_allclose(target, want.reshape(2, 4, 1536), rtol=1e-4, atol=1e-4)
  np.testing.assert_array_equal(weight, np.ones_like(want.reshape(2, 4, 1536)))
  target_raw, _ = targets.compute({'video': video}, _cfg(kind='pixel', pixel_norm=False))
  np.testing.assert_allclose(target_raw, p.reshape(2, 4, 1536), rtol=1e-5, atol=1e-6)


def test_hog_target_is_tubelet_frame_hog_in_colour_bin_cell_layout():
  rng = np.random.default_rng(6)
  video = rng.normal(size=(1, 4, 16, 32, 3)).astype(np.float32)
  target, weight = targets.compute({'video': video}, _cfg(kind='hog', hog_frame=0))
  assert target.shape == weight.shape == (1, 4, 108)
  for ti, frame in enumerate((0, 2)):
    cells = hog.cell_histograms_numpy(video[0, frame])  # [2, 4, 3, 9]
    for wi in range(2):
      want = cells[:, 2 * wi:2 * wi + 2].transpose(2, 3, 0, 1).reshape(-1)
      np.testing.assert_allclose(target[0, ti * 2 + wi], want, rtol=1e-4, atol=1e-5)
  normed, _ = targets.compute({'video': video}, _cfg(kind='hog', hog_norm=True))
  np.testing.assert_allclose(np.asarray(normed).mean(-1), 0.0, atol=1e-5)
  np.testing.assert_allclose(np.asarray(normed).std(-1), 1.0, rtol=1e-3)


@pytest.mark.parametrize('kind', targets.KINDS)
def test_compute_is_jittable_and_finite(kind):
  batch = _random_batch(np.random.default_rng(7), valid_prob=0.5)
  cfg = _cfg(kind=kind, traj_len=3, position_norm='per_step' if kind == 'trajectory_reference' else 'joint')
  target, weight = jax.jit(lambda b: targets.compute(b, cfg))(batch)
  d = sum(targets.part_dims(cfg).values())
  assert target.shape == weight.shape == (2, 12, d) and target.dtype == jnp.float32
  assert np.isfinite(np.asarray(target)).all()


def test_traj_len_longer_than_stored_steps_raises():
  with pytest.raises(ValueError, match='traj_len'):
    targets.compute(_random_batch(np.random.default_rng(8), steps=3), _cfg(traj_len=4))


def _translation_token(dx, dy, steps=2):
  """One token whose 4 trajectories all move by (dx, dy) per step (a rigid translation)."""
  disp = np.zeros((1, 1, 2, 2, steps, 2), np.float32)
  disp[..., 0], disp[..., 1] = dx, dy
  return {'video': np.zeros((1, 2, 16, 16, 3), np.float32), 'traj_disp': disp,
          'traj_valid': np.ones((1, 1, 2, 2), bool), 'traj_hog': np.ones((1, 1, 2, 2, steps, 9), np.float32)}


def _position(batch, **overrides):
  cfg = _cfg(traj_len=2, shape=False, **overrides)
  return np.asarray(targets.compute(batch, cfg)[0][0, 0])


def test_joint_norm_maps_right_to_up_and_left_to_down():
  v = 1.5
  right, up = _position(_translation_token(v, 0)), _position(_translation_token(0, -v))
  left, down = _position(_translation_token(-v, 0)), _position(_translation_token(0, v))
  # Half the K*L*2 values are v (or -v), half 0: mean v/2, std v/2 -> dx = +1, dy = -1 for right AND for up.
  np.testing.assert_allclose(right, np.tile([1.0, -1.0], 8), rtol=1e-5)
  np.testing.assert_allclose(up, right, rtol=1e-5)
  np.testing.assert_allclose(left, -right, rtol=1e-5)
  np.testing.assert_allclose(down, left, rtol=1e-5)


@pytest.mark.parametrize('norm', ['per_component', 'per_step'])
def test_per_component_and_per_step_norms_map_every_translation_to_zero(norm):
  for dx, dy in ((1.5, 0), (0, -1.5), (-1.0, 0.5)):
    np.testing.assert_allclose(_position(_translation_token(dx, dy), position_norm=norm), 0.0, atol=1e-6)


def test_no_norm_keeps_translations_apart_in_scaled_px():
  right = _position(_translation_token(1.5, 0), position_norm='none', position_scale=0.5)
  up = _position(_translation_token(0, -1.5), position_norm='none', position_scale=0.5)
  np.testing.assert_allclose(right, np.tile([3.0, 0.0], 8))
  np.testing.assert_allclose(up, np.tile([0.0, -3.0], 8))


def test_position_norm_variants_on_a_hand_example():
  batch = _translation_token(0, 0)
  # Point k (k = 2 * gy + gx), step j: dx = k + 1 + j, dy = 2 at step 0 and (-1)^k at step 1.
  for k in range(4):
    gy, gx = divmod(k, 2)
    batch['traj_disp'][0, 0, gy, gx, 0] = (k + 1, 2)
    batch['traj_disp'][0, 0, gy, gx, 1] = (k + 2, (-1) ** k)
  dx = np.array([[k + 1 + j for j in range(2)] for k in range(4)], float)  # [K, L]
  dy = np.array([[2, (-1) ** k] for k in range(4)], float)
  eps = 1e-6

  def standardise(x, axis):
    return (x - x.mean(axis, keepdims=True)) / np.sqrt(x.var(axis, keepdims=True) + eps)

  raw = np.stack([dx, dy], -1)  # [K, L, 2]: the layout of the target, index k*2L + j*2 + c.
  want = {'joint': standardise(raw.reshape(-1), 0).reshape(raw.shape),
          'per_component': standardise(raw.reshape(-1, 2), 0).reshape(raw.shape),
          'per_step': standardise(raw, 0)}
  for norm, expected in want.items():
    np.testing.assert_allclose(_position(batch, position_norm=norm), expected.reshape(-1), rtol=1e-5, atol=1e-6)
  # The per-step statistics hand-written for one group: step 1, dy = [1, -1, 1, -1] -> mean 0, variance 1.
  np.testing.assert_allclose(_position(batch, position_norm='per_step')[[3, 7, 11, 15]],
                             np.array([1, -1, 1, -1]) / np.sqrt(1 + eps), rtol=1e-6)


def test_position_and_shape_eps_are_separate():
  batch = _one_token_batch()  # Position values have variance 1, shape values variance 1.
  target, _ = targets.compute(batch, _cfg(traj_len=1, position_eps=3.0, shape_eps=1e-12))
  np.testing.assert_allclose(target[0, 0, :8], np.array([1, 1, -1, -1, 1, -1, -1, 1]) / 2.0, rtol=1e-6)
  np.testing.assert_allclose(target[0, 0, 8:], [1.0] * 18 + [-1.0] * 18, rtol=1e-5)


def _three_token_batch():
  """Tokens 0, 1, 2 (one tubelet, 48 px wide): point 0 of each has dx 0.5, 0.25 and 0.5 px; the rest are still."""
  disp = np.zeros((1, 1, 2, 6, 1, 2), np.float32)
  disp[0, 0, 0, 0, 0, 0] = 0.5  # Token 0: two storage quanta -> moving.
  disp[0, 0, 0, 2, 0, 0] = 0.25  # Token 1: one quantum (rounding noise) -> static.
  disp[0, 0, 0, 4, 0, 0] = 0.5  # Token 2: two quanta, but on an out-of-frame trajectory -> static.
  valid = np.ones((1, 1, 2, 6), bool)
  valid[0, 0, 0, 4] = False
  return {'video': np.zeros((1, 2, 16, 48, 3), np.float32), 'traj_disp': disp, 'traj_valid': valid,
          'traj_hog': np.ones((1, 1, 2, 6, 1, 9), np.float32)}


def test_moving_tokens_are_those_above_the_storage_quantum():
  batch = _three_token_batch()
  cfg = _cfg(traj_len=1)
  np.testing.assert_array_equal(targets.moving_tokens(batch, cfg), [[True, False, False]])
  # A crop that upscaled 2x makes the quantum 0.5 model px: the 0.5 px motion is noise too.
  batch['traj_quantum'] = np.array([0.5], np.float32)
  np.testing.assert_array_equal(targets.moving_tokens(batch, cfg), [[False, False, False]])


def test_noise_floor_zero_weight_and_zero_target_act_on_static_position_tokens_only():
  batch = _three_token_batch()
  plain_t, plain_w = (np.asarray(a) for a in targets.compute(batch, _cfg(traj_len=1)))
  t, w = (np.asarray(a) for a in targets.compute(batch, _cfg(traj_len=1, noise_floor='zero_weight')))
  np.testing.assert_array_equal(w[0, 0], plain_w[0, 0])  # Moving token: unchanged.
  np.testing.assert_array_equal(w[0, 1:, :8], 0.0)  # Static tokens: no position element counts ...
  np.testing.assert_array_equal(w[0, 1:, 8:], plain_w[0, 1:, 8:])  # ... the shape part does.
  np.testing.assert_array_equal(t, plain_t)
  t, w = (np.asarray(a) for a in targets.compute(batch, _cfg(traj_len=1, noise_floor='zero_target')))
  np.testing.assert_array_equal(w, plain_w)
  np.testing.assert_array_equal(t[0, 0], plain_t[0, 0])
  assert np.abs(plain_t[0, 1, :8]).max() > 1  # Patch norm blows the one-quantum noise up to unit variance ...
  np.testing.assert_array_equal(t[0, 1:, :8], 0.0)  # ... the floor makes it 0.
  np.testing.assert_array_equal(t[0, 1:, 8:], plain_t[0, 1:, 8:])


def test_position_statistics_invert_the_target():
  batch = _random_batch(np.random.default_rng(9), valid_prob=0.7)
  for norm in targets.POSITION_NORMS:
    cfg = _cfg(traj_len=3, shape=False, position_norm=norm, position_scale=2.0)
    target, _ = targets.compute(batch, cfg)
    raw, mean, scale = targets.position_statistics(batch, cfg)
    np.testing.assert_allclose(np.asarray(target).reshape(raw.shape) * scale + mean, raw, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('overrides, field', [
    ({'position_norm': 'patch'}, 'target.position_norm'),
    ({'shape_norm': 'per_step'}, 'target.shape_norm'),
    ({'noise_floor': 'drop'}, 'target.noise_floor'),
    ({'position_eps': 0.0}, 'target.position_eps'),
    ({'position_scale': -1.0}, 'target.position_scale'),
    ({'kind': 'trajectory_reference', 'position_norm': 'joint'}, 'target.position_norm'),
])
def test_validate_names_the_bad_target_option(overrides, field):
  with pytest.raises(ValueError, match=field):
    targets.validate(_cfg(**overrides))


def test_describe_names_the_paper_target_and_the_variants():
  assert 'paper-faithful' in targets.describe(_cfg())
  variant = targets.describe(_cfg(position_norm='none', position_scale=0.4, balance_parts=True))
  assert 'px / 0.4' in variant and 'parts weighted equally' in variant and 'a variant' in variant
  assert targets.describe(_cfg(kind='pixel')).startswith('pixel')


@pytest.mark.parametrize('kind,patch_norm,expected', [('trajectory', True, 'joint'), ('trajectory', False, 'none'),
                                                      ('trajectory_reference', True, 'per_step'),
                                                      ('trajectory_reference', False, 'none')])
def test_config_json_of_the_single_patch_norm_switch_is_read_as_the_same_target(kind, patch_norm, expected):
  saved = {'target': {'kind': kind, 'traj_len': 4, 'patch_norm': patch_norm, 'norm_eps': 0.05}}
  config = config_lib.pretrain_config_from_dict(saved)
  t = config.target
  assert (t.position_norm, t.shape_norm) == (expected, 'joint' if patch_norm else 'none')
  assert t.position_eps == t.shape_eps == t.norm_eps == 0.05 and t.position_scale == 1.0
  targets.validate(t)
