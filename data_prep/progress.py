"""Progress lines of a running extraction job, read from the per-shard progress files the workers write.

Works the same for local workers and for a remote runner writing to a `gs://` output directory: the launcher polls
`_work/progress/*.json` and `_work/shards/*.json` every `interval_s` seconds and prints one line
`videos 40/128 (2 failed) | 1,234 frames | 95.1 frames/s | elapsed 0:00:31 | ETA 0:01:09`.
"""
from __future__ import annotations

import datetime
import sys
import threading
import time
from collections.abc import Sequence

from data_prep import shards


def _fmt_duration(seconds: float) -> str:
  return str(datetime.timedelta(seconds=int(max(seconds, 0))))


def snapshot(output_dir: str, tasks: Sequence[shards.ShardTask]) -> tuple[int, int, int]:
  """(videos done, videos failed, frames written) over all shards, finished or running."""
  done = failed = frames = 0
  for t in tasks:
    res = shards.read_json(shards.result_path(output_dir, t.name))
    if res and res.get('shard') == t.name:
      done += res['videos']
      failed += len(res['failures'])
      frames += res['frames']
      continue
    prog = shards.read_json(shards.progress_path(output_dir, t.name))
    if prog:
      done += prog['videos']
      failed += prog['failed']
      frames += prog['frames']
  return done, failed, frames


def format_line(done: int, total: int, failed: int, frames: int, new_videos: int, new_frames: int,
                elapsed: float) -> str:
  """One progress line; rates and ETA use only the work of this run (`new_*`), not resumed shards."""
  rate = new_frames / elapsed if elapsed > 0 else 0.0
  eta = '?'
  if new_videos > 0 and done < total:
    eta = _fmt_duration(elapsed / new_videos * (total - done))
  elif done >= total:
    eta = '0:00:00'
  return (f'videos {done}/{total} ({failed} failed) | {frames:,} frames | {rate:.1f} frames/s | '
          f'elapsed {_fmt_duration(elapsed)} | ETA {eta}')


class ProgressMonitor:
  """Background thread printing a progress line every `interval_s` seconds until `stop()`."""

  def __init__(self, output_dir: str, tasks: Sequence[shards.ShardTask], interval_s: float = 10.0, stream=None):
    self._output_dir, self._tasks, self._interval = output_dir, list(tasks), interval_s
    self._total = sum(len(t.videos) for t in tasks)
    self._stream = stream or sys.stderr
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, name='data_prep_progress', daemon=True)
    self._start_time = time.time()
    self._base = (0, 0)

  def start(self) -> ProgressMonitor:
    done, _, frames = snapshot(self._output_dir, self._tasks)
    self._base = (done, frames)
    self._start_time = time.time()
    if self._interval > 0:
      self._thread.start()
    return self

  def line(self) -> str:
    done, failed, frames = snapshot(self._output_dir, self._tasks)
    return format_line(done, self._total, failed, frames, done - self._base[0], frames - self._base[1],
                       time.time() - self._start_time)

  def _run(self) -> None:
    while not self._stop.wait(self._interval):
      try:
        print(f'[data_prep] {self.line()}', file=self._stream, flush=True)
      except Exception as e:  # Never let the display kill the job.
        print(f'[data_prep] progress unavailable: {e}', file=self._stream, flush=True)

  def stop(self) -> None:
    self._stop.set()
    if self._thread.is_alive():
      self._thread.join(timeout=5)
