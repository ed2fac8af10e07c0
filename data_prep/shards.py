"""Deterministic shard plan, atomic shard writing and the resume state of an extraction job.

Layout of `output_dir`: the shards (only complete shards are ever visible under their name) and the files beside
them, `manifest.json`, `failures.jsonl` and `label_map.json` (their names, keys and readers:
`m3video_jax/data/prep_outputs.py`), and this module's resume state:
  _work/plan.json                    the fingerprint of inputs + config this output belongs to, and its shard prefix
  _work/shards/<shard>.json          per-shard result, written after the shard was renamed into place
  _work/progress/<shard>.json        videos done so far in a running shard (for the progress display)
  _work/tmp/                         shards being written (temp names; deleted at the next start)
  _work/lock                         held (flock) by the running job; names its pid, host and start time

Video i of the sorted input list goes to shard `i mod M`, so a re-run with the same inputs and config rebuilds exactly
the same shards; a shard counts as done when its `_work/shards/<shard>.json` exists and the shard file has the size
recorded there. Shards are written to `_work/tmp` and renamed into place, then the result JSON is written (atomically):
a kill at any point leaves either no shard, or a complete shard that is redone (identically) on the next run.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import re
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from data_prep.options import PrepConfig
from data_prep.input_files import VideoInput
from m3video_jax import cli
from m3video_jax.data import prep_outputs

WORK_DIR = '_work'
BEAM_LOG = 'beam.log'  # In WORK_DIR: what Beam, its workers and TF printed (data_prep.extract; all with --verbose).
MANIFEST, FAILURES, LABEL_MAP = prep_outputs.MANIFEST, prep_outputs.FAILURES, prep_outputs.LABEL_MAP
LOCK = 'lock'


class OutputDirInUseError(ValueError):
  """Another job holds the lock of the output directory."""


gfile = prep_outputs.gfile  # tf.io.gfile: local paths and gs:// alike.
join = prep_outputs.join  # os.path.join that also works for URLs (`gs://bucket/dir`).


def shard_name(prefix: str, index: int, num_shards: int) -> str:
  return f'{prefix}-{index:05d}-of-{num_shards:05d}.tfrecord'


def is_shard_name(name: str, prefixes: Sequence[str]) -> bool:
  """Whether file `name` is a shard `<prefix>-NNNNN-of-MMMMM.tfrecord` of one of `prefixes` (`shard_name`)."""
  return any(re.fullmatch(re.escape(p) + r'-\d{5,}-of-\d{5,}\.tfrecord', name) for p in prefixes)


@dataclasses.dataclass(frozen=True)
class ShardTask:
  """One unit of work: the videos of one shard."""
  index: int
  num_shards: int
  prefix: str
  videos: tuple[VideoInput, ...]

  @property
  def name(self) -> str:
    return shard_name(self.prefix, self.index, self.num_shards)


def num_shards_for(num_videos: int, videos_per_shard: int, min_shards: int) -> int:
  """`max(ceil(n / videos_per_shard), min(n, min_shards))`: enough shards to keep every worker busy."""
  if num_videos == 0:
    return 0
  return max(math.ceil(num_videos / videos_per_shard), min(num_videos, min_shards))


def plan_shards(videos: Sequence[VideoInput], prefix: str, videos_per_shard: int = 64,
                min_shards: int = 16) -> list[ShardTask]:
  """Assigns video i (inputs sorted by path) to shard `i mod M`."""
  if videos_per_shard < 1:
    raise ValueError(f'videos_per_shard={videos_per_shard} must be >= 1')
  n = num_shards_for(len(videos), videos_per_shard, min_shards)
  return [ShardTask(i, n, prefix, tuple(videos[i::n])) for i in range(n)]


def fingerprint(tasks: Sequence[ShardTask], config: PrepConfig) -> str:
  """Identifies what an output directory holds: the config and the exact assignment of inputs to shards."""
  h = hashlib.sha1(json.dumps(config.to_json(), sort_keys=True).encode())
  for t in tasks:
    h.update(f'\n#{t.name}'.encode())
    for v in t.videos:
      h.update(f'\n{v.path}\t{v.label}\t{v.label_name}'.encode())
  return h.hexdigest()


@contextlib.contextmanager
def output_dir_lock(output_dir: str):
  """Holds an exclusive lock on a local `output_dir` for the job's lifetime (`_work/lock`, flock).

  The OS releases the lock when the process ends however it ends (exit, exception, SIGKILL), so a stale lock never
  blocks a re-run. Remote output directories (`gs://...`) have no lock: run one job per directory there.

  Raises:
    OutputDirInUseError: naming the holder (pid, host, start time) when another job holds the lock.
  """
  if '://' in output_dir:
    yield
    return
  os.makedirs(os.path.join(output_dir, WORK_DIR), exist_ok=True)

  def in_use(holder: str) -> Exception:
    return OutputDirInUseError(f'--output_dir={output_dir} is in use by another data_prep job ({holder}); wait for it '
                               'to finish (or stop it) and re-run this command, which then resumes, or use another '
                               '--output_dir')

  with cli.exclusive_lock(os.path.join(output_dir, WORK_DIR, LOCK), in_use):
    yield


def write_json_atomic(path: str, data: Any) -> None:
  tmp = f'{path}.tmp-{uuid.uuid4().hex[:8]}'
  with gfile().GFile(tmp, 'w') as f:
    f.write(json.dumps(data, indent=1, sort_keys=True))
  gfile().rename(tmp, path, overwrite=True)


def read_json(path: str) -> Any | None:
  """The parsed file, or None if it does not exist or is not valid JSON (e.g. a partial write by another tool)."""
  g = gfile()
  if not g.exists(path):
    return None
  try:
    with g.GFile(path, 'r') as f:
      return json.loads(f.read())
  except (ValueError, OSError):
    return None


def result_path(output_dir: str, task_name: str) -> str:
  return join(output_dir, WORK_DIR, 'shards', task_name + '.json')


def progress_path(output_dir: str, task_name: str) -> str:
  return join(output_dir, WORK_DIR, 'progress', task_name + '.json')


def completed_result(output_dir: str, task: ShardTask) -> dict[str, Any] | None:
  """The stored result of a shard if the shard is complete (result JSON present, shard file of the recorded size)."""
  res = read_json(result_path(output_dir, task.name))
  if not res or res.get('shard') != task.name:
    return None
  path = join(output_dir, task.name)
  g = gfile()
  if not g.exists(path) or g.stat(path).length != res.get('bytes'):
    return None
  return res


def prepare_output_dir(output_dir: str, tasks: Sequence[ShardTask], config: PrepConfig, *,
                       overwrite: bool = False) -> None:
  """Creates the layout, checks that an existing output belongs to the same job, and removes stale temp files.

  With `overwrite`, an output of other inputs or another config is deleted first: its shards (`<prefix>-NNNNN-of-
  MMMMM.tfrecord`, of this job's prefix and of the prefix the earlier job recorded), `manifest.json`, `failures.jsonl`
  and `_work/` (but the lock). Any other file, a `*.tfrecord` of the user's included, is kept.

  Raises:
    ValueError: if `output_dir` holds the output of other inputs or another config (and not `overwrite`).
  """
  g = gfile()
  fp = fingerprint(tasks, config)
  plan_file = join(output_dir, WORK_DIR, 'plan.json')
  old = read_json(plan_file)
  earlier = [(old or {}).get('prefix'), ((read_json(join(output_dir, MANIFEST)) or {}).get('job') or {}).get('prefix')]
  prefixes = {t.prefix for t in tasks} | {p for p in earlier if p}
  existing = [n for n in (g.listdir(output_dir) if g.isdir(output_dir) else []) if is_shard_name(n, prefixes)]
  if (old and old.get('fingerprint') != fp) or (not old and existing):
    if not overwrite:
      raise ValueError(f'--output_dir={output_dir} already holds shards of other inputs or another config '
                       f'({len(existing)} shards); use a new --output_dir or pass --overwrite to delete them')
    for name in existing:
      g.remove(join(output_dir, name))
    for name in (MANIFEST, FAILURES):
      if g.exists(join(output_dir, name)):
        g.remove(join(output_dir, name))
    work = join(output_dir, WORK_DIR)
    for name in (g.listdir(work) if g.isdir(work) else []):
      if name != LOCK:  # The running job's lock stays (deleting it would let a second job lock a new file).
        path = join(work, name.rstrip('/'))
        g.rmtree(path) if g.isdir(path) else g.remove(path)
  for sub in ('shards', 'progress', 'tmp'):
    g.makedirs(join(output_dir, WORK_DIR, sub))
  tmp_dir = join(output_dir, WORK_DIR, 'tmp')
  for name in g.listdir(tmp_dir):  # Leftovers of a killed run.
    g.remove(join(tmp_dir, name))
  write_json_atomic(plan_file, {'fingerprint': fp, 'num_shards': len(tasks), 'config': config.to_json(),
                                'prefix': tasks[0].prefix if tasks else ''})


@dataclasses.dataclass
class VideoOutcome:
  """What processing one video produced: its serialized records (one, or its segments), or a failure (None)."""
  path: str
  records: list[bytes] | None = None
  num_frames: int = 0
  non_jpeg_bytes: int = 0
  jpeg_bytes: int = 0
  reason: str = ''
  message: str = ''
  stage_seconds: dict[str, float] = dataclasses.field(default_factory=dict)


def write_shard(output_dir: str, task: ShardTask, process: Callable[[VideoInput], VideoOutcome], *,
                on_video: Callable[[VideoOutcome], None] | None = None) -> dict[str, Any]:
  """Processes the videos of one shard, writes the shard atomically and then its result JSON.

  Args:
    output_dir: the job's output directory (local or URL).
    task: the shard.
    process: per-video function; must not raise for a bad video (it returns a failed `VideoOutcome`).
    on_video: called after every video (progress, counters).

  Returns:
    The shard's result (also stored as `_work/shards/<shard>.json`).
  """
  import tensorflow as tf

  g = gfile()
  final = join(output_dir, task.name)
  tmp = join(output_dir, WORK_DIR, 'tmp', f'{task.name}.tmp-{uuid.uuid4().hex[:8]}')
  t0 = time.time()
  records, failures, frames, non_jpeg, jpeg, ids = 0, [], 0, 0, 0, []
  stage_seconds: dict[str, float] = {}
  done_count = 0
  try:
    with tf.io.TFRecordWriter(tmp) as writer:
      for video in task.videos:
        out = process(video)
        done_count += 1
        for k, v in out.stage_seconds.items():
          stage_seconds[k] = stage_seconds.get(k, 0.0) + v
        if out.records is None:
          failures.append({'path': video.path, 'reason': out.reason, 'message': out.message, 'shard': task.name})
        else:
          for record in out.records:
            writer.write(record)
          records += len(out.records)
          frames += out.num_frames
          non_jpeg += out.non_jpeg_bytes
          jpeg += out.jpeg_bytes
        write_json_atomic(progress_path(output_dir, task.name),
                          {'videos': done_count, 'failed': len(failures), 'frames': frames})
        if on_video is not None:
          on_video(out)
    g.rename(tmp, final, overwrite=True)
  finally:
    if g.exists(tmp):
      g.remove(tmp)
  result = {'shard': task.name, 'index': task.index, 'records': records, 'bytes': g.stat(final).length,
            'videos': len(task.videos), 'failures': failures, 'frames': frames, 'non_jpeg_bytes': non_jpeg,
            'jpeg_bytes': jpeg, 'seconds': time.time() - t0, 'stage_seconds': stage_seconds,
            'worker': f'{socket.gethostname()}:{os.getpid()}'}  # Which worker process wrote it (spread checks).
  write_json_atomic(result_path(output_dir, task.name), result)
  return result
