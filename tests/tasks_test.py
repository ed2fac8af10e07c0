"""Tests for m3video_jax/tasks.py: the pretraining forward pass and the static-input toy experiment (paper §3.1)."""
import jax
import numpy as np
import pytest

from m3video_jax import tasks
from m3video_jax import targets
from tests.train_test import random_batch, tiny_config


def test_static_clip_repeats_one_frame_of_each_clip():
  video = np.random.default_rng(0).normal(size=(3, 4, 8, 8, 3)).astype(np.float32)
  out = np.asarray(tasks.static_clip(jax.random.key(1), video))
  for b in range(3):
    frames = [f for f in range(4) if np.array_equal(out[b, 0], video[b, f])]
    assert len(frames) == 1  # Frame 0 of the static clip is one of the clip's own frames ...
    np.testing.assert_array_equal(out[b], np.broadcast_to(out[b, :1], out[b].shape))  # ... repeated.


def test_static_input_changes_the_frames_the_model_sees_but_not_the_targets():
  for kind in ('trajectory', 'pixel'):
    real = tasks.get_task(tiny_config(**{'target.kind': kind}))
    static = tasks.get_task(tiny_config(**{'target.kind': kind, 'data.static_input': True}))
    batch = random_batch(real.config, seed=3)
    params = real.init_params(jax.random.key(0))
    rng = jax.random.key(5)
    out_real = real.forward(params, batch, rng, train=False)
    out_static = static.forward(params, batch, rng, train=False)
    seen = np.asarray(out_static['model_video'])
    np.testing.assert_array_equal(seen, np.broadcast_to(seen[:, :1], seen.shape))  # Every input frame identical.
    assert not np.array_equal(np.asarray(out_real['model_video']), seen)
    np.testing.assert_array_equal(np.asarray(out_real['model_video']), np.asarray(out_real['video']))
    # Targets, weights, masks and moving tokens are those of the real clip.
    want_t, want_w = targets.compute(dict(batch, video=out_real['video']), real.config.target)
    for key in ('target', 'weight', 'hidden', 'moving'):
      np.testing.assert_array_equal(np.asarray(out_static[key]), np.asarray(out_real[key]))
    np.testing.assert_array_equal(np.asarray(out_static['target']), np.asarray(want_t))
    np.testing.assert_array_equal(np.asarray(out_static['weight']), np.asarray(want_w))
    assert not np.allclose(np.asarray(out_static['pred']), np.asarray(out_real['pred']))


@pytest.mark.parametrize('config_name', ['pretrain_ssv2', 'finetune_ssv2', 'linear_probe_ssv2', 'attentive_probe_ssv2'])
def test_every_task_has_the_members_of_the_task_protocol(config_name):
  import importlib

  config = importlib.import_module(f'configs.{config_name}').get_config('tiny')
  task = tasks.get_task(config)
  assert isinstance(task, tasks.Task)
  members = [name for name in dir(tasks.Task) if not name.startswith('_')]
  assert len(members) >= 16 and not [name for name in members if not hasattr(type(task), name)]
