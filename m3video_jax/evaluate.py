"""The `m3video_jax.evaluate` CLI (the library is `evaluation.py`): tests a finished or interrupted fine-tuning /
probing run's checkpoint again (multi-view, paper protocol).

  python -m m3video_jax.evaluate --workdir=$WD [--views=2x3] [--eval_files='/data/ssv2_prep/val-*.tfrecord'] \
      [--step=N]

Reads `$WD/config.json` and the checkpoint (default: the latest), runs the task's test (`tasks.FinetuneTask`:
per-view softmax averaged per video, top-1 / top-5, `evaluation.py`), writes `eval/top1`, `eval/top5`, `eval/loss` to
TensorBoard in `$WD` and `$WD/eval_results.json`, and prints the results as one JSON line.
"""
from __future__ import annotations

import json
import os
import sys

from m3video_jax import cli


def define_flags(fv) -> None:
  from absl import flags

  flags.DEFINE_string('workdir', None, 'Workdir of a finetune / linear_probe run (config.json + checkpoints).',
                      flag_values=fv, required=True)
  flags.DEFINE_string('views', '', 'Test views TxS (temporal x spatial); default: config.eval.test_*_views.',
                      flag_values=fv)
  flags.DEFINE_string('eval_files', '', 'Override of config.data.eval_files.', flag_values=fv)
  flags.DEFINE_integer('step', None, 'Checkpoint step (default: latest).', flag_values=fv)


def parse_views(text: str) -> tuple[int, int] | None:
  """'2x3' -> (2, 3); '' -> None (the config's views)."""
  if not text:
    return None
  parts = text.lower().split('x')
  if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
    raise ValueError(f'--views={text!r} must be TxS with positive integers, e.g. 2x3')
  return int(parts[0]), int(parts[1])


def _main(f, rest) -> None:
  del rest
  import jax
  import ml_collections

  from m3video_jax import metrics as metrics_lib
  from m3video_jax import tasks

  workdir = os.path.abspath(f.workdir)
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    raise FileNotFoundError(f'--workdir={workdir} has no config.json; expected the workdir of a finetune or '
                            'linear_probe run of m3video_jax.main')
  with open(path) as fp:
    config = ml_collections.ConfigDict(json.load(fp))
  views = parse_views(f.views)
  if f.eval_files:
    config.data.eval_files = f.eval_files
  config.model.patch_size = tuple(config.model.patch_size)
  task = tasks.get_task(config)
  results, results_path, step = task.evaluate_checkpoint(workdir, step=f.step, views=views)
  writer = metrics_lib.MetricWriter(workdir, config.total_steps, enabled=jax.process_index() == 0)
  writer.write(step, {f'eval/{k}': v for k, v in results.items() if k != 'num_videos'})
  writer.close()
  print(json.dumps({'step': step, **results}))
  cli.summary(f'test of {workdir} step {step}: top-1 {results["top1"]:.1f} %, top-5 {results["top5"]:.1f} % on '
              f'{int(results["num_videos"])} videos',
              [('results', results_path), ('TensorBoard events', workdir)], [f'tensorboard --logdir {workdir}'])


def main(argv=None) -> int:
  """The CLI (`m3video_jax.cli` convention); returns the exit status."""
  return cli.run(define_flags, _main, argv, doc=__doc__, prog='python -m m3video_jax.evaluate')


if __name__ == '__main__':
  sys.exit(main())
