"""Tests for m3video_jax/hog.py."""
import jax
import numpy as np
import pytest

from m3video_jax import hog


def _ramp(angle_deg: float, size: int = 32) -> np.ndarray:
  """Image whose gradient points at `angle_deg` (from +x towards +y, rows downwards) everywhere."""
  y, x = np.mgrid[0:size, 0:size].astype(np.float32)
  a = np.deg2rad(angle_deg)
  return (np.cos(a) * x + np.sin(a) * y)[..., None] * 0.01


def _interior(cells: np.ndarray) -> np.ndarray:
  return cells[1:-1, 1:-1, 0]  # Cells away from the replicate-padded border.


@pytest.mark.parametrize('angle, bins', [(0.0, {0: 1.0}), (40.0, {2: 1.0}), (50.0, {2: 0.5, 3: 0.5}),
                                         (100.0, {5: 1.0}), (170.0, {8: 0.5, 0: 0.5}), (-40.0, {7: 1.0})])
def test_gradient_at_known_angle_lands_in_right_bins(angle, bins):
  cells = _interior(np.asarray(hog.cell_histograms(_ramp(angle))))
  total = cells.sum(-1, keepdims=True)
  expected = np.zeros(9)
  for b, frac in bins.items():
    expected[b] = frac
  np.testing.assert_allclose(cells / total, np.broadcast_to(expected, cells.shape), atol=1e-4)


def test_step_edge_votes_its_orientation_with_sobel_magnitude():
  img = np.zeros((16, 16, 1), np.float32)
  img[:, 9:] = 1.0  # Vertical edge between columns 8 and 9: horizontal gradient, orientation 0.
  cells = np.asarray(hog.cell_histograms(img))
  assert cells.shape == (2, 2, 1, 9)
  # Columns 8 and 9 (cell column 1) each see gx = 4 (Sobel weights 1 + 2 + 1) in all 8 rows of a cell.
  np.testing.assert_allclose(cells[:, 1, 0, 0], 2 * 8 * 4.0 / 64, rtol=1e-6)
  np.testing.assert_allclose(cells[:, 0, 0], 0.0, atol=1e-7)
  np.testing.assert_allclose(cells[:, 1, 0, 1:], 0.0, atol=1e-7)


def test_jax_hog_matches_numpy_implementation():
  rng = np.random.default_rng(0)
  images = rng.normal(size=(2, 16, 24, 3)).astype(np.float32)
  got = np.asarray(jax.jit(hog.cell_histograms)(images))
  want = hog.cell_histograms_numpy(images)
  assert got.shape == want.shape == (2, 2, 3, 3, 9)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_hog_rejects_sizes_that_are_not_whole_cells():
  with pytest.raises(ValueError, match='cell_size'):
    hog.cell_histograms(np.zeros((12, 16, 1), np.float32))
