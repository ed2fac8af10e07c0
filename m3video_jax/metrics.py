"""Metric writing: TensorBoard event files in the workdir, a readable console line, and the NaN guard."""
from __future__ import annotations

import logging
import math
import time
from typing import Any, Mapping

import jax
import numpy as np


class NonFiniteLossError(FloatingPointError):
  """The loss became NaN or inf; training stops and the last good checkpoint is kept."""


def mean_metrics(history: list[Mapping[str, Any]]) -> dict[str, float]:
  """Averages a list of per-step metric dicts (one device->host transfer for the whole interval)."""
  host = jax.device_get(history)
  return {k: float(np.mean([h[k] for h in host])) for k in host[0]}


def check_finite(history: list[Mapping[str, Any]], first_step: int) -> None:
  """Raises NonFiniteLossError naming the first step whose loss is not finite."""
  losses = np.asarray(jax.device_get([h['train/loss'] for h in history]), np.float64)
  bad = np.flatnonzero(~np.isfinite(losses))
  if bad.size:
    step = first_step + int(bad[0])
    raise NonFiniteLossError(f'loss is {losses[bad[0]]} at step {step} (interval {first_step}..'
                             f'{first_step + len(losses) - 1}); stopping. Checkpoints before step {first_step} are '
                             'kept; lower optim.base_lr or set optim.grad_clip_norm, then re-run to resume')


class MetricWriter:
  """Writes scalars to TensorBoard (process 0 only) and logs one line per interval."""

  def __init__(self, workdir: str, total_steps: int, enabled: bool = True):
    self._total = total_steps
    self._writer = None
    if enabled:
      import tensorflow as tf  # TF is already loaded by the input pipeline.
      self._writer = tf.summary.create_file_writer(workdir)
    self._last_time = None
    self._last_step = None

  def write(self, step: int, scalars: Mapping[str, float]) -> dict[str, float]:
    now = time.perf_counter()
    scalars = dict(scalars)
    if self._last_time is not None and step > self._last_step:
      scalars['perf/steps_per_sec'] = (step - self._last_step) / (now - self._last_time)
    self._last_time, self._last_step = now, step
    if self._writer is not None:
      import tensorflow as tf
      with self._writer.as_default(step=step):
        for k, v in scalars.items():
          tf.summary.scalar(k, v)
      self._writer.flush()
    logging.info(self.format_line(step, scalars))
    return scalars

  def format_line(self, step: int, s: Mapping[str, float]) -> str:
    parts = [f'step {step}/{self._total}', f'loss {s.get("train/loss", math.nan):.4f}']
    for k in sorted(s):
      if k.startswith('train/loss_'):
        parts.append(f'{k[len("train/loss_"):]} {s[k]:.4f}')
    if 'train/valid_fraction' in s:
      parts.append(f'valid {s["train/valid_fraction"]:.3f}')
    if 'train/lr' in s:
      parts.append(f'lr {s["train/lr"]:.3g}')
    if 'perf/steps_per_sec' in s:
      rate = s['perf/steps_per_sec']
      eta = (self._total - step) / rate if rate > 0 else math.inf
      parts.append(f'{rate:.2f} steps/s')
      parts.append(f'ETA {_format_seconds(eta)}')
    return ' | '.join(parts)

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()


def _format_seconds(s: float) -> str:
  if not math.isfinite(s):
    return '?'
  s = int(s)
  return f'{s // 3600}h{(s % 3600) // 60:02d}m' if s >= 3600 else f'{s // 60}m{s % 60:02d}s'
