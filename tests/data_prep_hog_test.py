"""HOG cell maps of data_prep: bins of oriented edges, flip symmetry (docs/design.md §3.4), agreement with a plain
reference."""
import numpy as np
import pytest

from data_prep import hog


def _grating(angle_deg, h=64, w=64, period=10.0):
  """Sinusoidal grating whose intensity gradient points along `angle_deg` (x right, y down), uint8."""
  ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
  a = np.deg2rad(angle_deg)
  return (127.5 + 100 * np.sin(2 * np.pi * (xs * np.cos(a) + ys * np.sin(a)) / period)).astype(np.uint8)


def _reference_hog(gray):
  """Straightforward per-pixel loop version of the documented definition (float64)."""
  img = gray.astype(np.float64) / 255.0
  p = np.pad(img, 1, mode='edge')
  # 3x3 Sobel along x and y.
  gx = (p[:-2, 2:] + 2 * p[1:-1, 2:] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[1:-1, :-2] + p[2:, :-2])
  gy = (p[2:, :-2] + 2 * p[2:, 1:-1] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[:-2, 1:-1] + p[:-2, 2:])
  gh, gw = gray.shape[0] // 8, gray.shape[1] // 8
  out = np.zeros((gh, gw, 9))
  for y in range(gh * 8):
    for x in range(gw * 8):
      mag = np.hypot(gx[y, x], gy[y, x])
      u = (np.degrees(np.arctan2(gy[y, x], gx[y, x])) % 180.0) / 20.0
      lo = int(np.floor(u))
      w_hi = u - lo
      out[y // 8, x // 8, lo % 9] += mag * (1 - w_hi)
      out[y // 8, x // 8, (lo + 1) % 9] += mag * w_hi
  return out / 64.0


@pytest.mark.parametrize('bin_index', range(9))
def test_oriented_grating_lands_in_its_bin(bin_index):
  cells = hog.hog_cell_map(_grating(20.0 * bin_index))
  assert cells.shape == (8, 8, 9)
  total = cells.sum(axis=(0, 1))
  assert int(np.argmax(total)) == bin_index
  # Linear voting puts (almost) everything into the bin and a little into its neighbours (curvature of sin).
  assert total[bin_index] / total.sum() > 0.8


def test_edge_between_two_bins_splits_votes_linearly():
  # A gradient at 50° = bin 2.5: half to bin 2, half to bin 3.
  total = hog.hog_cell_map(_grating(50.0)).sum(axis=(0, 1))
  share = total / total.sum()
  assert abs(share[2] - share[3]) < 0.08
  assert share[2] + share[3] > 0.85


def test_vertical_step_edge_is_bin_0_horizontal_is_bin_4_5():
  img = np.zeros((32, 32), np.uint8)
  img[:, 16:] = 200  # intensity changes along x: gradient at 0°
  cells = hog.hog_cell_map(img)
  assert np.argmax(cells[1, 1]) == 0 and cells[1, 1, 0] > 0 and np.allclose(cells[1, 1, 1:], 0, atol=1e-6)
  assert np.allclose(cells[:, 0], 0) and np.allclose(cells[:, 3], 0)  # flat cells
  cells_h = hog.hog_cell_map(img.T.copy())  # gradient at 90° = bin 4.5
  np.testing.assert_allclose(cells_h[1, 1, 4], cells_h[1, 1, 5], rtol=1e-2)


def test_flip_mirrors_bins_as_design_says():
  rng = np.random.default_rng(0)
  img = (rng.random((48, 64)) * 255).astype(np.uint8)
  cells = hog.hog_cell_map(img)
  flipped = hog.hog_cell_map(img[:, ::-1].copy())
  # Grid mirrored, bin b -> (9 - b) mod 9. OpenCV's cartToPolar angles are accurate to ~0.3°, hence the tolerance.
  np.testing.assert_allclose(flipped, hog.flip_bins(cells)[:, ::-1], rtol=0, atol=0.02 * cells.max())
  assert list((9 - np.arange(9)) % 9) == [0, 8, 7, 6, 5, 4, 3, 2, 1]


def test_matches_plain_reference_implementation():
  rng = np.random.default_rng(1)
  img = (rng.random((24, 40)) * 255).astype(np.uint8)
  np.testing.assert_allclose(hog.hog_cell_map(img), _reference_hog(img), rtol=0, atol=0.01 * _reference_hog(img).max())


def test_ignores_pixels_beyond_last_full_cell_and_handles_tiny_frames():
  img = (np.random.default_rng(2).random((21, 30)) * 255).astype(np.uint8)
  assert hog.hog_cell_map(img).shape == (2, 3, 9)
  assert hog.hog_cell_map(np.zeros((5, 5), np.uint8)).shape == (0, 0, 9)
  with pytest.raises(ValueError, match='gray must be'):
    hog.hog_cell_map(np.zeros((8, 8, 3), np.uint8))
