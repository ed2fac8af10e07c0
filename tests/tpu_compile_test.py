"""The real training steps compile for a TPU slice on this CPU host (libtpu's ahead-of-time compiler, through
`bench/tpu_compile.py`): the tiny pretraining and fine-tuning steps of the paper configs, in bfloat16, on a v5e 2x2 slice
with `mesh.fsdp` 1 and 2 fit in the chip's HBM, and XLA's FLOPs agree with the script's analytic count within 25 %.
And with libtpu installed, the training CLI still runs on the CPU backend.

Skipped when libtpu is not installed (`pip install -e '.[tpu]'`; `.ci/run` installs it, so CI runs these).
"""
import importlib
import importlib.util
import json
import os
import subprocess
import sys

import pytest

import motion_records

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.skipif(importlib.util.find_spec('libtpu') is None,
                                reason="libtpu is not installed (pip install -e '.[tpu]'; CI installs it)")


def _bench():
  spec = importlib.util.spec_from_file_location('bench_tpu_compile', os.path.join(REPO, 'bench', 'tpu_compile.py'))
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # Its dataclass resolves annotations through sys.modules.
  spec.loader.exec_module(module)
  return module


# One libtpu compile is ~8-13 s on 2 cores: `-m "not slow"` compiles the pretraining step over fsdp 2, CI all four.
@pytest.mark.parametrize('config_name, fsdp', [
    pytest.param('pretrain_ssv2', 1, marks=pytest.mark.slow),
    ('pretrain_ssv2', 2),
    pytest.param('finetune_ssv2', 1, marks=pytest.mark.slow),
    pytest.param('finetune_ssv2', 2, marks=pytest.mark.slow)])
def test_tiny_step_compiles_for_a_v5e_slice_and_fits(config_name, fsdp):
  bench = _bench()
  config = importlib.import_module(f'configs.{config_name}').get_config('tiny')
  config.mesh.fsdp = fsdp
  f = bench.run(config, 'v5e:2x2', bench.Options(per_chip_batch=16), log=lambda _: None)
  assert f['device_kind'] == 'TPU v5 lite' and f['chips'] == 4 and f['dtype'] == 'bfloat16'
  assert f['mesh'] == {'data': 4 // fsdp, 'fsdp': fsdp} and f['per_chip_batch'] == 16
  assert f['fits'] and 0 < f['hbm_bytes_per_chip'] < f['hbm_capacity_bytes'], f
  assert 0.75 <= f['xla_over_model_flops'] <= 1.25, (f['xla_flops_per_clip'], f['model_flops_per_clip'],
                                                     f['clip_assembly_flops_per_clip'])
  if config.task == 'pretrain':  # The step finishes the clips (data.clip_ops='device'), and its count includes that.
    assert f['clip_assembly_flops_per_clip'] > 0 and 0 < f['clip_assembly_share_of_xla_flops'] < 1
  json.dumps(f)  # What --json writes.


@pytest.mark.slow  # A training CLI run in its own process: ~20 s on 2 cores.
def test_training_cli_runs_on_cpu_with_libtpu_installed(tmp_path):
  """JAX_PLATFORMS unset, as a user's shell has it: the TPU plugin finds no TPU and the run goes on on the CPU."""
  shards = motion_records.write_motion_shards(tmp_path / 'data', num_videos=8, size=48, frames=12)
  env = {k: v for k, v in os.environ.items() if k not in ('JAX_PLATFORMS', 'XLA_FLAGS')}
  proc = subprocess.run(
      [sys.executable, '-m', 'm3video_jax.main', '--config=configs/finetune_ssv2.py:tiny', f'--workdir={tmp_path / "w"}',
       f'--config.data.train_files={shards}', f'--config.data.eval_files={shards}', '--config.total_steps=2',
       '--config.eval_every_steps=2', '--config.checkpoint_every_steps=2'],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'run complete' in proc.stdout + proc.stderr, proc.stdout[-2000:]
  assert '1 local / 1 global devices (cpu)' in proc.stderr, proc.stderr[-3000:]
