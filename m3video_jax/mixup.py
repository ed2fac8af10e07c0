"""Batch-level augmentation inside the jitted step: label smoothing, mixup and cutmix (timm `Mixup`, mode 'batch').

Runs in JAX on the global batch, so it is sharded with the step and reproducible from the step rng. Each example `i` is
mixed with example `B-1-i` (the reversed batch, as timm's `x.flip(0)`); one `lam` per batch. With `prob` the batch is
mixed at all; then cutmix is chosen with `switch_prob` (when both alphas are > 0), else mixup. Cutmix pastes one box,
the same on every frame, and `lam` is corrected to the kept area (timm `correct_lam=True`), so the target weights are
exactly the pixel proportions. The per-clip ops (RandAugment, crop, erasing) live in the input pipeline
(`data/clip_augment.py`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def smooth_one_hot(labels: jax.Array, num_classes: int, smoothing: float) -> jax.Array:
  """`[B]` int -> `[B, C]`: `1 - smoothing + smoothing / C` on the label, `smoothing / C` elsewhere."""
  off = smoothing / num_classes
  return jax.nn.one_hot(labels, num_classes) * (1.0 - smoothing) + off


def cutmix_box(rng: jax.Array, lam: jax.Array, height: int, width: int) -> tuple[jax.Array, jax.Array]:
  """timm `rand_bbox`: a box of sides `sqrt(1 - lam)` of the frame's, centre uniform, clipped to the frame.

  Returns:
    (bool `[H, W]` True inside the box, corrected lam = 1 - box area / frame area).
  """
  rng_y, rng_x = jax.random.split(rng)
  cut = jnp.sqrt(1.0 - lam)
  cut_h, cut_w = (height * cut).astype(jnp.int32), (width * cut).astype(jnp.int32)
  cy = jax.random.randint(rng_y, (), 0, height)
  cx = jax.random.randint(rng_x, (), 0, width)
  y0, y1 = jnp.clip(cy - cut_h // 2, 0, height), jnp.clip(cy + cut_h // 2, 0, height)
  x0, x1 = jnp.clip(cx - cut_w // 2, 0, width), jnp.clip(cx + cut_w // 2, 0, width)
  rows, cols = jnp.arange(height), jnp.arange(width)
  box = ((rows >= y0) & (rows < y1))[:, None] & ((cols >= x0) & (cols < x1))[None, :]
  return box, 1.0 - ((y1 - y0) * (x1 - x0)) / (height * width)


def mix_batch(rng: jax.Array, video: jax.Array, labels: jax.Array, *, num_classes: int, mixup_alpha: float,
              cutmix_alpha: float, prob: float, switch_prob: float, smoothing: float
              ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Mixup/cutmix of a batch with its reverse, and the matching smoothed soft targets.

  Args:
    rng: key of this step.
    video: float `[B, T, H, W, C]`.
    labels: int `[B]`.
    num_classes: `C` of the targets.
    mixup_alpha, cutmix_alpha: Beta parameters; 0 disables that kind.
    prob: probability that the batch is mixed.
    switch_prob: probability of cutmix instead of mixup when both are enabled.
    smoothing: label smoothing applied to both labels before mixing.

  Returns:
    (mixed video, soft targets float32 `[B, num_classes]` (rows sum to 1), lam: weight of the unreversed batch).
  """
  targets = smooth_one_hot(labels, num_classes, smoothing)
  if (mixup_alpha <= 0 and cutmix_alpha <= 0) or prob <= 0:
    return video, targets, jnp.ones((), jnp.float32)
  rng_apply, rng_switch, rng_mix, rng_cut, rng_box = jax.random.split(rng, 5)
  flipped = video[::-1]
  apply = jax.random.uniform(rng_apply) < prob
  if mixup_alpha > 0 and cutmix_alpha > 0:
    use_cutmix = jax.random.uniform(rng_switch) < switch_prob
  else:
    use_cutmix = jnp.asarray(cutmix_alpha > 0)
  lam_mix = jax.random.beta(rng_mix, mixup_alpha, mixup_alpha) if mixup_alpha > 0 else jnp.ones(())
  lam_cut = jax.random.beta(rng_cut, cutmix_alpha, cutmix_alpha) if cutmix_alpha > 0 else jnp.ones(())
  box, lam_box = cutmix_box(rng_box, lam_cut, video.shape[2], video.shape[3])
  lam = jnp.where(apply, jnp.where(use_cutmix, lam_box, lam_mix), 1.0).astype(jnp.float32)
  mixed = lam_mix.astype(video.dtype) * video + (1 - lam_mix).astype(video.dtype) * flipped
  cut = jnp.where(box[None, None, :, :, None], flipped, video)
  video = jnp.where(apply, jnp.where(use_cutmix, cut, mixed), video)
  return video, lam * targets + (1.0 - lam) * targets[::-1], lam
