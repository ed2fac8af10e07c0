"""The optimiser: AdamW with linear warmup + cosine decay, lr scaled by videos per step / 256, no weight decay on
biases, norms and tokens (paper Table 13), optional global-norm clipping. Task-agnostic: each task (`tasks.py`) says
how many videos a step holds and passes its options (paper Table 14, reference `finetune/run.py`):
- `layer_decay=(rate, depth)` (fine-tuning, `optim.layer_decay` 0.75): every AdamW update (weight decay included, as
  the reference's per-group lr) of a leaf is scaled by `rate ** (depth + 1 - layer_id)`, with layer ids
  `encoder/patch_embed` 0, `encoder/block_i` i + 1, everything else (`fc_norm`, `head`) depth + 1.
- `trainable=('head',)` (linear probing): only those top-level params are updated; the rest get zero updates and no
  optimiser state.
"""
from __future__ import annotations

import re
from typing import Any

import jax
import optax

# Parameters that are tokens or embeddings tables get no weight decay, whatever their rank.
_NO_DECAY_NAMES = ('mask_token', 'pos_embed', 'cls_token')
_BLOCK = re.compile(r'block_(\d+)$')


def warmup_steps(config) -> int:
  """`optim.warmup_steps`, clamped to `total_steps`: a short run of any config (e.g. a 5-step smoke run of a config
  whose warmup is longer) warms up over all its steps instead of being refused. `train_lib` logs the clamp."""
  return min(int(config.optim.warmup_steps), int(config.total_steps))


def lr_schedule(config, videos_per_step: int | None = None) -> optax.Schedule:
  """Linear warmup from 0, then cosine to `min_lr`; both ends scaled by `videos_per_step` / 256 (paper convention;
  default `data.batch_size`)."""
  o = config.optim
  warmup = warmup_steps(config)
  scale = (videos_per_step or config.data.batch_size) / 256
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=o.base_lr * scale, warmup_steps=warmup,
      decay_steps=max(config.total_steps, warmup + 1), end_value=o.min_lr * scale)


def _names(path) -> list[str]:
  return [str(getattr(k, 'key', k)) for k in path]


def weight_decay_mask(params: Any) -> Any:
  """True where weight decay applies: kernels (rank >= 2) that are not tokens/embedding tables."""
  def decays(path, leaf):
    return leaf.ndim >= 2 and not any(n in _NO_DECAY_NAMES for n in _names(path))
  return jax.tree_util.tree_map_with_path(decays, params)


def layer_id(path, depth: int) -> int:
  """The reference's layer id of a param: `encoder/patch_embed` 0, `encoder/block_i` i + 1, else depth + 1."""
  names = _names(path)
  if names[:1] == ['encoder'] and len(names) > 1:
    if names[1] == 'patch_embed':
      return 0
    match = _BLOCK.match(names[1])
    if match:
      return int(match.group(1)) + 1
  return depth + 1


def layer_decay_scales(params: Any, layer_decay: float, depth: int) -> Any:
  """Per-leaf lr multipliers `layer_decay ** (depth + 1 - layer_id)` (head 1, patch embed `layer_decay**(depth+1)`)."""
  return jax.tree_util.tree_map_with_path(lambda p, _: layer_decay ** (depth + 1 - layer_id(p, depth)), params)


def scale_by_layer_decay(layer_decay: float, depth: int) -> optax.GradientTransformation:
  """Multiplies each leaf's update by its layer-decay scale (a constant per leaf, no state)."""
  def update_fn(updates, state, params=None):
    del params
    scales = layer_decay_scales(updates, layer_decay, depth)
    return jax.tree.map(lambda u, s: u * s, updates, scales), state
  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def trainable_labels(trainable: tuple[str, ...]):
  """`fn(params)` -> 'train' for the params under the top-level names `trainable`, 'frozen' for the rest."""
  return lambda params: jax.tree_util.tree_map_with_path(
      lambda p, _: 'train' if _names(p)[:1] and _names(p)[0] in trainable else 'frozen', params)


def make_optimizer(config, *, videos_per_step: int | None = None, layer_decay: tuple[float, int] | None = None,
                   trainable: tuple[str, ...] | None = None) -> optax.GradientTransformation:
  """AdamW from `config.optim` (see the module docstring for `layer_decay` and `trainable`)."""
  o = config.optim
  parts = []
  if o.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(o.grad_clip_norm))
  parts.append(optax.adamw(lr_schedule(config, videos_per_step), b1=o.b1, b2=o.b2, eps=o.eps,
                           weight_decay=o.weight_decay, mask=weight_decay_mask))
  if layer_decay is not None:
    parts.append(scale_by_layer_decay(*layer_decay))
  tx = optax.chain(*parts)
  if trainable is not None:
    tx = optax.multi_transform({'train': tx, 'frozen': optax.set_to_zero()}, trainable_labels(tuple(trainable)))
  return tx
