"""tf.data input pipeline: TFRecord shards written by `data_prep` -> host-local batches of clips and target inputs.

Stream per process: its share of the shards -> per-epoch stateless shard shuffle -> interleaved reads -> record shuffle
-> (epoch, index)-seeded parse, clip sampling, JPEG decode of the needed frames only, the same crop/flip for frames and
trajectories, trajectory-aligned HOG lookup -> batch (local) -> prefetch. Everything random is seeded by (config.seed, epoch, position), so the stream is
a deterministic function of the seed, and `start_step` resumes it exactly where a run at that step was.

Batch (numpy, leading dim = local batch `b`):
  video       uint8   [b, T, res, res, 3]   RGB (normalised on the device: `tasks.normalize_video`)
  traj_disp   float32 [b, T/pt, G, G, L, 2] (Δx, Δy) in model-input pixels, G = res // 8
  traj_valid  bool    [b, T/pt, G, G]
  traj_hog    float32 [b, T/pt, G, G, L, 9]   only when the target uses it (`ClipSpec.with_hog`)
  traj_quantum float32 [b]                 the storage quantum of traj_disp in model-input pixels (1/4 prep px x the
                                           crop's resize factor; `targets.moving_tokens`)
  label       int32   [b]
  _id         int64   [b]  position in the stream (gaps = skipped corrupt records)
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import struct
from typing import Any, Iterator

import numpy as np
import tensorflow as tf

from m3video_jax.data import pp_ops
from m3video_jax.data import schema

# TF only feeds the host; it must not grab GPU/TPU memory that JAX needs.
tf.config.set_visible_devices([], 'GPU')
try:
  tf.config.set_visible_devices([], 'TPU')
except (ValueError, RuntimeError):  # No TPU device type registered.
  pass

_SEED_MIX = 1_000_003


class CorruptRecordError(ValueError):
  """A record or shard could not be read or decoded."""


def list_shards(patterns: str) -> list[str]:
  """Expands comma-separated globs (local or any tf.io.gfile URL) into a sorted shard list."""
  shards: list[str] = []
  for pattern in [p.strip() for p in patterns.split(',') if p.strip()]:
    shards.extend(tf.io.gfile.glob(pattern))
  shards = sorted(set(shards))
  if not shards:
    raise FileNotFoundError(f'config.data.train_files={patterns!r} matches no file; expected TFRecord shards written '
                            'by `python -m data_prep.extract`')
  return shards


def process_shards(shards: list[str], process_index: int, process_count: int) -> list[str]:
  """This process's shards: every `process_count`-th, starting at `process_index`."""
  mine = shards[process_index::process_count]
  if not mine:
    raise ValueError(f'{len(shards)} shards cannot be split over {process_count} processes; write at least one shard '
                     'per process (data_prep --min_shards)')
  return mine


def _manifest_entries(shards: list[str]) -> dict[str, dict[str, int]]:
  """`{shard path: {'records': n, 'bytes': size}}` from the data_prep manifests beside the shards (where present)."""
  entries: dict[str, dict[str, int]] = {}
  for d in sorted({os.path.dirname(s) for s in shards}):
    path = os.path.join(d, 'manifest.json')
    if not tf.io.gfile.exists(path):
      continue
    try:
      with tf.io.gfile.GFile(path) as f:
        manifest = json.load(f)
      for entry in manifest.get('shards', []):
        entries[os.path.join(d, entry['file'])] = {'records': int(entry['records']), 'bytes': int(entry['bytes'])}
    except (ValueError, KeyError, TypeError, AttributeError) as e:
      raise CorruptRecordError(f'{path} is not a readable data_prep manifest ({type(e).__name__}: {e}); re-run the '
                               'data_prep command that wrote it (it resumes and rewrites the manifest)') from e
  return entries


def _masked_crc32c(data: bytes) -> int:
  import google_crc32c  # A dependency (Beam's TFRecord writer needs it too).

  crc = google_crc32c.value(data)
  return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def shard_problem(path: str, expected_bytes: int | None = None) -> str | None:
  """Why `path` is not a readable TFRecord shard, from its size and its first record's header; None if it looks fine.

  Cheap (one stat and a 12-byte read): it catches a file that is not a TFRecord file (e.g. `manifest.json` matched by a
  glob), an empty or truncated copy (size differs from the manifest's) and a damaged first header. A record damaged
  further in is found when it is read (`find_damaged_record`).
  """
  try:
    size = tf.io.gfile.stat(path).length
    with tf.io.gfile.GFile(path, 'rb') as f:
      header = f.read(12)
  except tf.errors.OpError as e:
    return f'cannot be read ({tf_error_text(e)})'
  if expected_bytes is not None and size != expected_bytes:
    return f'has {size} bytes, but the manifest beside it records {expected_bytes} (truncated or replaced)'
  if size == 0:
    return 'is empty'
  if len(header) < 12 or struct.unpack('<I', header[8:12])[0] != _masked_crc32c(header[:8]):
    return 'does not start with a TFRecord header (not a TFRecord file, or damaged)'
  length = struct.unpack('<Q', header[:8])[0]
  if 12 + length + 4 > size:
    return f'is truncated: its first record needs {12 + length + 4} bytes, the file has {size}'
  return None


def usable_shards(shards: list[str], skip_corrupt: bool,
                  what: str = 'config.data.train_files') -> tuple[list[str], list[int]]:
  """The shards that can be read and their record counts; with `skip_corrupt` the others are dropped with a warning.

  Every shard gets the cheap `shard_problem` check; a shard without a manifest entry is counted by reading it, which
  checks every record. (Shards with a manifest entry are not read here: a record damaged inside one is found when the
  stream reaches it.) Dropping a shard here, before the stream is built, keeps the stream exactly resumable.

  Returns:
    (usable shards, records per usable shard).

  Raises:
    CorruptRecordError: naming the damaged shards (unless `skip_corrupt`), or when no usable shard is left.
  """
  from concurrent import futures

  entries = _manifest_entries(shards)

  def check(shard):
    problem = shard_problem(shard, entries.get(shard, {}).get('bytes'))
    if problem or shard in entries:
      return problem, entries.get(shard, {}).get('records', 0)
    count, why = _read_all(shard)
    return (f'has an unreadable record (record {count}): {why}' if why else None), count

  with futures.ThreadPoolExecutor(min(16, len(shards))) as pool:  # Small reads; parallel for remote stores.
    checked = list(pool.map(check, shards))
  bad = [f'{s} {p}' for s, (p, _) in zip(shards, checked) if p]
  fix = ('Rewrite a damaged shard by deleting it and re-running the same data_prep command (it resumes)'
         + (', or set config.data.skip_corrupt=True to train without it' if what.endswith('train_files') else ''))
  if bad and not skip_corrupt:
    raise CorruptRecordError(f'{len(bad)} of the {len(shards)} shards of {what} cannot be used: ' + '; '.join(bad[:5])
                             + ('; ...' if len(bad) > 5 else '') + f'. {fix}')
  for line in bad:
    logging.warning('skipping shard %s (config.data.skip_corrupt=True)', line)
  kept = [(s, n) for s, (p, n) in zip(shards, checked) if not p]
  if not kept:
    raise CorruptRecordError(f'none of the {len(shards)} shards of {what} can be used: ' + '; '.join(bad[:5]))
  return [s for s, _ in kept], [n for _, n in kept]


def tf_error_text(e: tf.errors.OpError) -> str:
  """The cause in a TF error message, without the function-node prefix and the op suffix."""
  text = re.sub(r'\{\{function_node [^}]*\}\}\s*', '', e.message.strip())
  return re.sub(r'\s*\[Op:\w+\].*$', '', text, flags=re.S).strip()


def _read_all(shard: str) -> tuple[int, str | None]:
  """Reads every record of `shard` (CRC-checked): (records read, why reading stopped early or None)."""
  k = 0
  try:
    for _ in tf.data.TFRecordDataset(shard):
      k += 1
  except tf.errors.OpError as e:
    return k, tf_error_text(e)
  return k, None


def find_damaged_record(shards: list[str]) -> str | None:
  """Reads every record of `shards` and names the first that cannot be read: `<shard> (record k): why`."""
  for shard in shards:
    k, why = _read_all(shard)
    if why:
      return f'{shard} (record {k}): {why}'
  return None


@dataclasses.dataclass(frozen=True)
class ClipSpec:
  """What one training clip looks like (static for the jitted step)."""
  num_frames: int
  frame_stride: int
  tubelet: int
  res: int
  traj_len: int
  grid_step: int = schema.GRID_STEP
  with_hog: bool = True  # Look up trajectory-aligned HOG (`traj_hog`); only the trajectory target's shape part uses it.

  @classmethod
  def from_config(cls, config) -> 'ClipSpec':
    t = config.target
    return cls(num_frames=config.data.num_frames, frame_stride=config.data.frame_stride,
               tubelet=config.model.patch_size[0], res=config.data.res, traj_len=t.traj_len,
               with_hog=t.kind == 'trajectory' and t.shape)


def check_stored_records(shards: list[str], spec: ClipSpec) -> dict[str, int]:
  """Reads the first record of the first non-empty shard and checks that the data can serve `spec`.

  Raises:
    ValueError: naming the shard, when the stored trajectories are shorter than `target.traj_len`, the start stride
      does not divide the tubelet spacing, or the schema version differs.
  """
  for raw, shard in ((r, s) for s in shards for r in tf.data.TFRecordDataset(s).take(1)):
    try:
      rec = schema._parse_example(raw.numpy())  # pylint: disable=protected-access
    except schema.SchemaError as e:
      raise CorruptRecordError(f'{shard}: first record is unreadable: {e}') from e
    if rec[schema.VERSION] != schema.SCHEMA_VERSION:
      raise ValueError(f'{shard} has schema_version={rec[schema.VERSION]}, this code reads {schema.SCHEMA_VERSION}; '
                       're-run data_prep')
    if rec[schema.TRAJ_LEN] < spec.traj_len:
      raise ValueError(f'{shard} stores trajectories of L={rec[schema.TRAJ_LEN]} steps, but config.target.traj_len='
                       f'{spec.traj_len}; re-run data_prep with --traj_len={spec.traj_len} or lower target.traj_len')
    spacing = spec.tubelet * spec.frame_stride
    if spacing % rec[schema.TRAJ_START_STRIDE]:
      raise ValueError(f'{shard} stores trajectory starts every {rec[schema.TRAJ_START_STRIDE]} frames, which does not '
                       f'divide the tubelet spacing tubelet x frame_stride = {spacing}; use an even frame_stride or '
                       're-run data_prep with --traj_start_stride=1')
    return {k: rec[k] for k in (schema.TRAJ_LEN, schema.TRAJ_START_STRIDE, schema.GRID)}
  raise ValueError(f'none of the {len(shards)} shards holds a record: {shards[:5]}')


def make_clip_fn(config, spec: ClipSpec, *, train: bool = True):
  """Returns `fn(epoch, index, serialized) -> features` producing one clip and its target inputs."""
  d = config.data
  feature_spec = schema.tf_feature_spec()
  base_seed = int(config.seed)

  def fn(epoch, index, serialized):
    rec = tf.io.parse_single_example(serialized, feature_spec)
    seed = tf.stack([tf.cast(base_seed * _SEED_MIX, tf.int64) + epoch, index])
    seed_clip, seed_crop, seed_flip = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    frames = tf.sparse.to_dense(rec[schema.FRAMES])
    disp_strings = tf.sparse.to_dense(rec[schema.TRAJ_DISP])
    inside_strings = tf.sparse.to_dense(rec[schema.TRAJ_INSIDE])
    height, width = rec[schema.HEIGHT], rec[schema.WIDTH]
    grid = tf.cast(rec[schema.GRID], tf.int32)
    gh, gw = tf.cast(height, tf.int32) // grid, tf.cast(width, tf.int32) // grid
    num_frames = rec[schema.NUM_FRAMES]
    start_stride = tf.cast(rec[schema.TRAJ_START_STRIDE], tf.int32)

    frame_idx, tubelet_first, start_idx, has_traj = pp_ops.sample_clip(
        num_frames, rec[schema.NUM_STARTS], seed_clip, clip_frames=spec.num_frames, frame_stride=spec.frame_stride,
        tubelet=spec.tubelet, traj_len=spec.traj_len, start_stride=start_stride, random_start=train)
    oy, ox, ch, cw = pp_ops.multiscale_crop_params(height, width, seed_crop, scales=tuple(d.crop_scales),
                                                   max_distort=d.crop_max_distort, res=spec.res, random=train)
    flip = (tf.random.stateless_uniform([], seed_flip) < 0.5) if (d.flip and train) else tf.constant(False)
    video = pp_ops.decode_crop_frames(tf.gather(frames, frame_idx), offset_y=oy, offset_x=ox, crop_h=ch, crop_w=cw,
                                      res=spec.res, flip=flip)
    disp, valid = pp_ops.decode_trajectories(tf.gather(disp_strings, start_idx), tf.gather(inside_strings, start_idx),
                                             gh, gw, tf.cast(rec[schema.TRAJ_LEN], tf.int32), spec.traj_len)
    valid = tf.logical_and(valid, has_traj[:, None, None])
    hog_frames = tf.minimum(tubelet_first[:, None] + tf.range(spec.traj_len)[None, :],
                            tf.cast(num_frames, tf.int32) - 1)
    hog_strings = hog_scales = None
    if spec.with_hog:
      hog_strings = tf.gather(tf.sparse.to_dense(rec[schema.HOG_MAP]), hog_frames)
      hog_scales = tf.gather(tf.sparse.to_dense(rec[schema.HOG_SCALE]), hog_frames)
    disp, valid, hog = pp_ops.crop_flip_trajectories(
        disp, valid, hog_strings, hog_scales, offset_y=oy, offset_x=ox, crop_h=ch, crop_w=cw, res=spec.res, flip=flip,
        grid_step=spec.grid_step)
    hog_feature = {'traj_hog': hog} if spec.with_hog else {}
    return {
        'video': video,
        'traj_disp': disp,
        'traj_valid': valid,
        **hog_feature,
        'traj_quantum': tf.cast(spec.res, tf.float32) / tf.cast(tf.minimum(ch, cw), tf.float32)
                        / schema.DISP_UNITS_PER_PX,
        'label': tf.cast(rec[schema.LABEL], tf.int32),
        '_id': index,
    }

  return fn


def record_stream(shards: list[str], seed: int, first_epoch: int, shuffle_buffer: int, cycle_length: int):
  """(epoch, global index, serialized record), epoch after epoch, each epoch shuffled with its own seed."""
  shard_t = tf.constant(shards)

  def epoch_ds(epoch):
    order = tf.random.experimental.stateless_shuffle(shard_t, seed=tf.stack([tf.constant(seed, tf.int64), epoch]))
    files = tf.data.Dataset.from_tensor_slices(order)
    records = files.interleave(tf.data.TFRecordDataset, cycle_length=cycle_length, block_length=1,
                               num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    records = records.shuffle(shuffle_buffer, seed=seed * _SEED_MIX + epoch, reshuffle_each_iteration=False)
    return records.map(lambda r: (epoch, r))

  return tf.data.Dataset.range(first_epoch, 1 << 40).flat_map(epoch_ds)


def make_train_dataset(config, *, process_index: int = 0, process_count: int = 1, start_step: int = 0,
                       shards: list[str] | None = None) -> tuple[tf.data.Dataset, dict[str, Any]]:
  """Builds this process's training stream.

  Args:
    config: the training config (`data.*`, `model.patch_size`, `target.traj_len`, `seed`).
    process_index, process_count: this process's place among the JAX processes.
    start_step: the optimiser step the stream starts at (resume); skips the records earlier steps consumed.
    shards: override of the shard list (default: `config.data.train_files`).

  Returns:
    (dataset of local batches, info dict with shards, records per epoch, local batch size).
  """
  d = config.data
  spec = ClipSpec.from_config(config)
  if d.batch_size % process_count:
    raise ValueError(f'config.data.batch_size={d.batch_size} is not divisible by {process_count} processes')
  local_batch = d.batch_size // process_count
  shards = process_shards(shards or list_shards(d.train_files), process_index, process_count)
  shards, counts = usable_shards(shards, d.skip_corrupt)
  check_stored_records(shards, spec)
  epoch_records = sum(counts)
  if not epoch_records:
    raise ValueError(f'the {len(shards)} shards of this process hold no record: {shards[:5]}')
  consumed = start_step * local_batch
  first_epoch, offset = divmod(consumed, epoch_records)
  ds = record_stream(shards, int(config.seed), first_epoch, d.shuffle_buffer, min(len(shards), 16))
  # Global position in the stream, so an element's seed does not depend on where the run (re)started.
  ds = ds.enumerate(start=first_epoch * epoch_records).map(lambda i, er: (er[0], i, er[1]))
  ds = ds.skip(offset)
  calls = tf.data.AUTOTUNE if d.num_parallel_calls == -1 else d.num_parallel_calls
  ds = ds.map(make_clip_fn(config, spec, train=True), num_parallel_calls=calls, deterministic=True)
  ds = ds.ignore_errors(log_warning=True)  # Errors surface as gaps in `_id`; the iterator decides what they mean.
  ds = ds.batch(local_batch, drop_remainder=True).prefetch(d.prefetch_batches)
  options = tf.data.Options()
  options.deterministic = True
  options.threading.private_threadpool_size = 0
  ds = ds.with_options(options)
  info = {'shards': shards, 'epoch_records': epoch_records, 'local_batch': local_batch,
          'first_id': first_epoch * epoch_records + offset, 'clips_per_record': 1}
  return ds, info


def locate_record(shards: list[str], seed: int, shuffle_buffer: int, record_id: int, epoch_records: int) -> str:
  """Names the shard and record at stream position `record_id`: `<shard> (record k)`, `... : why` for an unreadable one.

  Replays the (cheap, undecoded) record stream to get the record's bytes, then finds them in the shards. When the
  replay itself fails (a damaged shard), the shards are read one by one to find the damaged record.
  """
  epoch = record_id // epoch_records
  ds = record_stream(shards, seed, epoch, shuffle_buffer, min(len(shards), 16))
  ds = ds.enumerate(start=epoch * epoch_records)
  by_content = None
  try:
    for _, (_, rec) in ds.skip(record_id - epoch * epoch_records).take(1):
      by_content = rec.numpy()
    if by_content is not None:
      for shard in shards:
        for k, rec in enumerate(tf.data.TFRecordDataset(shard)):
          if rec.numpy() == by_content:
            return f'{shard} (record {k})'
  except tf.errors.OpError:
    pass
  return find_damaged_record(shards) or 'an unknown shard'


class TrainIterator:
  """Iterates numpy batches; turns skipped records into an error naming the shard, or counts them.

  With `config.data.skip_corrupt=False` a record that fails to decode stops training with a `CorruptRecordError`
  naming the shard and record; with True it is skipped and counted in `num_skipped`.

  `make_dataset` builds the stream (default: the pretraining clips of `make_train_dataset`; the classification input
  passes its own, which puts `info['clips_per_record']` consecutive clips of each record in a batch).
  """

  def __init__(self, config, *, make_dataset=None, **kwargs):
    self._config = config
    self._ds, self.info = (make_dataset or make_train_dataset)(config, **kwargs)
    self._clips_per_record = self.info['clips_per_record']
    self._it = self._ds.as_numpy_iterator()
    self._next_id = self.info['first_id']
    self.num_skipped = 0

  def __iter__(self) -> 'TrainIterator':
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    try:
      batch = next(self._it)
    except tf.errors.OpError as e:  # TF does not say which shard; read them one by one to find it.
      where = find_damaged_record(self.info['shards']) or f'one of {self.info["shards"][:5]}: {tf_error_text(e)}'
      raise CorruptRecordError(f'reading the training shards failed at {where}; a damaged shard is rewritten by '
                               'deleting it and re-running the same data_prep command (it resumes)') from e
    ids = batch.pop('_id')[::self._clips_per_record]
    expected = self._next_id + np.arange(len(ids))
    if not np.array_equal(ids, expected):
      gaps = int(ids[-1] - self._next_id + 1 - len(ids))
      first_missing = int(np.setdiff1d(np.arange(self._next_id, ids[-1] + 1), ids)[0])
      if not self._config.data.skip_corrupt:
        where = locate_record(self.info['shards'], int(self._config.seed), self._config.data.shuffle_buffer,
                              first_missing, self.info['epoch_records'])
        raise CorruptRecordError(f'record {where} could not be read or decoded into a clip (see the TensorFlow '
                                 'warning above for the cause); rewrite its shard (delete it and re-run the same '
                                 'data_prep command, which resumes), or set config.data.skip_corrupt=True to skip '
                                 'such records')
      self.num_skipped += gaps
      logging.warning('skipped %d corrupt record(s) (total %d)', gaps, self.num_skipped)
    self._next_id = int(ids[-1]) + 1
    return batch


def iterate_shard_records(shard: str) -> Iterator[bytes]:
  """Raw serialized records of one shard, for tools and tests."""
  for rec in tf.data.TFRecordDataset(shard):
    yield rec.numpy()
