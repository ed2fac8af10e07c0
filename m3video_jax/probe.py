"""Frozen-feature linear probe: mean-pooled encoder tokens -> multinomial logistic regression (full batch, seconds).

A cheaper sibling of the `linear_probe` task (which trains a head through the training loop with augmentation):
features of every held-out clip are computed once, standardised with the probe-train statistics, and a softmax
regression with an L2 penalty is fitted by full-batch Adam; the penalty is chosen on a split of the probe-train videos
and the probe refitted on all of them before the single evaluation on the probe-test videos.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from m3video_jax import config_lib
from m3video_jax.data import schema
from m3video_jax.models import vit

L2_GRID = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


def pooled_features(encoder_params: Any, variant: str, patch_size: tuple[int, int, int],
                    batches: Iterable[dict[str, np.ndarray]], *, mean=schema.IMAGENET_MEAN,
                    std=schema.IMAGENET_STD, attention: str = 'auto') -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Mean token of the encoder (after its final LayerNorm) for every clip.

  Args:
    encoder_params: the `encoder` subtree of our params.
    variant, patch_size: the encoder's architecture.
    batches: dicts with `video` (RGB in [0, 255] `[b, T, H, W, 3]`), `label` `[b]`, `video_index` `[b]` and
      optionally `_mask` (False on padding rows), e.g. `classification.padded_batches` of an eval dataset.
    mean, std: the normalisation of the clips (`schema.normalize_video`, inside the jit).
    attention: the encoder's attention implementation (`config.model.attention`).

  Returns:
    (features float32 `[C, D]`, labels int `[C]`, video_index int `[C]`) over the real (unpadded) clips.
  """
  model = vit.VideoViT(variant, tuple(patch_size), attention=attention)
  fn = jax.jit(lambda p, x: model.apply({'params': p}, schema.normalize_video(x, mean, std)).mean(axis=1))
  feats, labels, index = [], [], []
  for b in batches:
    keep = b['_mask'] if '_mask' in b else np.ones(len(b['label']), bool)
    feats.append(np.asarray(fn(encoder_params, jnp.asarray(b['video'])))[keep])
    labels.append(b['label'][keep])
    index.append(b['video_index'][keep])
  return np.concatenate(feats), np.concatenate(labels), np.concatenate(index)


def per_video(features: np.ndarray, labels: np.ndarray, video_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Averages the clips (views) of each video: (`[V, D]`, `[V]`) in order of `video_index`."""
  ids = np.unique(video_index)
  x = np.stack([features[video_index == i].mean(0) for i in ids])
  y = np.array([labels[video_index == i][0] for i in ids])
  return x, y


def dataset_features(config, eval_files: str, encoder_params: Any, *,
                     num_temporal: int = 2) -> tuple[np.ndarray, np.ndarray]:
  """Per-video features and labels of every record of `eval_files`, as the classification evaluation sees them
  (`num_temporal` clips per video, centre crop; `config` is a classification config with the encoder's
  `model.encoder`/`model.patch_size` and the clip's `data.*`)."""
  from m3video_jax.data import classification  # TF only here.

  with config.unlocked():
    config.data.eval_files = eval_files
  ds, info = classification.make_eval_dataset(config, num_temporal=num_temporal, num_spatial=1)
  batches = classification.padded_batches(ds, info['local_batch'], info['num_batches'], info['shards'])
  return per_video(*pooled_features(encoder_params, config.model.encoder, tuple(config.model.patch_size), batches,
                                    mean=tuple(config.data.mean), std=tuple(config.data.std),
                                    attention=config_lib.model_options(config)[0]))


def fit_softmax(x: np.ndarray, y: np.ndarray, num_classes: int, l2: float, *, steps: int = 600,
                lr: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
  """Multinomial logistic regression on standardised features; returns (W `[D, C]`, b `[C]`)."""
  x, onehot = jnp.asarray(x, jnp.float32), jax.nn.one_hot(jnp.asarray(y), num_classes)
  params = {'w': jnp.zeros((x.shape[1], num_classes)), 'b': jnp.zeros((num_classes,))}
  tx = optax.adam(lr)

  def loss(p):
    logits = x @ p['w'] + p['b']
    return optax.softmax_cross_entropy(logits, onehot).mean() + l2 * jnp.sum(p['w'] ** 2)

  def body(_, carry):
    p, s = carry
    g = jax.grad(loss)(p)
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  params, _ = jax.jit(lambda p: jax.lax.fori_loop(0, steps, body, (p, tx.init(p))))(params)
  return np.asarray(params['w']), np.asarray(params['b'])


def _top1(w, b, x, y) -> float:
  return float(np.mean(np.argmax(x @ w + b, -1) == y) * 100.0)


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, num_classes: int,
                 *, l2_grid: Sequence[float] = L2_GRID, seed: int = 0) -> dict[str, Any]:
  """Fits the probe on (train_x, train_y) and evaluates it once on (test_x, test_y).

  The L2 penalty is the one of `l2_grid` with the best top-1 on a stratified 20 % of the probe-train videos (fitted on
  the other 80 %); ties go to the stronger penalty.

  Returns:
    `{'top1': test top-1 %, 'l2': chosen penalty, 'val_top1': {l2: top-1 on the held-out 20 %}, 'num_train',
    'num_test'}`.
  """
  mean, std = train_x.mean(0), train_x.std(0) + 1e-6
  tr, te = (train_x - mean) / std, (test_x - mean) / std
  rng = np.random.default_rng(seed)
  val = np.zeros(len(train_y), bool)
  for c in np.unique(train_y):
    idx = np.flatnonzero(train_y == c)
    val[rng.permutation(idx)[:max(1, len(idx) // 5)]] = True
  scores = {}
  for l2 in l2_grid:
    w, b = fit_softmax(tr[~val], train_y[~val], num_classes, l2)
    scores[float(l2)] = _top1(w, b, tr[val], train_y[val])
  best = max(sorted(scores, reverse=True), key=lambda k: scores[k])
  w, b = fit_softmax(tr, train_y, num_classes, best)
  return {'top1': _top1(w, b, te, test_y), 'l2': best, 'val_top1': scores, 'num_train': int(len(train_y)),
          'num_test': int(len(test_y))}
