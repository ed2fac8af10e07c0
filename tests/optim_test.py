"""Optimiser of the classification tasks: layer-wise lr decay, head-only linear probing, lr scaling with videos/step."""
import jax
import jax.numpy as jnp
import numpy as np
import optax

from configs import finetune_k400
from configs import linear_probe_ssv2
from m3video_jax import optim
from m3video_jax import tasks


def abstract_params(config):
  return jax.eval_shape(tasks.get_task(config).init_params, jax.random.PRNGKey(0))


def test_layer_decay_scales_are_the_reference_ones_for_vit_b():
  params = abstract_params(finetune_k400.get_config())
  scales = optim.layer_decay_scales(params, 0.75, depth=12)
  assert scales['encoder']['patch_embed']['kernel'] == 0.75 ** 13
  assert scales['encoder']['patch_embed']['bias'] == 0.75 ** 13
  for i in range(12):
    block = scales['encoder'][f'block_{i:02d}']
    assert set(jax.tree.leaves(block)) == {0.75 ** (12 - i)}, i
  assert scales['fc_norm']['scale'] == scales['head']['kernel'] == scales['head']['bias'] == 1.0
  np.testing.assert_allclose(0.75 ** 13, 0.02376, atol=1e-5)  # docs/design.md §5: patch embed ~ 0.0238


def test_layer_decay_scales_each_adamw_update():
  config = finetune_k400.get_config('tiny')  # 'mu': depth 2
  params = jax.device_get(tasks.get_task(config).init_params(jax.random.PRNGKey(0)))
  grads = jax.tree.map(lambda p: jnp.asarray(np.random.default_rng(p.size).normal(size=p.shape), p.dtype), params)
  with config.unlocked():
    config.optim.warmup_steps = 0
  decayed = tasks.get_task(config).optimizer()
  config.optim.layer_decay = 1.0
  plain = tasks.get_task(config).optimizer()
  u_decayed, _ = decayed.update(grads, decayed.init(params), params)
  u_plain, _ = plain.update(grads, plain.init(params), params)
  scales = optim.layer_decay_scales(params, 0.75, depth=2)
  jax.tree.map(lambda d, p, s: np.testing.assert_allclose(d, p * s, rtol=1e-6, atol=1e-12), u_decayed, u_plain, scales)
  assert scales['encoder']['patch_embed']['kernel'] == 0.75 ** 3 and scales['encoder']['block_01']['mlp']['fc1'][
      'kernel'] == 0.75


def test_linear_probe_optimizer_updates_head_only_with_weight_decay_on_its_kernel():
  config = linear_probe_ssv2.get_config('tiny')
  params = jax.device_get(tasks.get_task(config).init_params(jax.random.PRNGKey(0)))
  ones = jax.tree.map(jnp.ones_like, params)
  tx = tasks.get_task(config).optimizer()
  state = tx.init(params)
  for _ in range(3):
    updates, state = tx.update(ones, state, params)
    params_new = optax.apply_updates(params, updates)
  changed = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))), params, params_new)
  assert changed['head'] == {'kernel': True, 'bias': True}
  assert not any(jax.tree.leaves(changed['encoder'])) and not any(jax.tree.leaves(changed['fc_norm']))
  assert optim.weight_decay_mask(params)['head'] == {'kernel': True, 'bias': False}
  # The frozen part keeps no AdamW moments.
  assert sum(x.size for x in jax.tree.leaves(state)) < 4 * sum(x.size for x in jax.tree.leaves(params['head'])) + 8


def test_lr_scales_with_videos_per_step_not_clips():
  config = finetune_k400.get_config()  # 1024 clips = 512 videos x repeated_aug 2
  sched = tasks.get_task(config).lr_schedule()
  np.testing.assert_allclose(float(sched(config.optim.warmup_steps)), 1e-3 * 512 / 256, rtol=1e-6)
  np.testing.assert_allclose(float(sched(config.total_steps)), 1e-6 * 512 / 256, rtol=1e-4)
  assert float(sched(0)) == 0.0
