"""The losses: the pretraining masked L2 (below) and the classification soft-target cross entropy
(`soft_cross_entropy`, after mixup/cutmix).

Pretraining loss: masked L2 over the hidden tokens, excluding elements of out-of-frame trajectories (`traj_valid`,
docs/data_prep.md), and the learning diagnostics computed beside it in the same jitted step.

Averaging, exactly: with `e = (pred - target)^2` on the hidden tokens and `w` the 0/1 weight of each element,
  loss          = sum(w * e) / sum(w)                          over all hidden tokens of the batch and all D elements,
  loss_<part>   = sum over the part's elements of (w * e) / sum over the same elements of w,
  valid_fraction = sum(w) / count over the elements of the `position` part (the first part if there is none): the
                   share that counts (out-of-frame trajectories and, with `noise_floor='zero_weight'`, still tokens
                   do not),
i.e. one mean over every counted element of the batch (paper eq. 1 normalised by the number of terms): a part
contributes in proportion to its number of counted elements, and `loss` is the count-weighted mean of the part losses,
not their plain mean. With `balance_parts=True` (`target.balance_parts`) the loss is instead the plain mean of the
losses of the parts with counted elements, so a 32-element position part weighs as much as a 144-element shape part.
An empty denominator (nothing counted) gives 0, never NaN. Everything is float32.

Diagnostics (no gradient flows through them):
  zero_<part>        the loss of predicting 0 for the part on the same hidden elements, `sum(w * t^2) / sum(w)`. For
                     a per-token normalised target it is ~1; a model that takes nothing from the input cannot beat
                     the per-element mean, so for a target centred on zero `loss_<part> / zero_<part>` near 1 means
                     nothing was learned (a non-negative target such as raw HOG: compare with a static-input run).
  <part>_vs_zero     `loss_<part> / zero_<part>` (NaN when the zero loss is 0).
With `moving` (bool `[B, N]`, `targets.moving_tokens`), each of these also for the hidden tokens that move and those
that do not: `loss_<part>_moving`, `zero_<part>_moving`, `<part>_moving_vs_zero`, the same with `_static`, and
`moving_fraction` (moving share of the hidden tokens). `metrics.mean_metrics` turns the per-step ratios of a logging
interval into the ratio of the interval's mean losses.
"""
from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp

from m3video_jax import masking


def _ratio(num: jax.Array, den: jax.Array) -> jax.Array:
  return num / jnp.maximum(den, 1.0)


def _vs_zero(loss: jax.Array, zero: jax.Array) -> jax.Array:
  return jnp.where(zero > 0, loss / jnp.where(zero > 0, zero, 1.0), jnp.nan)


def masked_l2(pred: jax.Array, target: jax.Array, weight: jax.Array, hidden: jax.Array,
              part_dims: Mapping[str, int], moving: jax.Array | None = None, *,
              balance_parts: bool = False) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Masked L2 loss, per-part metrics and the zero-prediction diagnostics.

  Args:
    pred: `[B, Nm, D]` predictions of the hidden tokens in ascending token order (the model's output).
    target: `[B, N, D]` targets of all tokens (`targets.compute`).
    weight: `[B, N, D]` 0/1 element weights (0 = out-of-frame trajectory).
    hidden: bool `[B, N]`, True = hidden, `Nm` per row.
    part_dims: ordered `{part name: size}` summing to `D` (`targets.part_dims`).
    moving: optional bool `[B, N]`, True for tokens whose raw motion is above the storage quantum; adds the
      moving/static split of every metric.
    balance_parts: the loss is the mean of the part losses instead of the mean over all counted elements.

  Returns:
    `(loss, metrics)`: scalar float32 loss and float32 scalar metrics (module docstring).
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
  zero_err = jax.lax.stop_gradient(w * jnp.square(t))

  loss = _ratio(err.sum(), w.sum())
  metrics = {}
  groups = {'': jnp.ones((b, nm, 1), jnp.float32)}
  if moving is not None:
    mov = jnp.take_along_axis(moving, idx, axis=1).astype(jnp.float32)[..., None]  # [B, Nm, 1]
    groups.update({'_moving': mov, '_static': 1.0 - mov})
    metrics['moving_fraction'] = mov.mean()
  start, counted = 0, []
  valid_part = 'position' if 'position' in part_dims else next(iter(part_dims))
  for name, size in part_dims.items():
    e, z, ww = (a[..., start:start + size] for a in (err, zero_err, w))
    for suffix, g in groups.items():
      den = (ww * g).sum()
      part_loss, part_zero = _ratio((e * g).sum(), den), _ratio((z * g).sum(), den)
      metrics[f'loss_{name}{suffix}'] = part_loss
      metrics[f'zero_{name}{suffix}'] = part_zero
      metrics[f'{name}{suffix}_vs_zero'] = _vs_zero(jax.lax.stop_gradient(part_loss), part_zero)
    if name == valid_part:
      metrics['valid_fraction'] = ww.sum() / ww.size
    counted.append((ww.sum() > 0).astype(jnp.float32))
    start += size
  if balance_parts:  # Mean over the parts with counted elements in this batch (an empty part weighs nothing).
    parts = sum(metrics[f'loss_{name}'] for name in part_dims)
    loss = _ratio(parts, sum(counted))
  return loss, metrics


def soft_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Per-example `-sum_c targets * log_softmax(logits)` `[B]` (timm `SoftTargetCrossEntropy` before the mean)."""
  return -jnp.sum(targets * jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1), axis=-1)
