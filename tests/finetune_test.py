"""Fine-tuning and linear probing: mixup/cutmix targets, multi-view evaluation, frozen encoder, full-size configs,
the classifier's parameter layout, and end-to-end runs on the synthetic motion videos."""
import functools
import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import motion_records
from configs import finetune_hmdb51
from configs import finetune_k400
from configs import finetune_ssv2
from configs import finetune_ucf101
from configs import linear_probe_ssv2
from m3video_jax import checkpointing
from m3video_jax import mixup
from m3video_jax import config_lib
from m3video_jax import evaluation
from m3video_jax import sharding
from m3video_jax import tasks
from m3video_jax import train_lib
from m3video_jax import train_step as train_step_lib
from m3video_jax.models import m3video


def constant_videos(values, size=8):
  """[B, 2, size, size, 3] where example i is the constant values[i]."""
  return jnp.broadcast_to(jnp.asarray(values, jnp.float32)[:, None, None, None, None], (len(values), 2, size, size, 3))


@pytest.mark.parametrize('mixup_alpha,cutmix_alpha', [(0.8, 0.0), (0.0, 1.0), (0.8, 1.0)])
def test_mixup_cutmix_targets_sum_to_one_and_match_pixel_proportions(mixup_alpha, cutmix_alpha):
  values = np.array([1.0, 2.0, 3.0, 4.0, 5.0])  # Example i is pure value i+1 with label i.
  labels = jnp.arange(5)
  fn = jax.jit(functools.partial(mixup.mix_batch, num_classes=7, mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha,
                                 prob=1.0, switch_prob=0.5, smoothing=0.0))
  for seed in range(12):
    video, targets, lam = jax.device_get(fn(jax.random.PRNGKey(seed), constant_videos(values), labels))
    np.testing.assert_allclose(targets.sum(-1), 1.0, rtol=1e-6)
    for i in range(5):
      partner = 4 - i
      # Weight of the partner's label = its share of the pixels: of the area (cutmix) or of the value (mixup).
      if np.all(np.isin(video[i], values)):
        share = np.mean(video[i] == values[partner]) if i != partner else 1 - lam
      else:
        share = (video[i].mean() - values[i]) / (values[partner] - values[i])
      if i != partner:
        np.testing.assert_allclose(targets[i, partner], share, atol=1e-5)
        np.testing.assert_allclose(targets[i, i], 1 - share, atol=1e-5)
      # Cutmix pastes the same box on every frame.
      np.testing.assert_array_equal(video[i, 0], video[i, 1])
  smoothed = mixup.smooth_one_hot(jnp.array([2]), 5, 0.1)
  np.testing.assert_allclose(smoothed, [[0.02, 0.02, 0.92, 0.02, 0.02]], rtol=1e-6)


def test_multi_view_evaluation_averages_softmax_per_video():
  """A fake model whose per-view logits are written in the clip; accuracies follow by hand."""
  mesh = sharding.make_mesh(config_lib.classification_base().mesh)
  # 6 classes; logits of a view sit in video[0, 0, :6, 0].
  views = {  # video index -> (label, per-view logits)
      # softmax mean -> class 0 (label, correct); a logit mean would give class 1.
      0: (0, [[0, 8, 0, 0, 0, 0], [2, 0, 0, 0, 0, 0], [2, 0, 0, 0, 0, 0]]),
      # class 1 wins, the label (2) is second: top-5 only.
      1: (2, [[0, 0, 1, 0, 0, 0], [0, 0, 1, 0, 0, 0], [0, 5, 0, 0, 0, 0]]),
      # the label (5) is ranked last: neither.
      2: (5, [[6, 5, 4, 3, 2, -9], [6, 5, 4, 3, 2, -9], [6, 5, 4, 3, 2, 1]]),
  }
  rows = [(vid, label, logits) for vid, (label, all_logits) in views.items() for logits in all_logits]
  rows = rows[::-1]  # views of a video need not be adjacent or in one batch

  def batches():
    for start in range(0, 16, 8):
      video = np.zeros((8, 2, 8, 8, 3), np.float32)
      index, label, mask = np.zeros(8, np.int64), np.zeros(8, np.int32), np.zeros(8, bool)
      for j, (vid, lab, logits) in enumerate(rows[start:start + 8]):
        video[j, 0, 0, :6, 0] = logits
        index[j], label[j], mask[j] = vid, lab, True
      video[~mask, 0, 0, :6, 0] = [0, 0, 0, 0, 0, 99]  # padding rows must not count
      yield {'video': video, 'label': label, 'video_index': index, '_mask': mask}

  predict = jax.jit(lambda params, video: jax.nn.softmax(video[:, 0, 0, :6, 0] * params, axis=-1))
  scores, labels, counts = evaluation.video_scores(predict, jnp.float32(1.0), batches(), num_videos=3, num_classes=6,
                                                   mesh=mesh)
  np.testing.assert_array_equal(counts, [3, 3, 3])
  np.testing.assert_array_equal(labels, [0, 2, 5])
  expected0 = np.mean(jax.nn.softmax(np.array(views[0][1], np.float32), axis=-1), axis=0)
  np.testing.assert_allclose(scores[0], expected0, rtol=1e-5)
  results = evaluation.summarize(scores, labels, counts)
  np.testing.assert_allclose(results['top1'], 100 / 3)
  np.testing.assert_allclose(results['top5'], 200 / 3)
  assert results['num_videos'] == 3


def classification_batch(config, seed):
  rng = np.random.default_rng(seed)
  d = config.data
  return {'video': rng.normal(size=(d.batch_size, d.num_frames, d.res, d.res, 3)).astype(np.float32),
          'label': rng.integers(0, config.model.num_classes, d.batch_size).astype(np.int32)}


def run_steps(config, num_steps):
  task = tasks.get_task(config)
  tx = tasks.get_task(config).optimizer()
  state = train_lib.init_state(task, tx, jax.random.PRNGKey(0))
  before = jax.device_get(state.params)
  step = jax.jit(functools.partial(train_step_lib.train_step, loss_fn=task.loss_fn, tx=tx,
                                   lr_schedule=tasks.get_task(config).lr_schedule()))
  for i in range(num_steps):
    state, metrics = step(state, classification_batch(config, i))
  return before, jax.device_get(state.params), jax.device_get(metrics)


def test_linear_probing_changes_only_the_head_and_sees_no_encoder_gradient():
  config = linear_probe_ssv2.get_config('tiny')
  before, after, metrics = run_steps(config, 2)
  assert np.isfinite(metrics['train/loss'])
  changed = jax.tree.map(lambda a, b: bool(np.any(a != b)), before, after)
  assert all(jax.tree.leaves(changed['head']))
  assert not any(jax.tree.leaves(changed['encoder'])) and not any(jax.tree.leaves(changed['fc_norm']))
  config.aug.update(mixup_alpha=0.0, cutmix_alpha=0.0)  # (cheaper to compile; mixing does not matter here)
  task = tasks.get_task(config)
  assert task.model.freeze_encoder and config.model.drop_path == 0.0
  grads = jax.jit(jax.grad(lambda p, b: task.loss_fn(p, b, jax.random.PRNGKey(1))[0]))(
      before, classification_batch(config, 0))
  assert not any(np.any(g != 0) for g in jax.tree.leaves(grads['encoder']))
  # Frozen, eval-mode features: the logits do not depend on the (drop path) rng.
  apply = jax.jit(lambda p, v, rng: task.model.apply({'params': p}, v, train=True, rngs={'dropout': rng}))
  video = classification_batch(config, 3)['video']
  logits = [apply(before, video, jax.random.PRNGKey(k)) for k in range(2)]
  np.testing.assert_array_equal(logits[0], logits[1])


def test_finetuning_trains_the_encoder_with_drop_path():
  config = finetune_ssv2.get_config('tiny')
  before, after, _ = run_steps(config, 2)  # The lr warms up from 0 at step 0.
  assert all(jax.tree.leaves(jax.tree.map(lambda a, b: bool(np.any(a != b)), before['encoder'], after['encoder'])))
  task = tasks.get_task(config)
  apply = jax.jit(lambda p, v, rng: task.model.apply({'params': p}, v, train=True, rngs={'dropout': rng}))
  video = classification_batch(config, 3)['video']
  logits = [apply(before, video, jax.random.PRNGKey(k)) for k in range(2)]
  assert config.model.drop_path == 0.1 and not np.allclose(logits[0], logits[1])


def test_classifier_layout_and_init_from_a_pretraining_checkpoint(tmp_path):
  import orbax.checkpoint as ocp

  config = finetune_ssv2.get_config('tiny')
  params = jax.device_get(tasks.get_task(config).init_params(jax.random.PRNGKey(0)))
  assert set(params) == {'encoder', 'fc_norm', 'head'} and 'norm' not in params['encoder']
  assert set(params['fc_norm']) == {'scale', 'bias'} and set(params['head']) == {'kernel', 'bias'}
  np.testing.assert_array_equal(params['head']['bias'], 0)
  assert 0 < np.std(params['head']['kernel']) < 1e-4  # N(0, .02) x 0.001
  pretrainer = m3video.M3VideoPretrainer(encoder_variant='mu', patch_size=(2, 16, 16), decoder_width=32,
                                         decoder_depth=1, decoder_heads=2, output_dims=(8,))
  video = jnp.zeros((1, 4, 32, 32, 3))
  hidden = jnp.array([[True, False, True, False, True, False, True, False]])
  pretrained = pretrainer.init(jax.random.PRNGKey(5), video, hidden, train=False, num_hidden=4)['params']
  pretrained = jax.device_get(pretrained)
  with ocp.CheckpointManager(str(tmp_path / 'pretrain' / 'checkpoints')) as manager:
    manager.save(7, args=ocp.args.StandardSave({'params': pretrained, 'step': 7}))
  loaded = checkpointing.load_init_params(str(tmp_path / 'pretrain'), params)
  encoder = dict(pretrained['encoder'])
  del encoder['norm']  # The mean-pooling classifier has no final norm (reference: Identity).
  jax.tree.map(np.testing.assert_array_equal, loaded['encoder'], encoder)
  jax.tree.map(np.testing.assert_array_equal, loaded['head'], params['head'])


FULL_CONFIGS = [finetune_ssv2, finetune_k400, finetune_ucf101, finetune_hmdb51, linear_probe_ssv2]


@pytest.mark.parametrize('module', FULL_CONFIGS, ids=lambda m: m.__name__.split('.')[-1])
def test_full_size_configs_validate_and_build_abstractly(module):
  for arg in (None, 'recipe=reference'):
    config = module.get_config(arg)
    config.data.train_files, config.data.eval_files = '/data/train-*', '/data/val-*'
    tasks.validate(config, num_devices=8)
  assert config.init_from == '' and config.model.encoder == 'B'
  for name in ('seed', 'total_steps', 'log_every_steps', 'checkpoint_every_steps'):
    assert name in config
  assert config.data.batch_size == 1024 and config.data.repeated_aug == 2
  task = tasks.get_task(config)
  tx = tasks.get_task(config).optimizer()
  abstract = jax.eval_shape(functools.partial(train_lib.init_state, task, tx), jax.random.PRNGKey(0))
  assert abstract.params['head']['kernel'].shape == (768, config.model.num_classes)
  clip = (config.data.num_frames, config.data.res, config.data.res, 3)
  assert clip == (16, 224, 224, 3)
  logits = jax.eval_shape(lambda p, v: task.model.apply({'params': p}, v, train=False), abstract.params,
                          jax.ShapeDtypeStruct((2,) + clip, jnp.float32))
  assert logits.shape == (2, config.model.num_classes)


@pytest.mark.parametrize('module', [finetune_k400, linear_probe_ssv2], ids=['finetune', 'linear_probe'])
def test_full_size_train_step_lowers_on_cpu(module):
  config = module.get_config()
  config.data.train_files, config.data.eval_files = '/data/train-*', '/data/val-*'
  mesh = sharding.make_mesh(config.mesh)
  task = tasks.get_task(config)
  tx = tasks.get_task(config).optimizer()
  abstract = jax.eval_shape(functools.partial(train_lib.init_state, task, tx), jax.random.PRNGKey(0))
  state_shd = sharding.state_sharding(abstract, mesh)
  batch_shd = sharding.batch_sharding(mesh)
  d = config.data
  batch = {'video': jax.ShapeDtypeStruct((d.batch_size, d.num_frames, d.res, d.res, 3), jnp.float32),
           'label': jax.ShapeDtypeStruct((d.batch_size,), jnp.int32)}
  lowered = train_lib.make_step_fn(task, tx, config, state_shd, batch_shd, mesh).lower(abstract, batch)
  assert '1024x16x224x224x3' in lowered.as_text()


def small_config(tmp_path, module=finetune_ssv2, arg='tiny'):
  config = module.get_config(arg)
  config.data.train_files = motion_records.write_motion_shards(tmp_path / 'train', num_videos=8, size=48, frames=12)
  config.data.eval_files = motion_records.write_motion_shards(tmp_path / 'val', num_videos=4, size=48, frames=12,
                                                              prefix='val', num_shards=1)
  return config


def test_tiny_finetune_runs_evaluates_and_writes_results(tmp_path, caplog):
  config = small_config(tmp_path)
  config.total_steps, config.eval_every_steps = 2, 0  # One evaluation, after the last step.
  with caplog.at_level(logging.INFO):
    out = train_lib.train_and_evaluate(config, str(tmp_path / 'run'))
  for key in ('val/top1', 'val/top5', 'eval/top1', 'eval/top5', 'eval/loss', 'train/loss', 'train/top1'):
    assert np.isfinite(out[key]), key
  assert 0 <= out['eval/top1'] <= out['eval/top5'] <= 100
  results = json.load(open(tmp_path / 'run' / evaluation.RESULTS_FILE))
  assert results['step'] == config.total_steps and results['num_videos'] == 4
  assert (results['temporal_views'], results['spatial_views']) == (2, 3)
  np.testing.assert_allclose(results['top1'], out['eval/top1'])
  assert any(f.startswith('events.out.tfevents') for f in os.listdir(tmp_path / 'run'))
  # The closing summary's last line is the test result against chance (1/num_classes) and names the encoder.
  last = caplog.records[-1].getMessage()
  chance = 100.0 / config.model.num_classes
  assert last.startswith(f'finetune result: test top-1 {results["top1"]:.1f} % on 4 held-out videos (2x3 views; '
                         f'chance {chance:.1f} %, so {results["top1"] - chance:+.1f} points)'), last
  assert last.endswith('encoder: random init'), last


def test_evaluate_cli_tests_a_run_again_with_other_views_and_refuses_a_pretraining_run(tmp_path, capsys):
  from m3video_jax import evaluate
  from tests.train_test import tiny_config

  config = small_config(tmp_path)
  config.total_steps, config.eval_every_steps = 2, 0
  train_lib.train_and_evaluate(config, str(tmp_path / 'run'))
  capsys.readouterr()
  assert evaluate.main([f'--workdir={tmp_path / "run"}', '--views=1x1']) == 0
  out = capsys.readouterr().out.splitlines()
  printed = json.loads(out[0])
  results = json.load(open(tmp_path / 'run' / evaluation.RESULTS_FILE))
  assert printed['step'] == results['step'] == 2 and (results['temporal_views'], results['spatial_views']) == (1, 1)
  assert results['num_videos'] == 4 and printed['top1'] == results['top1']
  assert out[1].startswith(f'test of {tmp_path / "run"} step 2: top-1') and out[-1].startswith('  next: tensorboard')
  pretrain = tmp_path / 'pretrain'
  os.makedirs(pretrain)
  (pretrain / 'config.json').write_text(tiny_config().to_json())
  assert evaluate.main([f'--workdir={pretrain}']) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and 'is a pretraining run' in err[0], err
