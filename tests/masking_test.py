"""Tests for m3video_jax/masking.py."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from m3video_jax import masking

GRID = (4, 7, 7)
# One compiled cube sampler for the (8, 14, 14) grid at ratio 0.4 (eager op-by-op dispatch is slower than compiling).
_cube_8x14x14 = jax.jit(lambda rng: masking.cube_mask(rng, 8, (8, 14, 14), 0.4))


def test_tube_mask_exact_hidden_count_per_row():
  hidden = np.asarray(masking.tube_mask(jax.random.key(0), 16, GRID, 0.7))
  assert hidden.shape == (16, 4 * 49) and hidden.dtype == bool
  assert (hidden.sum(1) == 4 * int(0.7 * 49)).all()
  assert masking.num_hidden(GRID, 0.7, 'tube') == 4 * 34


def test_tube_mask_reference_count_for_vit_b_grid():
  # The reference: 137 of 196 per time slot at ratio 0.7 -> 1096 hidden, 472 visible.
  assert masking.num_hidden((8, 14, 14), 0.7, 'tube') == 1096


def test_tube_mask_same_across_time():
  hidden = np.asarray(masking.tube_mask(jax.random.key(1), 8, GRID, 0.5)).reshape(8, 4, 49)
  assert (hidden == hidden[:, :1]).all()


def test_tube_mask_same_rng_same_mask_other_rng_other_mask():
  a = masking.tube_mask(jax.random.key(2), 4, GRID, 0.7)
  b = masking.tube_mask(jax.random.key(2), 4, GRID, 0.7)
  c = masking.tube_mask(jax.random.key(3), 4, GRID, 0.7)
  np.testing.assert_array_equal(a, b)
  assert (np.asarray(a) != np.asarray(c)).any()


def test_tube_mask_rows_differ():
  hidden = np.asarray(masking.tube_mask(jax.random.key(4), 16, GRID, 0.7))
  assert len({row.tobytes() for row in hidden}) == 16


def test_tube_mask_is_jittable_with_static_shape():
  fn = jax.jit(masking.tube_mask, static_argnums=(1, 2, 3))
  np.testing.assert_array_equal(fn(jax.random.key(5), 3, GRID, 0.7), masking.tube_mask(jax.random.key(5), 3, GRID, 0.7))


def test_cube_mask_exact_hidden_count_and_rows_differ():
  grid = (8, 14, 14)
  hidden = np.asarray(_cube_8x14x14(jax.random.key(0)))
  assert (hidden.sum(1) == int(0.4 * 8 * 196)).all()
  assert masking.num_hidden(grid, 0.4, 'cube') == int(0.4 * 8 * 196)
  assert len({row.tobytes() for row in hidden}) == 8


def test_cube_mask_is_made_of_blocks_not_tubes():
  hidden = np.asarray(_cube_8x14x14(jax.random.key(1))).reshape(8, 8, 14, 14)
  # Cubes have random durations: some spatial positions are hidden in some time slots only.
  assert ((hidden.any(1)) & ~(hidden.all(1))).any()
  # Blocks are contiguous: most hidden tokens have a hidden spatial neighbour.
  nb = np.zeros_like(hidden)
  nb[..., 1:, :] |= hidden[..., :-1, :]
  nb[..., :-1, :] |= hidden[..., 1:, :]
  nb[..., :, 1:] |= hidden[..., :, :-1]
  nb[..., :, :-1] |= hidden[..., :, 1:]
  assert (hidden & nb).sum() > 0.9 * hidden.sum()


def test_sample_dispatches_on_kind_and_rejects_unknown():
  cfg = ml_collections.ConfigDict({'kind': 'tube', 'ratio': 0.7})
  np.testing.assert_array_equal(masking.sample(jax.random.key(0), 2, GRID, cfg),
                                masking.tube_mask(jax.random.key(0), 2, GRID, 0.7))
  cfg.kind, cfg.ratio = 'cube', 0.4
  np.testing.assert_array_equal(jax.jit(lambda rng: masking.sample(rng, 8, (8, 14, 14), cfg))(jax.random.key(3)),
                                _cube_8x14x14(jax.random.key(3)))
  cfg.kind = 'random'
  with pytest.raises(ValueError, match='kind'):
    masking.sample(jax.random.key(0), 2, GRID, cfg)
  with pytest.raises(ValueError, match='ratio'):
    masking.tube_mask(jax.random.key(0), 2, GRID, 1.0)


def test_split_indices_partition_tokens_in_ascending_order():
  hidden = masking.tube_mask(jax.random.key(6), 5, GRID, 0.7)
  nm = masking.num_hidden(GRID, 0.7)
  vis, hid = jax.jit(masking.split_indices, static_argnums=1)(hidden, nm)
  vis, hid, h = np.asarray(vis), np.asarray(hid), np.asarray(hidden)
  assert vis.shape == (5, 196 - nm) and hid.shape == (5, nm) and vis.dtype == np.int32
  for b in range(5):
    np.testing.assert_array_equal(vis[b], np.flatnonzero(~h[b]))
    np.testing.assert_array_equal(hid[b], np.flatnonzero(h[b]))
  # Outside jit the count is read from the mask.
  np.testing.assert_array_equal(masking.hidden_indices(hidden), hid)
  np.testing.assert_array_equal(masking.visible_indices(hidden), vis)


def test_split_indices_under_jit_without_count_raises_helpful_error():
  hidden = masking.tube_mask(jax.random.key(0), 2, GRID, 0.7)
  with pytest.raises(ValueError, match='num_hidden'):
    jax.jit(masking.hidden_indices)(hidden)


def test_gather_then_scatter_roundtrip():
  x = jnp.arange(2 * 6 * 3, dtype=jnp.float32).reshape(2, 6, 3)
  idx = jnp.array([[0, 4], [5, 1]], jnp.int32)
  g = masking.gather_tokens(x, idx)
  np.testing.assert_array_equal(g[1, 0], x[1, 5])
  s = np.asarray(masking.scatter_tokens(g, idx, 6, fill=-1.0))
  np.testing.assert_array_equal(s[0, 4], x[0, 4])
  assert (s[0, 1] == -1).all() and (s[1, 5] == x[1, 5]).all()
