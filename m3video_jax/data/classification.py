"""tf.data input of the classification tasks (fine-tuning, linear probing, evaluation): labelled clips.

Reads the same TFRecords as pretraining (`data/schema.py`) but only the frames and the label. Sampling:
- `dense` (K400/UCF101/HMDB51): `num_frames` frames at `frame_stride` from a uniformly drawn start (short videos repeat
  their last frame). The reference draws 16 indices with `linspace` over a random 64-frame window (stride ~4.27);
  here the stride is exact.
- `segment` (SSV2, TSN-style): the video is cut into `num_frames` equal segments, one uniformly drawn frame per segment.

Training clip: sample -> random resized crop (area `aug.crop_area`, aspect `aug.crop_aspect`) -> decode only the crop,
resize to `res` -> optional flip -> RandAugment (same ops on every frame) -> random erasing (same box on every frame,
noise in the units of the normalised input). Clips leave the host as RGB in [0, 255]; the jitted step normalises them
(`schema.normalize_video`), as it does the pretraining clips. Mixup/cutmix and label smoothing run later, inside the
jitted step (`m3video_jax/mixup.py`).
With `data.repeated_aug = k`, every record gives k independently augmented clips, consecutive in the same batch.
The stream shares the pretraining pipeline's record order, seeding, resume and corrupt-record handling
(`stream.record_stream`, `stream.TrainIterator`).

Evaluation views (reference `finetune` test): temporal view `v` of `V` is, for `dense`, the clip starting at
`round(v * (N - span) / (V - 1))` (the centre clip for `V = 1`) and, for `segment`, frame
`floor((k + (v + 0.5) / V) * N / T)` of segment `k` (the `V` interleaved sets of segment points; midpoints for `V = 1`).
Spatial view `s` of `S` is the square of the short side at `s / (S - 1)` along the long side (centre for `S = 1`),
resized to `res` (= the reference's "resize short side to res, crop res x res" at 3 positions).

Train batch (numpy, leading dim = local clips): video float32 `[b, T, res, res, 3]` RGB in [0, 255] (not normalised),
label int32 `[b]`.
Eval batch: video uint8 `[b, T, res, res, 3]`, label, video_index int64 `[b]` (record position in this process's
eval stream).
"""
from __future__ import annotations

import math
import os
from typing import Any, Iterator

import numpy as np
import tensorflow as tf

from m3video_jax.data import clip_augment
from m3video_jax.data import clip_ops
from m3video_jax.data import prep_outputs
from m3video_jax.data import schema
from m3video_jax.data import stream


def _feature_spec() -> dict[str, Any]:
  full = schema.tf_feature_spec()
  return {k: full[k] for k in (schema.FRAMES, schema.LABEL, schema.NUM_FRAMES, schema.HEIGHT, schema.WIDTH)}


def dense_indices(num_frames, seed, *, clip_frames: int, frame_stride: int, view=None, num_views: int = 1):
  """`clip_frames` int32 indices at `frame_stride`: random start if `view` is None, else view `view` of `num_views`."""
  n = tf.cast(num_frames, tf.int32)
  free = tf.maximum(n - ((clip_frames - 1) * frame_stride + 1), 0)
  if view is None:
    start = tf.random.stateless_uniform([], seed, 0, free + 1, dtype=tf.int32)
  elif num_views == 1:
    start = free // 2
  else:
    frac = tf.cast(view, tf.float32) / (num_views - 1)
    start = tf.cast(tf.round(tf.cast(free, tf.float32) * frac), tf.int32)
  return tf.minimum(start + tf.range(clip_frames, dtype=tf.int32) * frame_stride, n - 1)


def segment_indices(num_frames, seed, *, clip_frames: int, view=None, num_views: int = 1):
  """One int32 index per equal segment: uniform in it if `view` is None, else at `(view + 0.5) / num_views` of it."""
  n = tf.cast(num_frames, tf.float32)
  if view is None:
    pos = tf.random.stateless_uniform([clip_frames], seed)
  else:
    pos = tf.fill([clip_frames], (tf.cast(view, tf.float32) + 0.5) / num_views)
  idx = tf.floor((tf.range(clip_frames, dtype=tf.float32) + pos) * n / clip_frames)
  return tf.minimum(tf.cast(idx, tf.int32), tf.cast(num_frames, tf.int32) - 1)


def sample_indices(config, num_frames, seed, *, view=None, num_views: int = 1):
  d = config.data
  if d.sampling == 'segment':
    return segment_indices(num_frames, seed, clip_frames=d.num_frames, view=view, num_views=num_views)
  return dense_indices(num_frames, seed, clip_frames=d.num_frames, frame_stride=d.frame_stride, view=view,
                       num_views=num_views)


def spatial_view_window(height, width, view, num_views: int):
  """(offset_y, offset_x, side, side): the short-side square at `view / (num_views - 1)` along the long side."""
  h, w = tf.cast(height, tf.int32), tf.cast(width, tf.int32)
  side = tf.minimum(h, w)
  frac = 0.5 if num_views == 1 else tf.cast(view, tf.float32) / (num_views - 1)
  oy = tf.cast(tf.round(tf.cast(h - side, tf.float32) * frac), tf.int32)
  ox = tf.cast(tf.round(tf.cast(w - side, tf.float32) * frac), tf.int32)
  return oy, ox, side, side


def make_train_clip_fn(config, *, process_index: int = 0):
  """`fn(epoch, index, serialized) -> {'video': [k, T, res, res, 3], 'label': [k], '_id': [k]}`, k = repeated_aug."""
  d, a = config.data, config.aug
  spec = _feature_spec()
  base_seed = stream.process_seed(config.seed, process_index)

  def one_clip(rec, seed):
    seed_time, seed_crop, seed_flip, seed_ra, seed_erase = tf.unstack(tf.random.experimental.stateless_split(seed, 5))
    idx = sample_indices(config, rec[schema.NUM_FRAMES], seed_time)
    oy, ox, ch, cw = clip_augment.random_resized_crop_params(
        rec[schema.HEIGHT], rec[schema.WIDTH], seed_crop, area_range=tuple(a.crop_area),
        aspect_range=tuple(a.crop_aspect))
    flip = (tf.random.stateless_uniform([], seed_flip) < 0.5) if d.flip else tf.constant(False)
    frames = tf.sparse.to_dense(rec[schema.FRAMES])
    video = clip_ops.decode_crop_frames(tf.gather(frames, idx), offset_y=oy, offset_x=ox, crop_h=ch, crop_w=cw,
                                        res=d.res, flip=flip)
    video = tf.cast(video, tf.float32)  # (resize may return the uint8 input when the crop is already res x res)
    if a.randaug_num_ops > 0:
      video = clip_augment.rand_augment(video, seed_ra, num_ops=a.randaug_num_ops, magnitude=a.randaug_magnitude,
                                        magnitude_std=a.randaug_magnitude_std, prob=a.randaug_prob)
    if a.erase_prob > 0:
      video = clip_augment.random_erasing(video, seed_erase, prob=a.erase_prob, pixel_mean=d.mean, pixel_std=d.std)
    return tf.ensure_shape(video, [d.num_frames, d.res, d.res, 3])

  def fn(epoch, index, serialized):
    rec = tf.io.parse_single_example(serialized, spec)
    seed = stream.element_seed(base_seed, epoch, index)
    seeds = tf.unstack(tf.random.experimental.stateless_split(seed, d.repeated_aug))
    k = d.repeated_aug
    return {
        'video': tf.stack([one_clip(rec, s) for s in seeds]),
        'label': tf.fill([k], tf.cast(rec[schema.LABEL], tf.int32)),
        '_id': tf.fill([k], index),
    }

  return fn


def make_eval_clip_fn(config, *, num_temporal: int, num_spatial: int):
  """`fn(video_index, view, serialized) -> {'video', 'label', 'video_index'}`; views are temporal-major."""
  d = config.data
  spec = _feature_spec()
  unused_seed = tf.zeros([2], tf.int64)

  def fn(video_index, view, serialized):
    rec = tf.io.parse_single_example(serialized, spec)
    frames = tf.sparse.to_dense(rec[schema.FRAMES])
    view = tf.cast(view, tf.int32)
    idx = sample_indices(config, rec[schema.NUM_FRAMES], unused_seed, view=view // num_spatial,
                         num_views=num_temporal)
    oy, ox, ch, cw = spatial_view_window(rec[schema.HEIGHT], rec[schema.WIDTH], view % num_spatial, num_spatial)
    video = clip_ops.decode_crop_frames(tf.gather(frames, idx), offset_y=oy, offset_x=ox, crop_h=ch, crop_w=cw,
                                        res=d.res, flip=False)
    video = tf.ensure_shape(video, [d.num_frames, d.res, d.res, 3])  # uint8; normalised on the device.
    return {'video': video, 'label': tf.cast(rec[schema.LABEL], tf.int32), 'video_index': video_index}

  return fn


def make_train_dataset(config, *, process_index: int = 0, process_count: int = 1, start_step: int = 0,
                       shards: list[str] | None = None) -> tuple[tf.data.Dataset, dict[str, Any]]:
  """This process's stream of augmented training clips (`stream.train_stream`), `data.repeated_aug` per record."""
  d = config.data
  local_videos = d.batch_size // process_count // d.repeated_aug
  return stream.train_stream(config, make_train_clip_fn(config, process_index=process_index),
                             clips_per_record=d.repeated_aug, stacked=True,
                             min_records=local_videos, process_index=process_index, process_count=process_count,
                             start_step=start_step, shards=shards,
                             check=lambda s: check_class_count(s, int(config.model.num_classes),
                                                               'config.data.train_files'))


def bad_label(labels: np.ndarray, num_classes: int) -> tuple[int, str] | None:
  """The first label that is not a class index in [0, num_classes): (row, what is wrong), or None."""
  bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
  if not len(bad):
    return None
  value = int(labels[bad[0]])
  what = ('is unlabelled (label -1); classification needs labelled records: prepare them from a labelled list or '
          'an official annotation file' if value == -1 else
          f'has label {value}, outside [0, config.model.num_classes={num_classes})')
  return int(bad[0]), what


def check_whole_videos(shards: list[str], what: str) -> None:
  """Refuses shards that data prep wrote as segments of videos (`--segment_frames`): a classification clip, and above
  all a multi-view test, samples the whole video. Each shard is judged by its own settings (`stream.prep_settings`:
  the `manifest.json` beside it, else its first record's `segment_start` / `video_frames`), so copied shards without
  their manifest are refused too.

  Raises:
    stream.DataError: naming the shards, where their settings were read and the flag.
  """
  problem = stream.mismatched_shards(
      stream.prep_settings(shards),
      (('segment_frames', lambda k: k > 0, lambda k: f'hold segments of {k} frames (data_prep --segment_frames), but '
        'classification samples whole videos; prepare this split again without --segment_frames'),), what)
  if problem:
    raise stream.DataError(problem)


def check_class_count(shards: list[str], num_classes: int, what: str) -> None:
  """Refuses shards whose label map (`label_map.json` beside them, written by data_prep) has more classes than the
  model: their labels could not all be classes of it.

  Raises:
    stream.LabelError: naming the label map, its class count and `config.model.num_classes`.
  """
  check_whole_videos(shards, what)
  for folder in sorted({os.path.dirname(s) for s in shards}):
    found = prep_outputs.read_label_map(folder)
    if found is None:
      continue
    path, label_map = found
    n = prep_outputs.num_classes(label_map)
    if n > num_classes:
      raise stream.LabelError(f'{path} (the class list of {what}) has {n} classes, but config.model.num_classes='
                              f'{num_classes}; set --config.model.num_classes={n} or use the shards of the dataset '
                              'the config is for')


def eval_shards(config) -> list[str]:
  """The shards of `config.data.eval_files`.

  Raises:
    stream.DataError: when the glob matches no file (checked before training, not after it).
  """
  try:
    return stream.list_shards(config.data.eval_files)
  except FileNotFoundError:
    raise stream.DataError(f'config.data.eval_files={config.data.eval_files!r} matches no file; expected held-out '
                           'TFRecord shards written by `python -m data_prep.extract`') from None


def train_iterator(config, *, process_index: int = 0, process_count: int = 1,
                   start_step: int = 0) -> stream.TrainIterator:
  """The training batches; every batch's labels are checked to be classes of the model (`bad_label`)."""
  num_classes = int(config.model.num_classes)
  return stream.TrainIterator(config, make_train_dataset, check_batch=lambda b: bad_label(b['label'], num_classes),
                              process_index=process_index, process_count=process_count, start_step=start_step)


def make_eval_dataset(config, *, num_temporal: int, num_spatial: int, process_index: int = 0,
                      process_count: int = 1) -> tuple[tf.data.Dataset, dict[str, Any]]:
  """This process's eval clips: every record of its `data.eval_files` shards, `num_temporal x num_spatial` views each.

  Returns:
    (dataset of local batches of `eval.batch_size / process_count` clips, the last one possibly smaller; info with
    `num_videos`, `num_clips`, `num_batches`, `local_batch`).
  """
  d = config.data
  shards = stream.process_shards(eval_shards(config), process_index, process_count)
  if config.eval.batch_size % process_count:
    raise ValueError(f'config.eval.batch_size={config.eval.batch_size} is not divisible by {process_count} processes')
  local_batch = config.eval.batch_size // process_count
  shards, counts = stream.usable_shards(shards, False, 'config.data.eval_files')  # Evaluation never drops data.
  check_class_count(shards, int(config.model.num_classes), 'config.data.eval_files')
  num_videos = sum(counts)
  views = num_temporal * num_spatial
  ds = tf.data.TFRecordDataset(shards).enumerate()
  ds = ds.flat_map(lambda i, r: tf.data.Dataset.range(views).map(lambda v: (i, v, r)))
  calls = tf.data.AUTOTUNE if d.num_parallel_calls == -1 else d.num_parallel_calls
  ds = ds.map(make_eval_clip_fn(config, num_temporal=num_temporal, num_spatial=num_spatial),
              num_parallel_calls=calls, deterministic=True)
  ds = ds.batch(local_batch, drop_remainder=False).prefetch(d.prefetch_batches)
  num_clips = num_videos * views
  info = {'shards': shards, 'counts': counts, 'num_videos': num_videos, 'num_clips': num_clips,
          'local_batch': local_batch, 'num_batches': math.ceil(num_clips / local_batch)}
  return ds, info


def padded_batches(ds: tf.data.Dataset, local_batch: int, num_batches: int, shards: list[str] | None = None, *,
                   counts: list[int] | None = None,
                   num_classes: int | None = None) -> Iterator[dict[str, np.ndarray]]:
  """Numpy batches of exactly `local_batch` rows with a `_mask` (False on padding), `num_batches` of them.

  `num_batches` may exceed the dataset's (other processes may have more eval data): the rest are all padding.
  A read error names the damaged record of `shards` (the dataset's shards, `info['shards']`); with `num_classes`
  (and `counts`, `info['counts']`) a label outside [0, num_classes) raises a `stream.LabelError` naming its record.
  """
  template = None
  it = ds.as_numpy_iterator()
  for _ in range(num_batches):
    try:
      batch = next(it, None)
    except tf.errors.OpError as e:
      where = (stream.find_damaged_record(shards) if shards else None) or stream.tf_error_text(e)
      raise stream.CorruptRecordError(f'reading the eval shards failed at {where}; a damaged shard is rewritten by '
                                      'deleting it and re-running the same data_prep command (it resumes)') from e
    if batch is None:
      if template is None:
        raise ValueError('this process has no eval data to shape the padding batches from')
      batch = {k: v[:0] for k, v in template.items()}
    template = batch
    n = len(batch['label'])
    problem = bad_label(batch['label'], num_classes) if num_classes is not None else None
    if problem is not None:
      row, what = problem
      position = int(batch['video_index'][row])
      where = f'at position {position} of this process\'s eval stream'
      if shards and counts:
        k = int(np.searchsorted(np.cumsum(counts), position, side='right'))
        where = f'{shards[k]} (record {position - int(np.sum(counts[:k]))})'
      raise stream.LabelError(f'eval record {where} {what}')
    out = {k: np.concatenate([v, np.zeros((local_batch - n,) + v.shape[1:], v.dtype)]) for k, v in batch.items()}
    out['_mask'] = np.arange(local_batch) < n
    yield out
