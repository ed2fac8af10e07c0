"""Metric writing: TensorBoard event files and `metrics.jsonl` in the workdir, a readable console line, the NaN guard.

`metrics.jsonl` holds one JSON object per logging interval, `{"step": ..., "<tag>": value, ...}` with the TensorBoard
tags; a resumed run appends to it (`read_jsonl` keeps the last entry of each step). The interval in which
`LearningAlarm` fires also carries `"alarm": {"<part>": "<warning line>"}` (and a TensorBoard text `alarm/<part>`).
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from typing import Any, Mapping

import jax
import numpy as np


class NonFiniteLossError(FloatingPointError):
  """The loss became NaN or inf; training stops and the last good checkpoint is kept."""


def mean_metrics(history: list[Mapping[str, Any]]) -> dict[str, float]:
  """Averages a list of per-step metric dicts (one device->host transfer for the whole interval).

  A ratio `<g>/<x>_vs_zero` whose `<g>/loss_<x>` and `<g>/zero_<x>` are present is the ratio of their interval means
  (not the mean of the per-step ratios, which a step with a tiny zero loss would dominate); NaN if the zero loss is 0.
  """
  host = jax.device_get(history)
  out = {k: float(np.mean([h[k] for h in host])) for k in host[0]}
  for k in out:
    group, sep, name = k.rpartition('/')
    if not name.endswith(_VS_ZERO):
      continue
    part = name[:-len(_VS_ZERO)]
    loss, zero = out.get(f'{group}{sep}loss_{part}'), out.get(f'{group}{sep}zero_{part}')
    if loss is not None and zero is not None:
      out[k] = loss / zero if zero > 0 else math.nan
  return out


_VS_ZERO = '_vs_zero'


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
  """Writes scalars to TensorBoard and `metrics.jsonl` and logs one line per interval (all only when `enabled`:
  process 0 of a multi-process run)."""

  def __init__(self, workdir: str, total_steps: int, enabled: bool = True):
    self._total = total_steps
    self._enabled = enabled
    self._writer = None
    self._jsonl = None
    if enabled:
      import tensorflow as tf  # TF is already loaded by the input pipeline.
      self._writer = tf.summary.create_file_writer(workdir)
      self._jsonl = os.path.join(workdir, METRICS_FILE)
    self._last_time = None
    self._last_step = None

  def write(self, step: int, scalars: Mapping[str, float], alarms: Mapping[str, str] | None = None) -> dict[str, float]:
    """Writes one interval's `scalars`; `alarms` (`{part: warning line}`, `LearningAlarm.update`) also go to TensorBoard
    as text `alarm/<part>`, to the entry's `"alarm"` and to the log as warnings."""
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
        for part, line in (alarms or {}).items():
          tf.summary.text(f'alarm/{part}', line)
      self._writer.flush()
    if self._jsonl is not None:
      entry = {'step': step, **{k: _json_number(v) for k, v in scalars.items()}}
      if alarms:
        entry['alarm'] = dict(alarms)
      with open(self._jsonl, 'a') as f:
        f.write(json.dumps(entry) + '\n')
    if self._enabled:
      logging.info(self.format_line(step, scalars))
      for line in (alarms or {}).values():
        logging.warning(line)
    return scalars

  def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
    """uint8 RGB `[H, W, 3]` images to TensorBoard (process 0 only)."""
    if self._writer is None or not images:
      return
    import tensorflow as tf
    with self._writer.as_default(step=step):
      for k, v in images.items():
        tf.summary.image(k, np.asarray(v, np.uint8)[None], max_outputs=1)
    self._writer.flush()

  def format_line(self, step: int, s: Mapping[str, float]) -> str:
    """`step | loss | <part> <loss> (vs zero <r>, moving <r>, static <r>) | ... | moving | valid | lr | steps/s | ETA`.

    `r` = the part's loss over its zero-prediction loss: overall, on the hidden tokens that move, on those that
    do not."""
    parts = [f'step {step}/{self._total}', f'loss {s.get("train/loss", math.nan):.4f}']
    for k in sorted(s):
      if not k.startswith('train/loss_'):
        continue
      part = k[len('train/loss_'):]
      if part.endswith(('_moving', '_static')) and f'train/loss_{part[:-7]}' in s:
        continue  # Shown as a ratio beside its part.
      text = f'{part} {s[k]:.4f}'
      ratios = [(label, s.get(f'train/{part}{suffix}{_VS_ZERO}'))
                for label, suffix in (('vs zero', ''), ('moving', '_moving'), ('static', '_static'))]
      shown = [f'{label} {format_ratio(r)}' for label, r in ratios if r is not None]
      if shown:
        text += f' ({", ".join(shown)})'
      parts.append(text)
    if 'train/moving_fraction' in s:
      parts.append(f'moving {s["train/moving_fraction"]:.3f}')
    if 'train/valid_fraction' in s:
      parts.append(f'valid {s["train/valid_fraction"]:.3f}')
    if 'train/lr' in s:
      parts.append(f'lr {s["train/lr"]:.3g}')
    if 'perf/steps_per_sec' in s:
      rate = s['perf/steps_per_sec']
      eta = (self._total - step) / rate if rate > 0 else math.inf
      parts.append(f'{rate:.2f} steps/s')
      parts.append(f'ETA {format_seconds(eta)}')
    return ' | '.join(parts)

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()


METRICS_FILE = 'metrics.jsonl'
LEARN_ALARM_RATIO = 0.98  # A part's loss at or above this share of its zero-prediction loss learns ~nothing.
PART_WEIGHTING_DOC = 'docs/results.md, "What hides the motion: normalisation and part weighting"'


class LearningAlarm:
  """Says, once per run and part, when a target part learns nothing from the input.

  The loss can fall while one part stays at its zero baseline (the paper-faithful target's position part at CPU scale,
  docs/results.md): only the part's own ratio shows it. The alarm fires for a part when its loss on the hidden tokens
  that move, over the loss of predicting zero there (`train/<part>_moving_vs_zero`; `<part>_vs_zero` for a part
  without the split), has been >= `LEARN_ALARM_RATIO` in `intervals` consecutive logged intervals that began after
  the warmup. An interval below the bar (or undefined) starts the count again; intervals inside the warmup do not
  count. `intervals` = 0 turns it off.
  """

  def __init__(self, intervals: int, warmup_steps: int, *, balanced: bool = False,
               threshold: float = LEARN_ALARM_RATIO):
    self.intervals = int(intervals)
    self.warmup_steps = int(warmup_steps)
    self.threshold = float(threshold)
    self._balanced = balanced  # target.balance_parts is already on: the hint names the other switches.
    self._streak: dict[str, tuple[int, int]] = {}  # part -> (intervals in a row at or above the bar, first step)
    self.raised: dict[str, str] = {}  # part -> its warning line, once per run

  @classmethod
  def from_config(cls, config, warmup_steps: int, *, workdir: str | None = None,
                  start_step: int = 0) -> 'LearningAlarm':
    """The alarm of a training config (`learn_alarm_intervals`; `warmup_steps` as clamped by `optim.warmup_steps`).
    A run resumed at `start_step` re-counts the intervals its `workdir`'s `metrics.jsonl` logged up to there
    (`replay`); an unreadable file only restarts the count."""
    target = config.get('target')
    alarm = cls(config.get('learn_alarm_intervals', 0), warmup_steps,
                balanced=bool(target is not None and target.get('balance_parts', False)))
    if workdir is not None and start_step > 0 and alarm.intervals > 0:
      try:
        alarm.replay(read_jsonl(workdir), start_step)
      except (OSError, ValueError, KeyError, TypeError) as e:
        logging.warning('learning alarm: %s not re-read (%s: %s); counting from step %d', METRICS_FILE,
                        type(e).__name__, e, start_step + 1)
    return alarm

  @staticmethod
  def part_ratios(scalars: Mapping[str, float]) -> dict[str, tuple[float, bool]]:
    """`{part: (ratio, on moving tokens)}` of the target parts in one interval's scalars."""
    out = {}
    for k in scalars:
      if not k.startswith('train/loss_') or k.endswith(('_moving', '_static')):
        continue
      part = k[len('train/loss_'):]
      moving = scalars.get(f'train/{part}_moving{_VS_ZERO}')
      overall = scalars.get(f'train/{part}{_VS_ZERO}')
      if moving is not None:
        out[part] = (float(moving), True)
      elif overall is not None:
        out[part] = (float(overall), False)
    return out

  def update(self, first_step: int, step: int, scalars: Mapping[str, float]) -> dict[str, str]:
    """Counts the logged interval `first_step..step`; returns `{part: warning line}` for the parts it raises."""
    if self.intervals <= 0:
      return {}
    new = {}
    ratios = self.part_ratios(scalars)
    for part, (ratio, moving) in ratios.items():
      if first_step <= self.warmup_steps or not ratio >= self.threshold:  # NaN (no zero loss) does not count.
        self._streak.pop(part, None)
        continue
      count, since = self._streak.get(part, (0, first_step))
      self._streak[part] = (count + 1, since)
      if count + 1 >= self.intervals and part not in self.raised:
        self.raised[part] = new[part] = self._message(part, ratio, moving, since, step, weighable=len(ratios) > 1)
    return new

  def replay(self, entries: list[dict[str, Any]], up_to_step: int) -> None:
    """Re-counts the logged intervals of `metrics.jsonl` entries up to `up_to_step` (a resumed run), silently, so the
    count goes on and an alarm already given is not given again."""
    previous = 0
    for entry in entries:
      if entry['step'] > up_to_step:
        break
      scalars = {k: (math.nan if v is None else v) for k, v in entry.items() if k.startswith('train/')}
      self.update(previous + 1, entry['step'], scalars)
      for part, line in (entry.get('alarm') or {}).items():
        self.raised.setdefault(part, line)
      previous = entry['step']

  def _message(self, part: str, ratio: float, moving: bool, since: int, step: int, *, weighable: bool) -> str:
    tokens = 'moving hidden tokens' if moving else 'hidden tokens'
    hint = ('--config.target.balance_parts=True (the target parts weighted equally)' if weighable and not self._balanced
            else '--config.target.position_norm=none, a longer run, or a look at the stored trajectories '
                 '(python -m m3video_jax.visualize)')
    return (f'warning: target part {part!r} learns nothing from the input: its loss on {tokens} is {ratio:.3f} of '
            f'the loss of predicting zero (>= {self.threshold:g} in {self.intervals} logged intervals after warmup, '
            f'steps {since}..{step}); try {hint}, see {PART_WEIGHTING_DOC} (config.learn_alarm_intervals=0 turns '
            'this check off)')


def _json_number(v: float) -> float | None:
  v = float(v)
  return v if math.isfinite(v) else None  # JSON has no NaN; null marks an undefined ratio.


def read_jsonl(workdir: str) -> list[dict[str, Any]]:
  """The entries of `<workdir>/metrics.jsonl` by increasing step (a step logged twice, e.g. by a resumed run, keeps its
  last entry); [] if there is none."""
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return []
  by_step = {}
  with open(path) as f:
    for line in f:
      if line.strip():
        entry = json.loads(line)
        by_step[entry['step']] = entry
  return [by_step[k] for k in sorted(by_step)]


def format_ratio(r: float | None, digits: int = 3) -> str:
  """A loss ratio for text; 'n/a' when it is undefined (None or NaN: the zero loss was 0)."""
  return 'n/a' if r is None or not math.isfinite(r) else f'{r:.{digits}f}'


def format_seconds(s: float) -> str:
  if not math.isfinite(s):
    return '?'
  s = int(s)
  return f'{s // 3600}h{(s % 3600) // 60:02d}m' if s >= 3600 else f'{s // 60}m{s % 60:02d}s'
