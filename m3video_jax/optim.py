"""Optimiser from config: AdamW with linear warmup + cosine decay, lr scaled by batch/256, no weight decay on biases,
norms and tokens (paper Table 13), optional global-norm clipping."""
from __future__ import annotations

from typing import Any

import jax
import optax

# Parameters that are tokens or embeddings tables get no weight decay, whatever their rank.
_NO_DECAY_NAMES = ('mask_token', 'pos_embed', 'cls_token')


def lr_schedule(config) -> optax.Schedule:
  """Linear warmup from 0, then cosine to `min_lr`; both ends scaled by global batch / 256 (paper convention)."""
  o = config.optim
  scale = config.data.batch_size / 256
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=o.base_lr * scale, warmup_steps=o.warmup_steps,
      decay_steps=max(config.total_steps, o.warmup_steps + 1), end_value=o.min_lr * scale)


def weight_decay_mask(params: Any) -> Any:
  """True where weight decay applies: kernels (rank >= 2) that are not tokens/embedding tables."""
  def decays(path, leaf):
    names = [str(getattr(k, 'key', k)) for k in path]
    return leaf.ndim >= 2 and not any(n in _NO_DECAY_NAMES for n in names)
  return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(config) -> optax.GradientTransformation:
  o = config.optim
  parts = []
  if o.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(o.grad_clip_norm))
  parts.append(optax.adamw(lr_schedule(config), b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay,
                           mask=weight_decay_mask))
  return optax.chain(*parts)
