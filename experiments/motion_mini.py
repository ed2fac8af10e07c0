"""Runs the CPU-scale Fig. 3 and Table 1 of docs/results.md and writes results.json, results.md and the plots.

  pip install -e '.[experiments]'
  python experiments/motion_mini.py --workdir=/tmp/motion_mini                 # ~4.5 h on 2 CPU cores (docs/results.md)
  python experiments/motion_mini.py --workdir=/tmp/motion_mini_smoke --smoke   # every step on a few videos (CI)
  python experiments/motion_mini.py --workdir=/tmp/mm --targets=hog+mbh,trajectory --no_fig3   # some rows only

What it does (configs/motion_mini.py holds every setting):
1. Pretrains, for every seed: each target of `configs/motion_mini.py` on real clips, and the pixel and trajectory
   position-only targets on static clips (paper §3.1: one frame repeated, targets from the real clip). Each run lives
   in `<workdir>/runs/<target>[_static]_s<seed>` and resumes or is skipped when done.
2. Fig. 3: `loss / zero_loss` of each run's target part against steps (mean +- std over seeds) -> `fig3.png`.
3. Table 1: for each real-input encoder and a randomly initialised one (same seeds): the frozen-feature linear probe
   (`m3video_jax.probe`: mean-pooled tokens, softmax regression; results in `<workdir>/linear_probe/`), the attentive
   probe (`task=attentive_probe`, the frozen encoder with a trained cross-attention pooler,
   `<workdir>/attentive_probe/`) and a fine-tune (`task=finetune`), all trained on 600 held-out videos of another seed
   and tested on 200 more -> `table1.png`; and the same on videos whose classes are defined by appearance, with
   random motion (`--probe_tasks`, data in `<workdir>/data/probe_appearance`, runs in `<workdir>/*_appearance/`) ->
   `table1_appearance.png`. Results already on disk are read, not recomputed: delete a run's file to redo it.
4. `results.json` (every number, per seed), `results.md` (the tables), and a closing summary of what is where.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import motion_mini  # noqa: E402

FIG3 = ('pixel', 'trajectory_position_only')  # Fig. 3 runs, real and static input (ratio metric: _ratio_key).
RANDOM = 'random_init'


def _ratio_key(target: str) -> str:
  return {'pixel': 'train/pixel_vs_zero', 'hog': 'train/hog_vs_zero'}.get(target, 'train/position_vs_zero')


def run_name(target: str, static: bool, seed: int) -> str:
  return f'{target}{"_static" if static else ""}_s{seed}'


def pretrain(workdir: str, target: str, static: bool, seed: int, smoke: bool) -> str:
  """Pretrains one run (resumes / returns at once when it is complete); returns its workdir."""
  from m3video_jax import train_lib

  wd = os.path.join(workdir, 'runs', run_name(target, static, seed))
  config = motion_mini.get_config(f'target={target},seed={seed},static={static},smoke={smoke}')
  with config.unlocked():
    config.data.prepare_dir = os.path.join(workdir, 'data', 'pretrain')
  t0 = time.perf_counter()
  train_lib.train_and_evaluate(config, wd)
  logging.info('pretrained %s in %.0f s', wd, time.perf_counter() - t0)
  return wd


def _suffix(probe_task: str) -> str:
  """Directory and key suffix of a probe task: '' for the motion task (the layout of earlier versions)."""
  return '' if probe_task == 'motion' else f'_{probe_task}'


def finetune_config(workdir: str, seed: int, smoke: bool, init_from: str, task: str = 'finetune',
                    probe_task: str = 'motion'):
  """The config of a classification run on the probe videos of `probe_task` (`task`: finetune or attentive_probe)."""
  config = motion_mini.get_config(f'task={task},seed={seed},smoke={smoke},probe_task={probe_task}')
  with config.unlocked():
    config.data.prepare_dir = os.path.join(workdir, 'data', f'probe{_suffix(probe_task)}')
    config.init_from = init_from
  return config


def probe_features(workdir: str, encoder_params, smoke: bool,
                   probe_task: str = 'motion') -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """Per-video mean-pooled features of the probe-train and probe-test videos (2 temporal views, centre crop)."""
  from m3video_jax import probe
  from m3video_jax import demo as demo_lib

  config = finetune_config(workdir, 0, smoke, '', probe_task=probe_task)
  train_glob, test_glob = demo_lib.prepare_classification(config, workdir)
  return {split: probe.dataset_features(config, pattern, encoder_params)
          for split, pattern in (('train', train_glob), ('test', test_glob))}


def random_encoder(seed: int):
  from m3video_jax import tasks
  import jax

  config = motion_mini.get_config(f'seed={seed}')
  return tasks.get_task(config).init_params(jax.random.PRNGKey(seed))['encoder']


def classification_run(workdir: str, task: str, name: str, init_from: str, seed: int, smoke: bool,
                       probe_task: str = 'motion') -> dict:
  """The 2 x 3-view test results of a `task` run (finetune, attentive_probe) from `init_from` ('' = a random
  encoder) on the videos of `probe_task`, trained unless `<workdir>/<task>[_<probe_task>]/<name>_s<seed>` holds them."""
  from m3video_jax import train_lib

  run_dir = os.path.join(workdir, ('finetune' if task == 'finetune' else task) + _suffix(probe_task), f'{name}_s{seed}')
  results_path = os.path.join(run_dir, 'eval_results.json')
  if not os.path.exists(results_path):
    train_lib.train_and_evaluate(finetune_config(workdir, seed, smoke, init_from, task, probe_task), run_dir)
  with open(results_path) as f:
    return json.load(f)


def evaluate_encoder(workdir: str, name: str, encoder_params, init_from: str, seed: int, smoke: bool, *,
                     finetune: bool = True, attentive: bool = True, probe_task: str = 'motion') -> dict:
  """Linear probe, attentive probe and fine-tune top-1 of one encoder on the videos of `probe_task` (`init_from` '' =
  a random encoder; None for a column that is switched off)."""
  from data_prep import shards
  from m3video_jax import probe

  t0 = time.perf_counter()
  lp_path = os.path.join(workdir, 'linear_probe' + _suffix(probe_task), f'{name}_s{seed}.json')
  lp = shards.read_json(lp_path)  # Probed before, like the runs below: delete the file to probe again.
  if lp is None:
    feats = probe_features(workdir, encoder_params, smoke, probe_task)
    lp = probe.linear_probe(*feats['train'], *feats['test'], num_classes=8, seed=seed)
    os.makedirs(os.path.dirname(lp_path), exist_ok=True)
    shards.write_json_atomic(lp_path, lp)
  out = {'linear_probe': lp, 'attentive_top1': None, 'finetune_top1': None}
  if attentive:
    out['attentive_top1'] = float(classification_run(workdir, 'attentive_probe', name, init_from, seed, smoke,
                                                     probe_task)['top1'])
  if finetune:
    ft = classification_run(workdir, 'finetune', name, init_from, seed, smoke, probe_task)
    out.update(finetune_top1=float(ft['top1']), finetune_top5=float(ft['top5']))
  pct = lambda v: 'not run' if v is None else f'{v:.1f}%'  # noqa: E731
  logging.info('%s seed %d, %s task: linear probe %s, attentive probe %s, fine-tune %s (%.0f s)', name, seed,
               probe_task, pct(lp['top1']), pct(out['attentive_top1']), pct(out['finetune_top1']),
               time.perf_counter() - t0)
  return out


def _mean_std(values) -> tuple[float | None, float | None]:
  """Mean and sample std over the seeds with a value (None = not measured); (None, None) when none has one."""
  a = np.asarray([v for v in values if v is not None], float)
  if not len(a):
    return None, None
  return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def curves(workdir: str, target: str, static: bool, seeds) -> dict:
  """Fig. 3 data of one (target, input): steps and the per-seed ratio of the target part to its zero baseline."""
  from m3video_jax import metrics

  key = _ratio_key(target)
  per_seed = []
  for s in seeds:
    entries = metrics.read_jsonl(os.path.join(workdir, 'runs', run_name(target, static, s)))
    per_seed.append([(e['step'], e.get(key), e.get(key.replace('_vs_zero', '_moving_vs_zero'))) for e in entries])
  steps = [p[0] for p in per_seed[0]]
  return {'steps': steps, 'ratio': [[p[1] for p in run] for run in per_seed],
          'moving_ratio': [[p[2] for p in run] for run in per_seed]}


def _axes(size):
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  return plt.subplots(figsize=size)


def _finish(fig, ax, path: str, title: str, xlabel: str, ylabel: str) -> None:
  import matplotlib.pyplot as plt

  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def plot_fig3(fig3: dict, path: str) -> None:
  fig, ax = _axes((6.4, 4.2))
  colours = {'pixel': 'tab:blue', 'trajectory_position_only': 'tab:orange'}
  for (target, static), data in fig3.items():
    steps = np.asarray(data['steps'])
    r = np.asarray([[np.nan if v is None else v for v in run] for run in data['ratio']], float)
    m, sd = np.nanmean(r, 0), np.nanstd(r, 0)
    label = f'{"pixel" if target == "pixel" else "trajectory (position)"}, {"static" if static else "real"} input'
    ax.plot(steps, m, color=colours[target], linestyle='--' if static else '-', label=label)
    ax.fill_between(steps, m - sd, m + sd, color=colours[target], alpha=0.15)
  ax.axhline(1.0, color='grey', linewidth=0.8)
  _finish(fig, ax, path, 'Fig. 3 in miniature: real vs static (one frame repeated) input', 'pretraining step',
          'loss / loss of predicting zero')


def plot_table1(table: dict, path: str, probe_task: str = 'motion') -> None:
  names = list(table)
  fig, ax = _axes((max(7.2, 0.9 * len(names)), 4.0))
  x = np.arange(len(names))
  columns = (('linear_probe', 'linear probe'), ('attentive_probe', 'attentive probe'), ('finetune', 'fine-tune'))
  for i, (metric, label) in enumerate(columns):
    means = [np.nan if table[n][metric]['mean'] is None else table[n][metric]['mean'] for n in names]
    stds = [np.nan if table[n][metric]['std'] is None else table[n][metric]['std'] for n in names]
    if np.isnan(means).all():  # A column that was not run: no empty legend entry.
      continue
    ax.bar(x + (i - 1) * 0.27, means, 0.27, yerr=stds, capsize=3, label=label)
  ax.axhline(100 / 8, color='grey', linewidth=0.8, linestyle=':', label='chance')
  ax.set_xticks(x, [n.replace('trajectory', 'traj.').replace('_', ' ') for n in names], fontsize=8, rotation=20,
                ha='right')
  _finish(fig, ax, path, f'Table 1 in miniature, {probe_task} classes (mean ± std over seeds)', 'pretraining target',
          'top-1 on held-out videos (%)')


def final_ratios(workdir: str, target: str, static: bool, seed: int) -> dict:
  from m3video_jax import metrics

  entries = metrics.read_jsonl(os.path.join(workdir, 'runs', run_name(target, static, seed)))
  last = entries[-1] if entries else {}
  return {k[len('train/'):]: v for k, v in last.items() if k.startswith('train/') and ('vs_zero' in k or
                                                                                        k.startswith('train/loss'))}


def write_markdown(results: dict, path: str) -> None:
  seeds = results['seeds']
  lines = ['# motion_mini results', '', f'Seeds {seeds}; written by `experiments/motion_mini.py`.', '',
           '## Fig. 3: final loss / zero-prediction loss of the target part', '',
           '| target | input | ' + ' | '.join(f'seed {s}' for s in seeds) + ' | mean ± std |',
           '|---|---|' + '---|' * (len(seeds) + 1)]
  from m3video_jax.metrics import format_ratio as fmt  # 'n/a' for a ratio whose zero loss was 0 (None).

  for row in results['fig3_final']:
    lines.append(f'| {row["target"]} | {row["input"]} | ' + ' | '.join(fmt(v) for v in row['per_seed'])
                 + f' | {fmt(row["mean"])} ± {fmt(row["std"])} |')
  num = lambda v: 'n/a' if v is None else f'{v:.1f}'  # noqa: E731  (a column that was not run)
  for probe_task in results.get('probe_tasks', ['motion']):
    key = f'table1{_suffix(probe_task)}'
    first = next(iter(results[f'{key}_raw'].values()))[0]['linear_probe']
    lines += ['', f'## Table 1, {probe_task} classes: top-1 (%) on {first["num_test"]} held-out videos of an unseen '
              f'seed, probe and fine-tune trained on {first["num_train"]} more (chance 12.5 %)', '',
              '| pretraining target | linear probe per seed | linear probe | attentive probe per seed '
              '| attentive probe | fine-tune per seed | fine-tune |', '|---|---|---|---|---|---|---|']
    for name, row in results[key].items():
      cells = [f'{", ".join(num(v) for v in row[c]["per_seed"])} | {num(row[c]["mean"])} ± {num(row[c]["std"])}'
               for c in ('linear_probe', 'attentive_probe', 'finetune')]
      lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
  lines += ['', '## Final training diagnostics per run (last logging interval)', '',
            '| run | part: loss / zero (moving tokens, static tokens) |', '|---|---|']
  for name, r in results['final_diagnostics'].items():
    parts = [k[:-len('_vs_zero')] for k in r if k.endswith('_vs_zero') and '_moving' not in k and '_static' not in k]
    cells = [f'{part} {fmt(r.get(f"{part}_vs_zero"))} ({fmt(r.get(f"{part}_moving_vs_zero"))}, '
             f'{fmt(r.get(f"{part}_static_vs_zero"))})' for part in parts]
    if cells:
      lines.append(f'| {name} | {"; ".join(cells)} |')
  with open(path, 'w') as f:
    f.write('\n'.join(lines) + '\n')


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--workdir', required=True, help='Everything goes here (data, runs, results); re-running resumes.')
  p.add_argument('--seeds', default='0,1,2', help='Comma-separated seeds.')
  p.add_argument('--smoke', action='store_true', help='A few videos and steps: checks the whole path (CI).')
  p.add_argument('--no_finetune', action='store_true', help='Skip the fine-tunes.')
  p.add_argument('--no_attentive', action='store_true', help='Skip the attentive probes (task=attentive_probe).')
  p.add_argument('--probe', default='',
                 help='Comma-separated pretraining workdirs (any config of this regime) to linear-probe on the probe '
                      'videos of --workdir, printing one line each; nothing else runs.')
  p.add_argument('--targets', default=','.join(motion_mini.TARGETS),
                 help='Comma-separated pretraining targets of Table 1; pixel and trajectory_position_only '
                      '(the Fig. 3 targets) always run and are always in the table, unless --no_fig3.')
  p.add_argument('--probe_tasks', default='motion,appearance',
                 help='Held-out tasks every encoder is probed and fine-tuned on: motion (classes defined by motion) '
                      'and/or appearance (by shape and colour, random motion; data_prep.synthetic --task).')
  p.add_argument('--no_fig3', action='store_true',
                 help='Run only the --targets (no Fig. 3 runs on static input, no Fig. 3 targets added).')
  args = p.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format='%(asctime)s %(message)s')
  for name in ('absl', 'orbax', 'jax', 'tensorflow', 'apache_beam'):
    logging.getLogger(name).setLevel(logging.WARNING)
  logging.getLogger('m3video_jax').setLevel(logging.INFO)
  import jax  # noqa: F401  (after the logging set-up)

  seeds = [int(s) for s in args.seeds.split(',') if s.strip()]
  workdir = os.path.abspath(args.workdir)
  os.makedirs(workdir, exist_ok=True)
  probe_tasks = [t.strip() for t in args.probe_tasks.split(',') if t.strip()]
  if not probe_tasks or set(probe_tasks) - set(motion_mini.PROBE_TASKS):
    p.error(f'--probe_tasks={args.probe_tasks!r}: expected some of {motion_mini.PROBE_TASKS}')
  if args.probe:
    from m3video_jax import checkpointing
    from m3video_jax import probe
    for wd in [d.strip() for d in args.probe.split(',') if d.strip()]:
      for probe_task in probe_tasks:
        feats = probe_features(workdir, checkpointing.load_params(wd)['encoder'], args.smoke, probe_task)
        r = probe.linear_probe(*feats['train'], *feats['test'], num_classes=8, seed=seeds[0])
        print(f'{wd}: {probe_task} classes, linear probe top-1 {r["top1"]:.1f} % on {r["num_test"]} videos '
              f'(L2 {r["l2"]:g})', flush=True)
    return 0
  t0 = time.perf_counter()
  targets = [t.strip() for t in args.targets.split(',') if t.strip()]
  unknown = sorted(set(targets) - set(motion_mini.TARGETS))
  if unknown:
    p.error(f'--targets: unknown {unknown}; expected some of {motion_mini.TARGETS}')
  fig3_targets = () if args.no_fig3 else FIG3
  targets += [t for t in fig3_targets if t not in targets]
  runs = [(t, False) for t in targets] + [(t, True) for t in fig3_targets]
  for seed in seeds:
    for target, static in runs:
      pretrain(workdir, target, static, seed, args.smoke)

  fig3 = {(t, st): curves(workdir, t, st, seeds) for t in fig3_targets for st in (False, True)}
  fig3_final = []
  for (t, st), data in fig3.items():
    last = [run[-1] for run in data['ratio']]
    m, sd = _mean_std(last)
    fig3_final.append({'target': t, 'input': 'static' if st else 'real', 'per_seed': last, 'mean': m, 'std': sd})

  from m3video_jax import checkpointing
  tables: dict[str, dict] = {}
  for probe_task in probe_tasks:
    table: dict[str, dict] = {}
    raw: dict[str, list] = {}
    for name in targets + [RANDOM]:
      raw[name] = []
      for seed in seeds:
        if name == RANDOM:
          enc, init_from = random_encoder(seed), ''
        else:
          init_from = os.path.join(workdir, 'runs', run_name(name, False, seed))
          enc = checkpointing.load_params(init_from)['encoder']
        raw[name].append(evaluate_encoder(workdir, name, enc, init_from, seed, args.smoke,
                                          finetune=not args.no_finetune, attentive=not args.no_attentive,
                                          probe_task=probe_task))
      table[name] = {}
      for column, key in (('linear_probe', None), ('attentive_probe', 'attentive_top1'),
                          ('finetune', 'finetune_top1')):
        # None (not run): JSON null, skipped by _mean_std.
        values = [r['linear_probe']['top1'] if key is None else r[key] for r in raw[name]]
        table[name][column] = dict(zip(('mean', 'std'), _mean_std(values)), per_seed=values)
    tables[f'table1{_suffix(probe_task)}'] = table
    tables[f'table1{_suffix(probe_task)}_raw'] = raw

  results = {'seeds': seeds, 'smoke': args.smoke, 'probe_tasks': probe_tasks,
             'fig3': {f'{t}{"_static" if st else ""}': d for (t, st), d in fig3.items()},
             'fig3_final': fig3_final, **tables,
             'final_diagnostics': {run_name(t, st, s): final_ratios(workdir, t, st, s)
                                   for s in seeds for t, st in runs},
             'seconds': time.perf_counter() - t0}
  names = ['results.json', 'results.md'] + (['fig3.png'] if fig3 else []) + [
      f'table1{_suffix(t)}.png' for t in probe_tasks]
  paths = {name: os.path.join(workdir, name) for name in names}
  with open(paths['results.json'], 'w') as f:
    json.dump(results, f, indent=1)
  write_markdown(results, paths['results.md'])
  if fig3:
    plot_fig3(fig3, paths['fig3.png'])
  for t in probe_tasks:
    plot_table1(results[f'table1{_suffix(t)}'], paths[f'table1{_suffix(t)}.png'], t)
  print(open(paths['results.md']).read())
  finetunes = ', '.join(f'{workdir}/finetune{_suffix(t)}' for t in probe_tasks)
  print(f'motion_mini: {len(runs) * len(seeds)} pretraining runs in {workdir}/runs, fine-tunes in {finetunes}; '
        f'wrote {", ".join(paths.values())} in {results["seconds"] / 60:.1f} min')
  return 0


if __name__ == '__main__':
  sys.exit(main())
