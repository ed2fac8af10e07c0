"""configs/motion_mini.py and a smoke run of experiments/motion_mini.py (every step of the Fig. 3 / Table 1 driver on
a few videos and steps; the real run is an experiment, docs/results.md)."""
import json
import os
import subprocess
import sys

import pytest

from configs import motion_mini
from data_prep import synthetic
from m3video_jax import tasks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize('target', motion_mini.TARGETS)
def test_every_target_validates_and_static_input_is_the_only_difference(target):
  real = motion_mini.get_config(f'target={target}')
  static = motion_mini.get_config(f'target={target},static=true')
  tasks.validate(real)
  assert static.data.static_input and not real.data.static_input
  with static.unlocked():
    static.data.static_input = False
  assert static.to_dict() == real.to_dict()


def test_targets_are_the_documented_variants():
  kinds = {t: motion_mini.get_config(f'target={t}').target for t in motion_mini.TARGETS}
  assert kinds['pixel'].kind == 'pixel' and kinds['hog'].kind == 'hog'
  assert (kinds['trajectory_position_only'].position, kinds['trajectory_position_only'].shape) == (True, False)
  assert kinds['trajectory_position_only'].position_norm == 'none'
  assert kinds['trajectory'].shape and kinds['trajectory'].position_norm == 'none'
  paper = kinds['trajectory_paper']
  assert (paper.position_norm, paper.shape_norm, paper.position_eps, paper.shape) == ('joint', 'joint', 1e-6, True)
  assert not paper.balance_parts and kinds['trajectory'].balance_parts
  # The rest of the paper's Table 1 / 16 / 2 rows: parts weighted equally, the trajectory parts as `trajectory`.
  no_shape = kinds['hog+trajectory_position']
  assert (no_shape.kind, no_shape.position, no_shape.shape, no_shape.position_scale) == ('hog+trajectory', True,
                                                                                         False, 0.4)
  assert kinds['trajectory+hof+mbh'].shape and kinds['hog+mbh'].kind == 'hog+mbh'
  assert all(kinds[t].balance_parts for t in ('hog+flow', 'hog+hof', 'hog+mbh', 'hog+trajectory_position'))
  sparse = kinds['trajectory_no_interpolation']
  assert (sparse.interpolate, sparse.traj_len, sparse.position_scale) == (False, 2, 0.8)
  assert kinds['trajectory'].interpolate is None
  finetune = motion_mini.get_config('task=finetune')
  tasks.validate(finetune)
  assert finetune.data.synthetic_seed != motion_mini.get_config().data.synthetic_seed  # Probe videos are unseen.
  appearance = motion_mini.get_config('task=finetune,probe_task=appearance')
  assert appearance.data.synthetic_task == 'appearance' and finetune.data.synthetic_task == 'motion'
  pretrain_seed = motion_mini.get_config().data.synthetic_seed
  assert appearance.data.synthetic_seed not in (finetune.data.synthetic_seed, pretrain_seed)
  with pytest.raises(ValueError, match='target='):
    motion_mini.get_config('target=flow')


@pytest.mark.slow
def test_driver_smoke_run_writes_results_tables_and_plots(tmp_path):
  # hog+mbh: the data prep stores the motion maps and a target reads them (the Fig. 3 targets are added).
  done = subprocess.run([sys.executable, os.path.join(ROOT, 'experiments', 'motion_mini.py'),
                         f'--workdir={tmp_path}', '--smoke', '--seeds=0', '--targets=hog+mbh'],
                        capture_output=True, text=True, timeout=900, cwd=str(tmp_path))
  assert done.returncode == 0, done.stderr[-3000:]
  results = json.load(open(tmp_path / 'results.json'))
  assert set(results['table1']) == {'hog+mbh', 'pixel', 'trajectory_position_only', 'random_init'}
  assert 'mbh_vs_zero' in results['final_diagnostics']['hog+mbh_s0']
  # The same encoders on the appearance-defined classes (their own videos, labels and runs).
  assert set(results['table1_appearance']) == set(results['table1'])
  assert results['probe_tasks'] == ['motion', 'appearance']
  labels = json.load(open(tmp_path / 'data' / 'probe_appearance' / 'videos' / 'label_map.json'))
  assert sorted(labels) == sorted(synthetic.APPEARANCE_CLASSES)
  assert os.path.exists(tmp_path / 'finetune_appearance' / 'pixel_s0' / 'eval_results.json')
  assert 'Table 1, appearance classes' in open(tmp_path / 'results.md').read()
  assert os.path.getsize(tmp_path / 'table1_appearance.png') > 500
  assert {r['input'] for r in results['fig3_final']} == {'real', 'static'}
  for row in results['table1'].values():
    assert len(row['linear_probe']['per_seed']) == 1 and 0 <= row['finetune']['per_seed'][0] <= 100
    assert 0 <= row['attentive_probe']['per_seed'][0] <= 100
  assert os.path.exists(tmp_path / 'attentive_probe' / 'pixel_s0' / 'eval_results.json')
  for name in ('results.md', 'fig3.png', 'table1.png'):
    assert os.path.getsize(tmp_path / name) > 500
  assert 'wrote' in done.stdout and 'Table 1' in open(tmp_path / 'results.md').read()
  # Re-running finds every run done and only rebuilds the outputs.
  again = subprocess.run([sys.executable, os.path.join(ROOT, 'experiments', 'motion_mini.py'),
                          f'--workdir={tmp_path}', '--smoke', '--seeds=0', '--targets=hog+mbh'],
                         capture_output=True, text=True, timeout=900, cwd=str(tmp_path))
  assert again.returncode == 0, again.stderr[-3000:]
  assert json.load(open(tmp_path / 'results.json'))['table1'] == results['table1']
