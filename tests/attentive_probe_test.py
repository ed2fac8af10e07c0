"""Attentive probing (`config.task='attentive_probe'`): what trains and what stays frozen, that the pooler attends, the
step on 1 and 8 devices, the configs, and a run on the synthetic motion videos."""
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import attentive_probe_demo
from configs import attentive_probe_k400
from configs import attentive_probe_ssv2
from m3video_jax import evaluation
from m3video_jax import tasks
from m3video_jax import train_lib
from m3video_jax.data import schema
from m3video_jax.models import classifier
from m3video_jax.models import layers
import finetune_test
import train_test


def test_probe_trains_pooler_and_head_and_leaves_the_encoder_bitwise_unchanged_without_optimizer_state():
  config = attentive_probe_ssv2.get_config('tiny')
  config.aug.update(mixup_alpha=0.0, cutmix_alpha=0.0)
  before, after, metrics = finetune_test.run_steps(config, 3)
  assert np.isfinite(metrics['train/loss'])
  assert set(before) == {'encoder', 'pooler', 'head'}  # No fc_norm: the pooler replaces mean + norm.
  changed = jax.tree.map(lambda a, b: bool(np.any(a != b)), before, after)
  assert all(jax.tree.leaves(changed['pooler'])) and all(jax.tree.leaves(changed['head']))
  jax.tree.map(np.testing.assert_array_equal, after['encoder'], before['encoder'])
  task = tasks.get_task(config)
  assert task.model.freeze_encoder and task.model.pooling == 'attentive' and config.model.drop_path == 0.0
  # Adam's moments exist for the pooler and head only.
  state = jax.eval_shape(task.optimizer().init, before)
  trained = sum(x.size for k in ('pooler', 'head') for x in jax.tree.leaves(before[k]))
  moments = sum(x.size for x in jax.tree.leaves(state) if x.ndim > 0)
  assert moments == 2 * trained, (moments, trained)
  grads = jax.jit(jax.grad(lambda p, b: task.loss_fn(p, b, jax.random.PRNGKey(1))[0]))(
      before, finetune_test.classification_batch(config, 0))
  assert not any(np.any(g != 0) for g in jax.tree.leaves(grads['encoder']))
  assert all(np.any(g != 0) for g in jax.tree.leaves(grads['pooler']))


def _one_token_task(rng, n, num_tokens=12, width=16):
  """Tokens `[n, num_tokens, width]` whose label (0/1) is carried by one token at a random position: that token has
  a marker feature 1 and the label's sign on feature 1; another token carries the opposite sign, so the mean of the
  tokens is the same for both labels. Every other feature is label-independent noise."""
  x = rng.normal(size=(n, num_tokens, width)).astype(np.float32)
  y = rng.integers(0, 2, n)
  sign = 2.0 * y - 1.0
  x[:, :, 0] = 0.0
  pos = rng.permuted(np.tile(np.arange(num_tokens), (n, 1)), axis=1)[:, :2]
  rows = np.arange(n)
  x[:, :, 1] = 0.0
  x[rows, pos[:, 0], 0] = 1.0
  x[rows, pos[:, 0], 1] = 2.0 * sign
  x[rows, pos[:, 1], 1] = -2.0 * sign
  return x, y.astype(np.int32)


class _Probe(nn.Module):
  """The classifier's two poolings and head on given tokens."""
  pooling: str

  @nn.compact
  def __call__(self, tokens):
    if self.pooling == 'attentive':
      pooled = classifier.AttentivePooler(num_heads=2, name='pooler')(tokens).mean(axis=1)
    else:
      pooled = layers.layer_norm('fc_norm', jnp.float32)(tokens.mean(axis=1))
    return nn.Dense(2, name='head')(pooled)


def _train_and_test(pooling, steps=400):
  rng = np.random.default_rng(0)
  train_x, train_y = _one_token_task(rng, 512)
  test_x, test_y = _one_token_task(rng, 512)
  model = _Probe(pooling)
  params = model.init(jax.random.PRNGKey(0), train_x[:2])
  tx = optax.adam(3e-3)
  opt = tx.init(params)

  @jax.jit
  def step(params, opt, x, y):
    loss, g = jax.value_and_grad(
        lambda p: optax.softmax_cross_entropy_with_integer_labels(model.apply(p, x), y).mean())(params)
    updates, opt = tx.update(g, opt)
    return optax.apply_updates(params, updates), opt, loss

  for i in range(steps):
    idx = np.random.default_rng(i).integers(0, len(train_x), 64)
    params, opt, _ = step(params, opt, train_x[idx], train_y[idx])
  return float(np.mean(np.argmax(model.apply(params, test_x), -1) == test_y))


def test_the_attentive_pooler_reads_the_one_token_that_carries_the_label_where_mean_pooling_cannot():
  attentive, mean = _train_and_test('attentive'), _train_and_test('mean')
  assert attentive >= 0.95, attentive
  assert mean <= 0.6, mean  # The mean of the tokens holds no label information: chance.


def test_probe_step_same_loss_and_grads_on_1_and_8_devices():
  config = attentive_probe_ssv2.get_config('tiny')
  config.aug.update(mixup_alpha=0.0, cutmix_alpha=0.0)
  params = jax.device_get(tasks.get_task(config).init_params(jax.random.PRNGKey(0)))
  params['pooler']['query'] = params['pooler']['query'] + 0.5  # Away from the init's near-uniform attention.
  train_test.assert_same_loss_and_grads_on_1_and_8_devices(config, params, finetune_test.classification_batch(config, 0),
                                                           jax.random.PRNGKey(1))


@pytest.mark.parametrize('module', [attentive_probe_ssv2, attentive_probe_k400], ids=['ssv2', 'k400'])
def test_full_size_configs_validate_and_carry_the_probe_recipe(module):
  config = module.get_config()
  config.data.train_files, config.data.eval_files = '/data/train-*', '/data/val-*'
  tasks.validate(config, num_devices=8)
  assert config.task == 'attentive_probe' and config.model.encoder == 'B' and config.model.drop_path == 0.0
  assert (config.optim.base_lr, config.optim.weight_decay, config.optim.min_lr) == (1e-3, 0.01, 0.0)
  assert config.optim.warmup_steps == 0 and config.aug.mixup_alpha == config.aug.cutmix_alpha == 0.0
  task = tasks.get_task(config)
  abstract = jax.eval_shape(task.init_params, jax.random.PRNGKey(0))
  assert abstract['pooler']['query'].shape == (1, 768) and abstract['head']['kernel'].shape == (768,
                                                                                                config.model.num_classes)
  with config.unlocked():
    config.model.pool_heads = 5
  with pytest.raises(tasks.config_lib.ConfigError, match='model.pool_heads'):
    tasks.validate(config, num_devices=8)


def test_tiny_attentive_probe_runs_evaluates_and_writes_results(tmp_path):
  config = finetune_test.small_config(tmp_path, attentive_probe_ssv2)
  config.total_steps, config.eval_every_steps = 2, 0
  out = train_lib.train_and_evaluate(config, str(tmp_path / 'run'))
  assert np.isfinite(out['eval/top1']) and np.isfinite(out['train/loss'])
  results = json.load(open(tmp_path / 'run' / evaluation.RESULTS_FILE))
  assert results['step'] == 2 and (results['temporal_views'], results['spatial_views']) == (2, 3)


def test_demo_config_is_the_linear_probe_demo_with_the_pooler():
  config = attentive_probe_demo.get_config()
  tasks.validate(config, num_devices=1)
  assert config.task == 'attentive_probe' and config.total_steps == 1500 and config.model.encoder == 'mu'


def _attentive_params(seed=0, num_classes=5, queries=2, mlp=True):
  """Random attentive-probe params ('mu' encoder without final norm, pooler, head) and the model they belong to."""
  import export_test

  model = classifier.VideoClassifier('mu', num_classes=num_classes, pooling='attentive', pool_heads=2,
                                     pool_queries=queries, pool_mlp=mlp, freeze_encoder=True)
  abstract = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 4, 32, 32, 3)), train=False))
  return model, jax.tree.map(np.asarray, export_test.random_params(abstract['params'], seed))


def _torch_pooler_logits(sd, tokens, heads, mlp):
  """The pooler and head from the exported names, in PyTorch (`nn.functional`), on tokens `[B, N, D]`."""
  import torch
  import torch.nn.functional as F

  t = lambda name: torch.from_numpy(np.array(sd[name]))  # noqa: E731
  x = torch.from_numpy(np.array(tokens))
  b, n, d = x.shape
  query = t('pooler.query')
  nq = query.shape[0]
  x = F.layer_norm(x, (d,), t('pooler.norm_tokens.weight'), t('pooler.norm_tokens.bias'), eps=1e-6)
  q = F.linear(query, t('pooler.q.weight'), t('pooler.q.bias')).reshape(nq, heads, d // heads).transpose(0, 1)
  k = F.linear(x, t('pooler.k.weight'), t('pooler.k.bias')).reshape(b, n, heads, d // heads).transpose(1, 2)
  v = F.linear(x, t('pooler.v.weight'), t('pooler.v.bias')).reshape(b, n, heads, d // heads).transpose(1, 2)
  out = F.scaled_dot_product_attention(q[None].expand(b, -1, -1, -1), k, v).transpose(1, 2).reshape(b, nq, d)
  y = query[None] + F.linear(out, t('pooler.proj.weight'), t('pooler.proj.bias'))
  if mlp:
    z = F.layer_norm(y, (d,), t('pooler.norm_mlp.weight'), t('pooler.norm_mlp.bias'), eps=1e-6)
    y = y + F.linear(F.gelu(F.linear(z, t('pooler.mlp.fc1.weight'), t('pooler.mlp.fc1.bias'))),
                     t('pooler.mlp.fc2.weight'), t('pooler.mlp.fc2.bias'))
  return F.linear(y.mean(1), t('head.weight'), t('head.bias')).numpy()


@pytest.mark.parametrize('mlp', [True, False], ids=['mlp', 'attention_only'])
def test_export_carries_pooler_and_head_where_the_format_can_and_they_compute_the_same_logits(tmp_path, mlp):
  pytest.importorskip('torch')
  pytest.importorskip('safetensors')
  from safetensors.numpy import load_file
  from m3video_jax.interop import export
  from m3video_jax.interop import features
  from m3video_jax.interop import torch_mapping

  model, params = _attentive_params(mlp=mlp)
  assert torch_mapping.layout_of(params).kind == 'attentive'
  video = np.random.default_rng(1).integers(0, 256, (2, 4, 32, 32, 3), dtype=np.uint8)
  config = {'model': {'pool_heads': 2}}
  encoder = features.Encoder(params, config)
  x = schema.normalize_video(video)
  ours = np.asarray(jax.jit(lambda p, v: model.apply({'params': p}, v, train=False))(params, x))
  np.testing.assert_allclose(np.asarray(encoder.logits(video)), ours, atol=1e-5)
  tokens = np.asarray(encoder(video))
  # safetensors (and mme: the same names) hold encoder, pooler and head; PyTorch computes the same logits from them.
  export.save_safetensors(params, str(tmp_path / 'probe.safetensors'))
  sd = load_file(str(tmp_path / 'probe.safetensors'))
  assert 'pooler.query' in sd and 'head.weight' in sd and ('pooler.mlp.fc1.weight' in sd) == mlp
  assert sum(v.size for v in sd.values()) == sum(v.size for v in jax.tree.leaves(params))
  theirs = _torch_pooler_logits(sd, tokens, heads=2, mlp=mlp)
  print(f"attentive probe logits, PyTorch from the exported names vs ours: max abs diff {np.abs(theirs - ours).max():.1e}")
  np.testing.assert_allclose(theirs, ours, atol=1e-4)
  sd_mme = export.save_mme(params, str(tmp_path / 'probe.pth'))
  assert sorted(sd_mme) == sorted(sd)
  # hf: transformers has no attentive pooler: the encoder only, as a VideoMAEModel without final norm.
  hf_sd = export.save_hf(params, str(tmp_path / 'hf'), num_frames=4, image_size=32)
  assert not any(k.startswith(('pooler', 'head', 'classifier')) for k in hf_sd)
  hf_config = json.load(open(tmp_path / 'hf' / 'config.json'))
  assert hf_config['architectures'] == ['VideoMAEModel'] and hf_config['use_mean_pooling'] is True
