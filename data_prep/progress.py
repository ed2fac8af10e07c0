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

  def line(self, snap: tuple[int, int, int] | None = None) -> str:
    """The progress line now (from `snap`, a `snapshot`, if given); once every video is done, its rate and elapsed
    time stop at the last shard's end (so the time the runner takes to shut down does not lower the rate)."""
    done, failed, frames = snap or snapshot(self._output_dir, self._tasks)
    end = time.time()
    if done >= self._total:
      end = self._last_result_time() or end
    return format_line(done, self._total, failed, frames, done - self._base[0], frames - self._base[1],
                       end - self._start_time)

  def _last_result_time(self) -> float | None:
    """When the last shard result of this run was written (its file's modification time), or None."""
    g = shards.gfile()
    times = []
    for t in self._tasks:
      try:
        mtime = g.stat(shards.result_path(self._output_dir, t.name)).mtime_nsec / 1e9
      except Exception:  # Not written (yet), or a store without modification times.
        continue
      if mtime >= self._start_time - 1.0:
        times.append(mtime)
    return max(times) if times else None

  def _run(self) -> None:
    while not self._stop.wait(self._interval):
      try:
        snap = snapshot(self._output_dir, self._tasks)
        if snap[0] >= self._total:
          return  # All done: the launcher prints the final line once, after the runner has finished.
        print(f'[data_prep] {self.line(snap)}', file=self._stream, flush=True)
      except Exception as e:  # Never let the display kill the job.
        print(f'[data_prep] progress unavailable: {e}', file=self._stream, flush=True)

  def stop(self) -> None:
    self._stop.set()
    if self._thread.is_alive():
      self._thread.join(timeout=5)
