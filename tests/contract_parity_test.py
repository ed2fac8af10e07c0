"""The stored-data contract is coded twice (OpenCV/NumPy in data prep and tools, JAX/TF in training): these tests tie
each pair of copies together on the same inputs."""

import jax.numpy as jnp
import numpy as np
import tensorflow as tf

from data_prep import hog as prep_hog
from data_prep import synthetic
from m3video_jax import hog as jax_hog
from m3video_jax.data import clip_ops
from m3video_jax.data import schema


def test_opencv_hog_map_of_data_prep_matches_the_jax_hog_of_training():
  rng = np.random.default_rng(0)
  frames = synthetic.render(synthetic.sample_spec(rng, 4, 96, 64, 3))  # Textured, moving: every orientation occurs.
  for frame in frames:
    gray = prep_hog.to_gray(frame)
    opencv = prep_hog.hog_cell_map(gray)
    jax_map = np.asarray(jax_hog.cell_histograms(jnp.asarray(gray, jnp.float32)[..., None] / 255.0))[..., 0, :]
    assert opencv.shape == jax_map.shape == (8, 12, schema.HOG_BINS)
    # OpenCV's cartToPolar angle is accurate to ~0.3 degrees: votes move between neighbouring bins by that much.
    np.testing.assert_allclose(opencv, jax_map, atol=2e-3 * float(jax_map.max()), rtol=0.02)
    np.testing.assert_allclose(opencv.sum(-1), jax_map.sum(-1), rtol=1e-4, atol=1e-6)  # Same magnitudes.


def test_numpy_trajectory_hog_lookup_of_decode_matches_the_tf_lookup_of_the_input_pipeline():
  rng = np.random.default_rng(1)
  frames, gh, gw, traj_len, starts = 9, 6, 7, 4, (0, 2, 4)
  hog_map = rng.random((frames, gh, gw, schema.HOG_BINS)).astype(np.float32)
  stored, scales = zip(*(schema.quantize_hog(m) for m in hog_map))
  strings = [q.tobytes() for q in stored]  # Stored raw (schema version 3).
  dequantized = np.stack([schema.dequantize_hog(q, s) for q, s in zip(stored, scales)])
  # Displacements that leave the grid on both sides and land between and exactly on cell centres.
  disp = rng.normal(scale=6.0, size=(len(starts), traj_len, gh, gw, 2)).astype(np.float32)
  disp[0, 0] = 8.0
  numpy_hog = schema.trajectory_hog(dequantized, disp, np.asarray(starts))
  x0, y0 = schema.start_positions(gh, gw)
  frame_idx = np.asarray(starts)[:, None] + np.arange(traj_len)[None]
  tf_hog = clip_ops.trajectory_hog(tf.constant(np.asarray(strings, object)[frame_idx]),
                                   tf.constant(np.asarray(scales, np.float32)[frame_idx]),
                                   tf.constant(disp.transpose(0, 2, 3, 1, 4)), tf.constant(x0[0]), tf.constant(y0[:, 0]),
                                   tf.constant(gh), tf.constant(gw), schema.GRID_STEP).numpy()
  np.testing.assert_allclose(tf_hog, numpy_hog.transpose(0, 2, 3, 1, 4), rtol=1e-5, atol=1e-6)
