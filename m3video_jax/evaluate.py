"""Classification evaluation: per-view softmax averaged per video, top-1 / top-5 (reference `finetune` test).

Used by the classification tasks (single-view validation during training, the multi-view test at the end of
training) and as a CLI that tests a finished or interrupted run's latest checkpoint again:

  python -m m3video_jax.evaluate --workdir=$WD [--views=2x3] [--eval_files='/data/ssv2_prep/val-*.tfrecord']

The CLI reads `$WD/config.json`, writes `eval/top1`, `eval/top5`, `eval/loss` to TensorBoard in `$WD` and
`$WD/eval_results.json`.

Every process evaluates its own eval shards; the jitted forward runs on global batches (padded with a `_mask`), and the
per-process counts are summed at the end.
"""
from __future__ import annotations

import functools
import json
import logging
import os
from typing import Any, Callable, Iterable

import jax
import numpy as np
from jax.experimental import multihost_utils

from m3video_jax import sharding

RESULTS_FILE = 'eval_results.json'
# predict_probs(params, video [B, T, H, W, 3]) -> softmax probabilities [B, C], jitted, on global arrays.
PredictFn = Callable[[Any, jax.Array], jax.Array]


@functools.partial(jax.jit, static_argnums=0)
def _classifier_probs(model, params, video):
  return jax.nn.softmax(model.apply({'params': params}, video, train=False), axis=-1)


def classifier_predict_fn(model) -> PredictFn:
  """Softmax of a `VideoClassifier`'s eval-mode logits (the jit is cached per model)."""
  return functools.partial(_classifier_probs, model)


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
  batches = classification.padded_batches(ds, info['local_batch'], num_batches, info['shards'])
  scores, labels, views = video_scores(predict_probs, params, batches, num_videos=info['num_videos'],
                                       num_classes=config.model.num_classes, mesh=mesh)
  expected = num_temporal * num_spatial
  if np.any(views != expected):
    raise RuntimeError(f'evaluation saw {sorted(set(views.tolist()))} views per video, expected {expected}')
  if np.any((labels < 0) | (labels >= config.model.num_classes)):
    bad = sorted(set(labels[(labels < 0) | (labels >= config.model.num_classes)].tolist()))
    raise ValueError(f'eval records have labels {bad} outside [0, config.model.num_classes='
                     f'{config.model.num_classes}); were the eval shards written with a label map?')
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


def main(argv) -> None:
  del argv
  import ml_collections
  from absl import flags

  from m3video_jax import checkpointing
  from m3video_jax import tasks
  from m3video_jax import metrics as metrics_lib

  f = flags.FLAGS
  workdir = os.path.abspath(f.workdir)
  with open(os.path.join(workdir, 'config.json')) as fp:
    config = ml_collections.ConfigDict(json.load(fp))
  if config.task == 'pretrain':
    raise ValueError(f'{workdir} is a pretraining run; evaluate a finetune or linear_probe run')
  if f.eval_files:
    config.data.eval_files = f.eval_files
  num_temporal, num_spatial = config.eval.test_temporal_views, config.eval.test_spatial_views
  if f.views:
    num_temporal, num_spatial = (int(v) for v in f.views.lower().split('x'))
  config.model.patch_size = tuple(config.model.patch_size)
  mesh = sharding.make_mesh(config.mesh)
  ckpt_dir, step = checkpointing.resolve_checkpoint(workdir, f.step)
  params = checkpointing.load_params(workdir, step)
  task = tasks.get_task(config)
  params = jax.device_put(params, sharding.replicated(mesh))
  results = evaluate_params(config, classifier_predict_fn(task.model), params, mesh,
                            num_temporal=num_temporal, num_spatial=num_spatial)
  path = write_results(workdir, step, results, config, num_temporal=num_temporal, num_spatial=num_spatial)
  writer = metrics_lib.MetricWriter(workdir, config.total_steps, enabled=jax.process_index() == 0)
  writer.write(step, {f'eval/{k}': v for k, v in results.items() if k != 'num_videos'})
  writer.close()
  logging.info('test of %s step %d, %dx%d views: %s -> %s', ckpt_dir, step, num_temporal, num_spatial, results, path)
  print(json.dumps({'step': step, **results}))


if __name__ == '__main__':
  from absl import app, flags

  flags.DEFINE_string('workdir', None, 'Workdir of a finetune / linear_probe run (config.json + checkpoints).',
                      required=True)
  flags.DEFINE_string('views', '', 'Test views TxS (temporal x spatial); default: config.eval.test_*_views.')
  flags.DEFINE_string('eval_files', '', 'Override of config.data.eval_files.')
  flags.DEFINE_integer('step', None, 'Checkpoint step (default: latest).')
  app.run(main)
