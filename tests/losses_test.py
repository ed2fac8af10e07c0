"""Tests for m3video_jax/losses.py."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from m3video_jax import losses

DIMS = {'position': 1, 'shape': 1}


def _example():
  target = jnp.array([[[1.0, 2.0], [5.0, 5.0], [3.0, -1.0]]])  # [B=1, N=3, D=2]
  weight = jnp.array([[[1.0, 1.0], [1.0, 1.0], [0.0, 1.0]]])
  hidden = jnp.array([[True, False, True]])
  return target, weight, hidden


def test_zero_prediction_gives_hand_computed_loss_and_parts():
  target, weight, hidden = _example()
  pred = jnp.zeros((1, 2, 2))
  loss, m = losses.masked_l2(pred, target, weight, hidden, DIMS)
  # Hidden tokens 0 and 2; counted squared errors: 1, 4 (token 0) and 1 (token 2, dim 1); token 2's dim 0 is excluded.
  np.testing.assert_allclose(loss, (1 + 4 + 1) / 3)
  np.testing.assert_allclose(m['loss_position'], 1 / 1)
  np.testing.assert_allclose(m['loss_shape'], (4 + 1) / 2)
  np.testing.assert_allclose(m['valid_fraction'], 1 / 2)


def test_visible_tokens_do_not_count():
  target, weight, hidden = _example()
  pred = jnp.zeros((1, 2, 2))
  loss1, _ = losses.masked_l2(pred, target, weight, hidden, DIMS)
  loss2, _ = losses.masked_l2(pred, target.at[0, 1].set(1e6), weight, hidden, DIMS)
  np.testing.assert_allclose(loss1, loss2)


def test_excluded_elements_give_no_loss_and_no_gradient_even_if_nan():
  target, weight, hidden = _example()
  target = target.at[0, 2, 0].set(jnp.nan)
  loss, grad = jax.value_and_grad(lambda p: losses.masked_l2(p, target, weight, hidden, DIMS)[0])(jnp.zeros((1, 2, 2)))
  np.testing.assert_allclose(loss, 2.0)
  assert np.isfinite(np.asarray(grad)).all() and grad[0, 1, 0] == 0


def test_nothing_counted_gives_zero_not_nan():
  target, _, hidden = _example()
  loss, m = losses.masked_l2(jnp.ones((1, 2, 2)), target, jnp.zeros_like(target), hidden, DIMS)
  assert float(loss) == 0.0 and float(m['loss_position']) == 0.0 and float(m['valid_fraction']) == 0.0


def test_single_part_target_metrics_use_its_name():
  target, weight, hidden = _example()
  loss, m = losses.masked_l2(jnp.zeros((1, 2, 2)), target, jnp.ones_like(weight), hidden, {'pixel': 2})
  assert set(m) == {'loss_pixel', 'zero_pixel', 'pixel_vs_zero', 'valid_fraction'}
  np.testing.assert_allclose(m['loss_pixel'], loss)
  np.testing.assert_allclose(m['valid_fraction'], 1.0)


def test_mismatched_part_dims_raise():
  target, weight, hidden = _example()
  with pytest.raises(ValueError, match='part_dims'):
    losses.masked_l2(jnp.zeros((1, 2, 2)), target, weight, hidden, {'position': 3})


def test_zero_baseline_and_ratio_are_hand_computed():
  target, weight, hidden = _example()
  pred = jnp.array([[[0.5, 1.0], [2.0, 3.0]]])  # Hidden tokens 0 and 2.
  _, m = losses.masked_l2(pred, target, weight, hidden, DIMS)
  # position: only token 0 counts (token 2's dim 0 is excluded): zero loss 1^2, loss (1 - 0.5)^2.
  np.testing.assert_allclose(m['zero_position'], 1.0)
  np.testing.assert_allclose(m['loss_position'], 0.25)
  np.testing.assert_allclose(m['position_vs_zero'], 0.25)
  # shape: tokens 0 and 2: zero loss (2^2 + (-1)^2) / 2, loss ((2 - 1)^2 + (-1 - 3)^2) / 2.
  np.testing.assert_allclose(m['zero_shape'], 2.5)
  np.testing.assert_allclose(m['loss_shape'], 8.5)
  np.testing.assert_allclose(m['shape_vs_zero'], 8.5 / 2.5)


def test_zero_prediction_has_ratio_one_and_no_gradient_through_diagnostics():
  target, weight, hidden = _example()
  _, m = losses.masked_l2(jnp.zeros((1, 2, 2)), target, weight, hidden, DIMS)
  np.testing.assert_allclose([m['position_vs_zero'], m['shape_vs_zero']], [1.0, 1.0])
  grad = jax.grad(lambda p: losses.masked_l2(p, target, weight, hidden, DIMS)[1]['zero_shape'])(jnp.ones((1, 2, 2)))
  assert not np.asarray(grad).any()


def test_moving_and_static_split_is_hand_computed():
  target, weight, hidden = _example()
  moving = jnp.array([[False, True, True]])  # Hidden token 0 static, hidden token 2 moving; token 1 is visible.
  pred = jnp.array([[[0.5, 1.0], [2.0, 3.0]]])
  _, m = losses.masked_l2(pred, target, weight, hidden, DIMS, moving=moving)
  np.testing.assert_allclose(m['moving_fraction'], 0.5)
  # shape part: static = token 0 (target 2, pred 1), moving = token 2 (target -1, pred 3).
  np.testing.assert_allclose([m['loss_shape_static'], m['zero_shape_static']], [1.0, 4.0])
  np.testing.assert_allclose([m['loss_shape_moving'], m['zero_shape_moving']], [16.0, 1.0])
  np.testing.assert_allclose([m['shape_static_vs_zero'], m['shape_moving_vs_zero']], [0.25, 16.0])
  # position part: the moving token's only element is excluded, so the moving group is empty: 0 loss, NaN ratio.
  np.testing.assert_allclose([m['loss_position_moving'], m['zero_position_moving']], [0.0, 0.0])
  assert np.isnan(m['position_moving_vs_zero'])
  np.testing.assert_allclose(m['position_static_vs_zero'], 0.25)
  # The split does not change the loss or the overall parts.
  _, m_plain = losses.masked_l2(pred, target, weight, hidden, DIMS)
  for k, v in m_plain.items():
    np.testing.assert_allclose(m[k], v)


def test_balanced_parts_loss_is_the_mean_of_the_part_losses():
  target, weight, hidden = _example()
  pred = jnp.array([[[0.5, 1.0], [2.0, 3.0]]])
  loss, m = losses.masked_l2(pred, target, weight, hidden, DIMS, balance_parts=True)
  np.testing.assert_allclose(loss, (0.25 + 8.5) / 2)  # Parts as in test_zero_baseline_and_ratio_are_hand_computed.
  plain, _ = losses.masked_l2(pred, target, weight, hidden, DIMS)
  np.testing.assert_allclose(plain, (0.25 + 2 * 8.5) / 3)  # 1 position and 2 shape elements counted.
  # A part with nothing counted in the batch weighs nothing: the loss is the other part's.
  no_position = weight.at[..., 0].set(0.0)
  loss, m = losses.masked_l2(pred, target, no_position, hidden, DIMS, balance_parts=True)
  assert float(m['loss_position']) == 0.0
  np.testing.assert_allclose(loss, m['loss_shape'])
