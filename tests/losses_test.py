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
  assert set(m) == {'loss_pixel', 'valid_fraction'}
  np.testing.assert_allclose(m['loss_pixel'], loss)
  np.testing.assert_allclose(m['valid_fraction'], 1.0)


def test_mismatched_part_dims_raise():
  target, weight, hidden = _example()
  with pytest.raises(ValueError, match='part_dims'):
    losses.masked_l2(jnp.zeros((1, 2, 2)), target, weight, hidden, {'position': 3})
