"""The classification evaluation library (its CLI is `evaluate.py`): per-view softmax averaged per video, top-1 /
top-5 (reference `finetune` test).

Used by the classification tasks (single-view validation during training, the multi-view test at the end of
training) and by the `m3video_jax.evaluate` CLI, which tests a finished or interrupted run's checkpoint again.

Every process evaluates its own eval shards; the jitted forward runs on global batches (padded with a `_mask`), and the
per-process counts are summed at the end.
"""
from __future__ import annotations

import functools
import json
import os
from typing import Any, Callable, Iterable

import jax
import numpy as np
from jax.experimental import multihost_utils

from m3video_jax import sharding
from m3video_jax.data import schema

RESULTS_FILE = 'eval_results.json'
# predict_probs(params, video [B, T, H, W, 3] RGB in [0, 255]) -> softmax probabilities [B, C], jitted, on global
# arrays.
PredictFn = Callable[[Any, jax.Array], jax.Array]


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _classifier_probs(model, mean, std, params, video):
  video = schema.normalize_video(video, mean, std)
  return jax.nn.softmax(model.apply({'params': params}, video, train=False), axis=-1)


def classifier_predict_fn(model, mean=schema.IMAGENET_MEAN, std=schema.IMAGENET_STD) -> PredictFn:
  """Softmax of a `VideoClassifier`'s eval-mode logits on RGB clips in [0, 255], normalised inside the jit with
  `mean` / `std` (`config.data.mean` / `.std`); the jit is cached per model and statistics."""
  return functools.partial(_classifier_probs, model, tuple(mean), tuple(std))


def video_scores(predict_probs: PredictFn, params: Any, batches: Iterable[dict[str, np.ndarray]], *, num_videos: int,
                 num_classes: int, mesh) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Averages the softmax of every view of every video of this process.

  Args:
    predict_probs: the model's probabilities on a global batch.
    params: model params (any sharding).
    batches: host-local batches with `video`, `label`, `video_index` (`< num_videos`) and `_mask` (False = padding),
      all of the same size; every process must yield the same number of batches.
    num_videos, num_classes: sizes of the score table.
    mesh: the device mesh; batches are split over its batch axes.

  Returns:
    (scores float64 `[num_videos, C]` mean probability over views, labels int `[num_videos]`, views int
    `[num_videos]` number of views seen per video).
  """
  batch_shd = sharding.batch_sharding(mesh)
  sums = np.zeros((num_videos, num_classes), np.float64)
  labels = np.full((num_videos,), -1, np.int64)
  views = np.zeros((num_videos,), np.int64)
  for batch in batches:
    keep = batch['_mask']
    probs = predict_probs(params, sharding.to_global({'video': batch['video']}, batch_shd)['video'])
    probs = np.asarray(multihost_utils.global_array_to_host_local_array(probs, mesh, batch_shd.spec))
    idx = batch['video_index'][keep]
    np.add.at(sums, idx, probs[keep].astype(np.float64))
    np.add.at(views, idx, 1)
    labels[idx] = batch['label'][keep]
  return sums / np.maximum(views, 1)[:, None], labels, views


def summarize(scores: np.ndarray, labels: np.ndarray, views: np.ndarray) -> dict[str, float]:
  """top1, top5 (in %), loss (mean -log p of the label) and num_videos over the videos with views, all processes."""
  seen = views > 0
  scores, labels = scores[seen], labels[seen]
  k = min(5, scores.shape[1])
  ranked = np.argsort(-scores, axis=1, kind='stable')
  correct1 = float(np.sum(ranked[:, 0] == labels))
  correct5 = float(np.sum(np.any(ranked[:, :k] == labels[:, None], axis=1)))
  nll = float(np.sum(-np.log(np.maximum(scores[np.arange(len(labels)), labels], 1e-12))))
  totals = np.array([correct1, correct5, nll, float(len(labels))])
  if jax.process_count() > 1:
    totals = np.asarray(multihost_utils.process_allgather(totals)).reshape(-1, 4).sum(axis=0)
  n = max(totals[3], 1.0)
  return {'top1': float(100.0 * totals[0] / n), 'top5': float(100.0 * totals[1] / n), 'loss': float(totals[2] / n),
          'num_videos': float(totals[3])}


def evaluate_params(config, predict_probs: PredictFn, params: Any, mesh, *, num_temporal: int,
                    num_spatial: int) -> dict[str, float]:
  """Tests `params` on `config.data.eval_files` with `num_temporal x num_spatial` views per video."""
  from m3video_jax.data import classification  # TF only where evaluation runs.

  ds, info = classification.make_eval_dataset(config, num_temporal=num_temporal, num_spatial=num_spatial,
                                              process_index=jax.process_index(), process_count=jax.process_count())
  num_batches = info['num_batches']
  if jax.process_count() > 1:  # Every process runs the same number of (global) steps.
    num_batches = int(np.max(multihost_utils.process_allgather(np.array([num_batches]))))
  batches = classification.padded_batches(ds, info['local_batch'], num_batches, info['shards'],
                                          counts=info['counts'], num_classes=config.model.num_classes)
  scores, labels, views = video_scores(predict_probs, params, batches, num_videos=info['num_videos'],
                                       num_classes=config.model.num_classes, mesh=mesh)
  expected = num_temporal * num_spatial
  if np.any(views != expected):
    raise RuntimeError(f'evaluation saw {sorted(set(views.tolist()))} views per video, expected {expected}')
  return summarize(scores, labels, views)


def write_results(workdir: str, step: int, results: dict[str, float], config, *, num_temporal: int,
                  num_spatial: int) -> str:
  """Writes `workdir/eval_results.json` (process 0) and returns its path."""
  path = os.path.join(workdir, RESULTS_FILE)
  if jax.process_index() == 0:
    record = {'step': int(step), **{k: float(v) for k, v in results.items()}, 'temporal_views': num_temporal,
              'spatial_views': num_spatial, 'eval_files': config.data.eval_files, 'task': config.task}
    with open(path, 'w') as f:
      json.dump(record, f, indent=2, sort_keys=True)
  return path
