"""Pretraining loss: masked L2 over the hidden tokens, excluding elements of out-of-frame trajectories (DESIGN §2.6).

Averaging, exactly: with `e = (pred - target)^2` on the hidden tokens and `w` the 0/1 weight of each element,
  loss          = sum(w * e) / sum(w)                          over all hidden tokens of the batch and all D elements,
  loss_<part>   = sum over the part's elements of (w * e) / sum over the same elements of w,
  valid_fraction = sum(w) / count over the elements of the `position` part (the first part if there is none),
i.e. one mean over every counted element of the batch (paper eq. 1 normalised by the number of terms): a part
contributes in proportion to its number of counted elements, and `loss` is the count-weighted mean of the part losses,
not their plain mean. An empty denominator (nothing counted) gives 0, never NaN. Everything is float32.
"""
from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp

from m3video_jax import masking


def masked_l2(pred: jax.Array, target: jax.Array, weight: jax.Array, hidden: jax.Array,
              part_dims: Mapping[str, int]) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Masked L2 loss and per-part metrics.

  Args:
    pred: `[B, Nm, D]` predictions of the hidden tokens in ascending token order (the model's output).
    target: `[B, N, D]` targets of all tokens (`targets.compute`).
    weight: `[B, N, D]` 0/1 element weights (0 = out-of-frame trajectory).
    hidden: bool `[B, N]`, True = hidden, `Nm` per row.
    part_dims: ordered `{part name: size}` summing to `D` (`targets.part_dims`).

  Returns:
    `(loss, metrics)`: scalar float32 loss and `{'loss_<part>': ..., 'valid_fraction': ...}` float32 scalars.
  """
  b, nm, d = pred.shape
  if target.shape[-1] != d or sum(part_dims.values()) != d:
    raise ValueError(f'prediction width {d}, target width {target.shape[-1]} and part_dims {dict(part_dims)} '
                     f'(sum {sum(part_dims.values())}) must agree')
  idx = masking.hidden_indices(hidden, nm)
  w = masking.gather_tokens(weight.astype(jnp.float32), idx)
  # Excluded elements get target 0, so whatever they hold (even inf/NaN) reaches neither the loss nor the gradient.
  t = jnp.where(w > 0, masking.gather_tokens(target.astype(jnp.float32), idx), 0.0)
  err = w * jnp.square(pred.astype(jnp.float32) - t)

  def ratio(num, den):
    return num / jnp.maximum(den, 1.0)

  loss = ratio(err.sum(), w.sum())
  metrics = {}
  start = 0
  valid_part = 'position' if 'position' in part_dims else next(iter(part_dims))
  for name, size in part_dims.items():
    e, ww = err[..., start:start + size], w[..., start:start + size]
    metrics[f'loss_{name}'] = ratio(e.sum(), ww.sum())
    if name == valid_part:
      metrics['valid_fraction'] = ww.sum() / ww.size
    start += size
  return loss, metrics
