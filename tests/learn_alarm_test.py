"""The alarm of a run that learns nothing (`metrics.LearningAlarm`): its rule, its outputs (log, metrics.jsonl,
TensorBoard, closing summary, resume) and the demo pair that shows it: `configs/demo.py:target=trajectory_paper` (its
position part stays at the zero baseline at this scale, docs/results.md) raises it, `configs/demo.py` does not (that
half is tests/demo_test.py's learning run)."""
import logging
import math

import pytest

from m3video_jax import metrics as metrics_lib
from m3video_jax import train_lib
from tests import demo_test
from tests import train_test


def interval(position, shape=0.5, moving=True):
  """One interval's scalars with the per-part ratios (on moving tokens, or only overall)."""
  out = {'train/loss': 1.0}
  for part, ratio in (('position', position), ('shape', shape)):
    out[f'train/loss_{part}'] = ratio
    out[f'train/{part}_vs_zero'] = 0.5  # The alarm reads the moving-token ratio where there is one.
    if moving:
      out[f'train/loss_{part}_moving'] = ratio
      out[f'train/{part}_moving_vs_zero'] = ratio
  return out


def run_intervals(alarm, ratios, every=50, **kwargs):
  """Feeds intervals of `every` steps with these position ratios; returns {step: new warnings}."""
  raised = {}
  for k, r in enumerate(ratios):
    new = alarm.update(k * every + 1, (k + 1) * every, interval(r, **kwargs))
    if new:
      raised[(k + 1) * every] = new
  return raised


def test_alarm_fires_once_after_n_intervals_at_or_above_the_bar_after_warmup():
  alarm = metrics_lib.LearningAlarm(3, warmup_steps=100)
  # Two warmup intervals do not count; then three at or above 0.98 in a row: fires at step 250, never again.
  raised = run_intervals(alarm, [1.0, 1.0, 0.99, 0.98, 0.995, 1.0, 0.999, 0.99])
  assert list(raised) == [250] and list(raised[250]) == ['position'], raised
  line = raised[250]['position']
  assert line.startswith("warning: target part 'position' learns nothing from the input")
  for text in ('0.995 of the loss of predicting zero', 'moving hidden tokens', 'in 3 logged intervals after warmup',
               'steps 101..250', '--config.target.balance_parts=True', 'docs/results.md',
               'normalisation and part weighting', 'config.learn_alarm_intervals=0'):
    assert text in line, (text, line)
  assert '\n' not in line
  assert alarm.raised == {'position': line}  # Kept for the closing summary.


def test_alarm_does_not_fire_in_warmup_when_the_ratio_drops_or_when_off():
  # Only inside the warmup (an interval that begins in it does not count either: warmup 120, interval 101..150).
  assert not run_intervals(metrics_lib.LearningAlarm(3, warmup_steps=120), [1.0, 1.0, 1.0, 0.99, 0.99])
  # A drop below the bar (or an undefined ratio) starts the count again.
  alarm = metrics_lib.LearningAlarm(3, warmup_steps=0)
  assert not run_intervals(alarm, [1.0, 0.99, 0.97, 1.0, 0.99, math.nan, 0.99, 0.99, 0.5, 0.3])
  assert not alarm.raised
  assert not run_intervals(metrics_lib.LearningAlarm(0, warmup_steps=0), [1.0] * 20)  # 0 = off.



def test_alarm_names_the_part_and_reads_the_overall_ratio_of_a_part_without_the_moving_split():
  raised = run_intervals(metrics_lib.LearningAlarm(2, warmup_steps=0), [0.1, 0.1], shape=1.0)
  assert list(raised[100]) == ['shape'] and "'shape'" in raised[100]['shape']
  alarm = metrics_lib.LearningAlarm(2, warmup_steps=0)
  for first in (1, 51):
    out = alarm.update(first, first + 49, {'train/loss_pixel': 1.0, 'train/pixel_vs_zero': 0.99})
  assert 'its loss on hidden tokens is 0.990' in out['pixel']
  # One part (nothing to weight) or parts already balanced: the hint names the other switches.
  assert 'balance_parts' not in out['pixel'] and 'position_norm=none' in out['pixel']
  balanced = run_intervals(metrics_lib.LearningAlarm(2, warmup_steps=0, balanced=True), [1.0, 1.0])[100]['position']
  assert 'balance_parts' not in balanced and 'position_norm=none' in balanced


def test_a_resumed_run_goes_on_counting_and_does_not_warn_again():
  full = metrics_lib.LearningAlarm(3, warmup_steps=0)
  entries = []
  for k, r in enumerate([1.0, 1.0, 1.0, 1.0, 1.0]):
    new = full.update(k * 10 + 1, (k + 1) * 10, interval(r))
    entries.append({'step': (k + 1) * 10, **interval(r), **({'alarm': new} if new else {})})
  assert [e['step'] for e in entries if 'alarm' in e] == [30]
  after_alarm = metrics_lib.LearningAlarm(3, warmup_steps=0)
  after_alarm.replay(entries, up_to_step=40)
  assert after_alarm.raised == full.raised and not after_alarm.update(41, 50, interval(1.0))
  before_alarm = metrics_lib.LearningAlarm(3, warmup_steps=0)
  before_alarm.replay(entries, up_to_step=20)  # Two intervals counted: the third (the resumed run's first) fires.
  assert not before_alarm.raised and before_alarm.update(21, 30, interval(1.0)).keys() == {'position'}


def test_a_run_that_learns_nothing_warns_once_in_the_log_metrics_tensorboard_and_summary(tmp_path, caplog):
  from tensorboard.backend.event_processing import event_accumulator
  # Noise clips and targets (`train_test.batches_from`): nothing to learn, every part stays at its zero baseline.
  config = train_test.tiny_config(total_steps=5, log_every_steps=1, checkpoint_every_steps=5, learn_alarm_intervals=2,
                                  **{'optim.warmup_steps': 1})
  with caplog.at_level(logging.INFO):
    train_lib.train_and_evaluate(config, str(tmp_path),
                                 make_batch_iterator=lambda s: train_test.batches_from(config, s))
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and 'learns nothing' in
              r.getMessage()]
  flagged = [e for e in metrics_lib.read_jsonl(str(tmp_path)) if 'alarm' in e]
  assert len(flagged) == 1 and flagged[0]['step'] == 3, flagged  # Intervals 2 and 3 are the two after warmup.
  assert warnings and sorted(warnings) == sorted(flagged[0]['alarm'].values()), (warnings, flagged)
  summary = caplog.text[caplog.text.index('run complete'):]
  assert all(line in summary for line in warnings), summary
  acc = event_accumulator.EventAccumulator(str(tmp_path))
  acc.Reload()
  assert {f'alarm/{part}' for part in flagged[0]['alarm']} <= set(acc.Tags()['tensors'])
  # A run resumed in this workdir re-reads metrics.jsonl: the alarm is not given again, and is still summarised.
  resumed = metrics_lib.LearningAlarm.from_config(config, 1, workdir=str(tmp_path), start_step=5)
  assert resumed.raised == flagged[0]['alarm'] and not resumed.update(6, 6, flagged[0])


# The demo pair on the shortened demo runs of tests/demo_test.py (LEARNING_RUN_ARGS: 160 videos, 1,250 steps logged
# every 250), the alarm after 4 intervals. Measured 2026-12-06 (2 CPU cores shared with other jobs, 4.5 to 5 min per
# run, data prep included): position ratio on moving tokens 1.001, 0.996, 0.993, 0.991 at steps 500..1250 for
# trajectory_paper (alarm at step 1250); 0.991, 0.905, 0.824, 0.778 for trajectory, whose shape part is the closest
# to the bar (0.998, 0.980, 0.968, 0.965: two intervals at or above it). demo_test's learning run is the trajectory
# half of the pair (it asserts that no alarm is raised), on the same prepared videos but 2,000 steps (none on
# 2026-12-07). The full demos (4,000 steps, 480 videos, the default 8 intervals, 5-6 min each): trajectory_paper raises
# it at step 2,250 (position 0.998 on moving tokens), trajectory does not (position 1.004, 0.984, then 0.948 at step
# 1,000 and 0.766 at the end; shape at most 0.990).
@pytest.mark.slow
@pytest.mark.xdist_group('demo_data')
def test_the_paper_faithful_demo_raises_the_alarm(demo_data, tmp_path, optimized_xla):
  last = train_lib.train_and_evaluate(demo_test.learning_run_config(demo_data, 'trajectory_paper'), str(tmp_path))
  flagged = demo_test.alarmed_parts(str(tmp_path))
  assert flagged == {'position'}, (flagged, last)
