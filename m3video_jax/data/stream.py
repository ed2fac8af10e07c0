"""The record stream shared by every training and evaluation input: TFRecord shards written by `data_prep` ->
this process's records, in a seeded, resumable order, with damaged shards and records named or skipped.

Per process: its share of the shards (`process_shards`) -> a cheap check of every shard against its manifest
(`usable_shards`) -> the input's check of every shard's data_prep settings (`prep_settings`, `mismatched_shards`: a
shard of another prep config is named up front, never taken for a corrupt one) -> per-epoch stateless shard shuffle
-> windows of 16 shards, each read interleaved and record-shuffled on its own (`record_stream`; a resume skips whole
windows unread) -> (epoch, global position, record) -> the input's clip function -> local batches -> prefetch
(`train_stream`). Everything random is seeded by (config.seed, process index, epoch, position), so each process's
stream is a deterministic function of the seed and `start_step` resumes it exactly where a run at that step was;
processes draw different sequences.
`TrainIterator` turns records that fail to decode into an error naming the shard and record, or counts them
(`data.skip_corrupt`).

The clip functions and batch layouts of the two inputs: `pretraining.py` (clips + trajectories + HOG) and
`classification.py` (labelled clips and evaluation views).
"""
from __future__ import annotations

import logging
import os
import re
import struct
from typing import Any, Iterator

import numpy as np
import tensorflow as tf

from m3video_jax import cli
from m3video_jax.data import prep_outputs
from m3video_jax.data import schema


# TF only feeds the host; it must not grab GPU/TPU memory that JAX needs.
tf.config.set_visible_devices([], 'GPU')
try:
  tf.config.set_visible_devices([], 'TPU')
except (ValueError, RuntimeError):  # No TPU device type registered.
  pass

SEED_MIX = 1_000_003  # Mixes config.seed with the epoch into per-element seeds.
PROCESS_MIX = 1_000_000_007  # Gives every JAX process its own stream seed (`process_seed`).


def process_seed(config_seed: int, process_index: int = 0) -> int:
  """The seed of process `process_index`'s stream (shard order, record shuffle, every clip's draws): `config.seed`
  itself for process 0, so a one-process run does not change, and another seed for every other process, so processes
  do not repeat each other's augmentation sequence on their different videos."""
  return int(config_seed) + PROCESS_MIX * int(process_index)


def element_seed(stream_seed: int, epoch, index) -> tf.Tensor:
  """The stateless seed of the stream element at position `index` of `epoch` of a process's stream (`stream_seed`
  from `process_seed`): every random choice of a clip derives from it, so a clip does not depend on where the run
  (re)started."""
  return tf.stack([tf.cast(int(stream_seed) * SEED_MIX, tf.int64) + epoch, index])


class DataError(cli.UserError, ValueError):
  """Training or evaluation data that cannot be used; the message names the shard and record (a one-line error)."""


class CorruptRecordError(DataError):
  """A record or shard could not be read or decoded."""


class LabelError(DataError):
  """A record's label is not a class of the model (unlabelled, or beyond `config.model.num_classes`)."""


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


def _manifests(shards: list[str]) -> dict[str, tuple[str, Any]]:
  """`{folder: (manifest path, parsed manifest)}` of the data_prep manifests beside `shards` (folders without one left
  out).

  Raises:
    CorruptRecordError: naming a manifest that cannot be read (`prep_outputs.UnreadableManifestError`'s message).
  """
  out = {}
  for d in sorted({os.path.dirname(s) for s in shards}):
    try:
      found = prep_outputs.read_manifest(d)
    except prep_outputs.UnreadableManifestError as e:
      raise CorruptRecordError(str(e)) from e
    if found is not None:
      out[d] = found
  return out


def _manifest_entries(shards: list[str]) -> dict[str, dict[str, int]]:
  """`{shard path: {'records': n, 'bytes': size}}` from the data_prep manifests beside the shards (where present)."""
  entries: dict[str, dict[str, int]] = {}
  for d, (path, manifest) in _manifests(shards).items():
    try:
      entries.update(prep_outputs.shard_entries(d, path, manifest))
    except prep_outputs.UnreadableManifestError as e:
      raise CorruptRecordError(str(e)) from e
  return entries


# The data_prep settings that decide which clips a shard's records can serve (`prep_settings`).
PREP_SETTINGS = ('schema_version', 'traj_len', 'traj_start_stride', 'segment_frames', 'motion_maps')


def first_record(shard: str) -> bytes | None:
  """The first serialized record of `shard`; None for an empty shard or one whose first record cannot be read (the
  stream names a damaged record when it reaches it)."""
  try:
    for rec in tf.data.TFRecordDataset(shard).take(1):
      return rec.numpy()
  except tf.errors.OpError:
    pass
  return None


def record_prep_settings(serialized: bytes, shard: str) -> dict[str, int]:
  """The `PREP_SETTINGS` one record shows; `segment_frames` is its frame count when it is a segment of a longer video
  (`segment_start` > 0 or `video_frames` > `num_frames`), else 0; `motion_maps` the bit mask of its stored
  flow-derived maps (`schema.motion_maps_mask`).

  Raises:
    CorruptRecordError: naming `shard` when the record is not a data_prep record.
  """
  try:
    rec = schema.parse_example(serialized)
  except schema.SchemaError as e:
    raise CorruptRecordError(f'{shard}: first record is unreadable: {e}') from e
  segment = rec[schema.SEGMENT_START] > 0 or rec[schema.VIDEO_FRAMES] > rec[schema.NUM_FRAMES]
  return {'schema_version': rec[schema.VERSION], 'traj_len': rec[schema.TRAJ_LEN],
          'traj_start_stride': rec[schema.TRAJ_START_STRIDE],
          'segment_frames': rec[schema.NUM_FRAMES] if segment else 0,
          'motion_maps': schema.motion_maps_mask(schema.stored_motion_maps(rec))}


def prep_settings(shards: list[str]) -> dict[str, dict[str, tuple[int, str]]]:
  """Per shard, its data_prep settings (`PREP_SETTINGS`) and where each was read: `{shard: {setting: (value, source)}}`.

  A setting comes from the `manifest.json` beside the shard when that manifest lists the shard (source: the manifest),
  else from the shard's first record (source: the shard): copied shards, shards of several prep runs in one glob, or a
  manifest without the setting. So every shard is judged by its own settings, not by those of the first shard, and it
  stays cheap: one manifest per folder, one first record per shard that no manifest describes. An empty shard without
  a manifest has no settings.
  """
  from concurrent import futures

  described: dict[str, dict[str, tuple[int, str]]] = {}
  for d, (path, manifest) in _manifests(shards).items():
    try:
      config = prep_outputs.prep_config(path, manifest)
      values = {k: (int(config[k] or 0), path) for k in PREP_SETTINGS if k in config and k != 'motion_maps'}
      # A manifest lists the maps as 'hof,mbh' and leaves the key out when there are none (and before version 4).
      values['motion_maps'] = (schema.motion_maps_mask(config.get('motion_maps', '')), path)
      for shard in prep_outputs.shard_entries(d, path, manifest):
        described[shard] = values
    except prep_outputs.UnreadableManifestError as e:
      raise CorruptRecordError(str(e)) from e
    except (ValueError, TypeError) as e:  # A setting that is not a number.
      raise CorruptRecordError(str(prep_outputs.unreadable(path, e))) from e

  def settings(shard):
    values = described.get(shard, {})
    if all(k in values for k in PREP_SETTINGS):
      return values
    raw = first_record(shard)
    if raw is None:
      return values
    return {**{k: (v, shard) for k, v in record_prep_settings(raw, shard).items()}, **values}

  with futures.ThreadPoolExecutor(min(16, len(shards)) or 1) as pool:  # Small reads; parallel for remote stores.
    return dict(zip(shards, pool.map(settings, shards)))


def describe_shards(group: list[str], sources: list[str]) -> str:
  """`a, b, c and 2 more (per <manifest>)` for a message naming shards and where their settings were read."""
  names = ', '.join(group[:3]) + (f' and {len(group) - 3} more' if len(group) > 3 else '')
  manifests = sorted(set(sources) - set(group))  # A shard's own first record goes without saying.
  return f'{names} ({"per " + ", ".join(manifests) if manifests else "read from their first records"})'


def mismatched_shards(settings: dict[str, dict[str, tuple[int, str]]], rules, what: str) -> str | None:
  """One message naming the shards whose settings break `rules`, grouped by setting and value; None if there are none.

  Args:
    settings: `prep_settings(shards)`.
    rules: `(setting, is_bad(value), problem(value))` triples; `problem` says what is wrong and what to do.
    what: the config field the shards come from (e.g. `config.data.train_files`).
  """
  groups: dict[tuple[int, int], list[str]] = {}
  for shard, values in settings.items():
    for i, (key, is_bad, _) in enumerate(rules):
      if key in values and is_bad(values[key][0]):
        groups.setdefault((i, values[key][0]), []).append(shard)
  if not groups:
    return None
  bad = {s for group in groups.values() for s in group}
  problems = [f'{describe_shards(group, [settings[s][rules[i][0]][1] for s in group])} {rules[i][2](value)}'
              for (i, value), group in sorted(groups.items())]
  return (f'{len(bad)} of the {len(settings)} shards of {what} were prepared with data_prep settings this config '
          'cannot use (not damaged: config.data.skip_corrupt does not drop them; prepare them again or leave them out '
          'of the glob): ' + '; '.join(problems))


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


def record_stream(shards: list[str], seed: int, first_epoch: int, shuffle_buffer: int, cycle_length: int, *,
                  counts: list[int] | None = None, offset: int = 0):
  """(epoch, serialized record), epoch after epoch from record `offset` of `first_epoch`.

  An epoch takes the shards in a seeded order (`seed`, epoch) and cuts it into windows of `cycle_length`
  consecutive shards; a window's records are interleaved and shuffled (buffer `shuffle_buffer`, seeded by the epoch
  and the window) on their own. So starting `offset` records into an epoch skips whole windows without reading them
  (their sizes come from `counts`, the records per shard) and reads only the part of one window before `offset`: a
  resume re-reads at most one window, not up to a whole epoch.
  """
  n = len(shards)
  num_windows = -(-n // cycle_length)
  shard_t = tf.constant(shards)
  seed_t = tf.constant(int(seed), tf.int64)

  def order(epoch):
    return tf.random.experimental.stateless_shuffle(tf.range(n, dtype=tf.int64),
                                                    seed=tf.stack([seed_t, tf.cast(epoch, tf.int64)]))

  def window(epoch, k):
    epoch, k = tf.cast(epoch, tf.int64), tf.cast(k, tf.int64)
    mine = order(epoch)[k * cycle_length:(k + 1) * cycle_length]
    files = tf.data.Dataset.from_tensor_slices(tf.gather(shard_t, mine))
    records = files.interleave(tf.data.TFRecordDataset, cycle_length=cycle_length, block_length=1,
                               num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    records = records.shuffle(shuffle_buffer, seed=seed_t * SEED_MIX + epoch * num_windows + k,
                              reshuffle_each_iteration=False)
    return records.map(lambda r: (epoch, r))

  def epoch_ds(epoch, first_window=0):
    return tf.data.Dataset.range(first_window, num_windows).flat_map(lambda k: window(epoch, k))

  first_window, skip = 0, offset
  if offset:
    if counts is None or len(counts) != n:
      raise ValueError('record_stream needs the record count of every shard to start inside an epoch')
    sizes = np.add.reduceat(np.asarray(counts, np.int64)[order(first_epoch).numpy()],
                            np.arange(0, n, cycle_length))
    first_window = int(np.searchsorted(np.cumsum(sizes), offset, side='right'))
    skip = offset - int(np.sum(sizes[:first_window]))
  first = window(first_epoch, first_window).skip(skip).concatenate(epoch_ds(first_epoch, first_window + 1))
  return first.concatenate(tf.data.Dataset.range(first_epoch + 1, 1 << 40).flat_map(epoch_ds))


def train_stream(config, clip_fn, *, clips_per_record: int = 1, stacked: bool = False, min_records: int = 1,
                 process_index: int = 0,
                 process_count: int = 1, start_step: int = 0, shards: list[str] | None = None,
                 check=None) -> tuple[tf.data.Dataset, dict[str, Any]]:
  """This process's training stream, shared by the pretraining and classification inputs.

  Its shards (`process_shards` of `config.data.train_files` or `shards`) -> damaged ones named or dropped
  (`usable_shards`) -> `check(shards)` -> the record stream positioned at `start_step` (every element keeps its global
  stream position, so its seed does not depend on where the run (re)started) -> `clip_fn(epoch, index, serialized)`
  -> errors become gaps in `_id` (`TrainIterator` turns them into an error or a count) -> local batches -> prefetch.

  Args:
    config: the training config (`data.*`, `seed`).
    clip_fn: one record -> a clip dict, or with `stacked` the `clips_per_record` clips of the record, every value
      with a leading `clips_per_record` dim (they go into the same batch, consecutively).
    clips_per_record, stacked: see `clip_fn`.
    min_records: fewest records this process may have.
    process_index, process_count: this process's place among the JAX processes.
    start_step: the optimiser step the stream starts at (resume); skips the records earlier steps consumed.
    shards: override of the shard list (default: `config.data.train_files`).
    check: optional `fn(shards)` run before the stream is built (e.g. that the stored data can serve the clips).

  Returns:
    (dataset of local batches, info dict with shards, records per epoch, local batch size, first stream id and
    clips per record).
  """
  d = config.data
  if d.batch_size % (process_count * clips_per_record):
    raise ValueError(f'config.data.batch_size={d.batch_size} is not divisible by {process_count} processes x '
                     f'{clips_per_record} clips per video')
  local_batch = d.batch_size // process_count
  local_videos = local_batch // clips_per_record
  shards = process_shards(shards or list_shards(d.train_files), process_index, process_count)
  shards, counts = usable_shards(shards, d.skip_corrupt)
  if check is not None:
    check(shards)
  epoch_records = sum(counts)
  if epoch_records < max(min_records, 1):
    raise ValueError(f'this process has {epoch_records} records in {len(shards)} shards, fewer than '
                     f'{max(min_records, 1)}; lower config.data.batch_size or add data: {shards[:5]}')
  first_epoch, offset = divmod(start_step * local_videos, epoch_records)
  ds = record_stream(shards, process_seed(config.seed, process_index), first_epoch, d.shuffle_buffer,
                     min(len(shards), 16), counts=counts, offset=offset)
  ds = ds.enumerate(start=first_epoch * epoch_records + offset).map(lambda i, er: (er[0], i, er[1]))
  calls = tf.data.AUTOTUNE if d.num_parallel_calls == -1 else d.num_parallel_calls
  ds = ds.map(clip_fn, num_parallel_calls=calls, deterministic=True)
  ds = ds.ignore_errors(log_warning=True)
  if stacked:
    ds = ds.unbatch()
  ds = ds.batch(local_batch, drop_remainder=True).prefetch(d.prefetch_batches)
  options = tf.data.Options()
  options.deterministic = True
  options.threading.private_threadpool_size = 0
  ds = ds.with_options(options)
  info = {'shards': shards, 'counts': counts, 'epoch_records': epoch_records, 'local_batch': local_batch,
          'first_id': first_epoch * epoch_records + offset, 'clips_per_record': clips_per_record,
          'seed': process_seed(config.seed, process_index)}
  return ds, info


def locate_record(shards: list[str], seed: int, shuffle_buffer: int, record_id: int, counts: list[int]) -> str:
  """Names the shard and record at stream position `record_id`: `<shard> (record k)`, `... : why` for an unreadable one.

  Replays the (cheap, undecoded) record stream from `record_id` (`counts`: records per shard) to get the record's
  bytes, then finds them in the shards. When the replay itself fails (a damaged shard), the shards are read one by one
  to find the damaged record.
  """
  epoch, offset = divmod(record_id, sum(counts))
  ds = record_stream(shards, seed, epoch, shuffle_buffer, min(len(shards), 16), counts=counts, offset=offset)
  by_content = None
  try:
    for _, rec in ds.take(1):
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

  `make_dataset(config, **kwargs)` builds the stream (`pretraining.make_train_dataset`,
  `classification.make_train_dataset`, both on `train_stream`); a batch holds `info['clips_per_record']` consecutive
  clips of each record. `check_batch(batch)` (optional) returns None or `(row, what is wrong)` for a bad row: the
  iterator raises a `LabelError` naming that row's shard and record.
  """

  def __init__(self, config, make_dataset, check_batch=None, **kwargs):
    self._config = config
    self._check_batch = check_batch
    self._ds, self.info = make_dataset(config, **kwargs)
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
    row_ids = batch.pop('_id')
    if self._check_batch is not None:
      problem = self._check_batch(batch)
      if problem is not None:
        row, what = problem
        where = locate_record(self.info['shards'], self.info['seed'], self._config.data.shuffle_buffer,
                              int(row_ids[row]), self.info['counts'])
        raise LabelError(f'record {where} {what}')
    ids = row_ids[::self._clips_per_record]
    expected = self._next_id + np.arange(len(ids))
    if not np.array_equal(ids, expected):
      gaps = int(ids[-1] - self._next_id + 1 - len(ids))
      first_missing = int(np.setdiff1d(np.arange(self._next_id, ids[-1] + 1), ids)[0])
      if not self._config.data.skip_corrupt:
        where = locate_record(self.info['shards'], self.info['seed'], self._config.data.shuffle_buffer,
                              first_missing, self.info['counts'])
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
