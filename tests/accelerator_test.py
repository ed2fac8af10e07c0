"""Accelerator readiness, checked on CPU: bfloat16 training tracks float32, the training step and the step benchmark
need no TensorFlow (the GPU image has none), and `bench/train_step.py` runs and reports its figures on every path.

What needs a real GPU (cuDNN attention, out-of-memory batch search, MFU) is run by `bench/device_check.sh`.
"""
import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from configs import demo
from m3video_jax import sharding
from m3video_jax import train_lib
from tests.train_test import random_batch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(REPO, 'bench', 'train_step.py')
# Makes TensorFlow (and TensorBoard) unimportable in a child process, as on the GPU image: `import tensorflow` raises
# ImportError before anything else runs.
NO_TF_SITECUSTOMIZE = textwrap.dedent('''\
    import sys
    for name in ('tensorflow', 'tensorboard', 'tensorflow_datasets'):
      sys.modules[name] = None
    ''')


def _demo_losses(dtype: str, steps: int = 20) -> np.ndarray:
  """Losses of `steps` training steps of the demo-scale model (mu encoder, 8 x 64², batch 8) at compute `dtype`, on
  two fixed batches alternating (so the model fits them and the losses fall)."""
  config = demo.get_config(f'steps={steps}')  # Warmup of steps // 5: the lr is at its peak after 4 steps.
  with config.unlocked():
    config.model.dtype = dtype
    config.mesh.data = 1
    config.data.clip_ops = 'host'  # Finished synthetic clips of the demo's scale (below).
  trainer = train_lib.make_trainer(config, sharding.make_mesh(config.mesh, devices=jax.devices()[:1]))
  batches = []
  for seed in range(2):
    b = random_batch(config, seed)
    b['traj_disp'] *= 0.4 / 3.0  # Displacements of the demo's scale (0.4 px RMS; `position_scale`).
    batches.append(sharding.to_global(b, trainer.batch_sharding))
  state = trainer.init(jax.random.PRNGKey(0))
  losses = []
  for step in range(steps):
    state, metrics = trainer.step_fn(state, batches[step % 2])
    losses.append(metrics['train/loss'])
  return np.asarray(jax.device_get(losses), np.float64)


def test_bfloat16_training_losses_track_float32():
  """20 steps of the demo-scale model in bf16 compute (f32 params, optimiser and loss) stay within 2e-3 relative of
  the f32 losses on the same batches, masks and init. Measured on CPU: 8.1e-4 at most (losses 1.545 -> 1.076)."""
  f32 = _demo_losses('float32')
  bf16 = _demo_losses('bfloat16')
  assert np.isfinite(bf16).all()
  assert f32[-1] < 0.8 * f32[0], f32  # It trains, so the comparison covers updates, not just one forward pass.
  np.testing.assert_allclose(bf16, f32, rtol=2e-3, atol=0)


def _no_tf_env(tmp_path) -> dict[str, str]:
  shim = tmp_path / 'no_tensorflow'
  shim.mkdir()
  (shim / 'sitecustomize.py').write_text(NO_TF_SITECUSTOMIZE)
  env = dict(os.environ)
  env['PYTHONPATH'] = os.pathsep.join([str(shim), REPO] + ([env['PYTHONPATH']] if env.get('PYTHONPATH') else []))
  return env


NO_TF_SCRIPT = textwrap.dedent('''\
    import importlib.util
    import sys

    try:
      import tensorflow  # noqa: F401
      raise SystemExit('the shim did not block TensorFlow')
    except ImportError:
      pass
    import jax
    import numpy as np
    from configs import pretrain_ssv2
    from m3video_jax import sharding, tasks, train_lib

    config = pretrain_ssv2.get_config('tiny')
    with config.unlocked():
      config.data.train_files = 'unused'
      config.mesh.data = 1
      config.data.clip_ops = 'device'  # As on a GPU: the step finishes the host's raw clip parts.
    trainer = train_lib.make_trainer(config, sharding.make_mesh(config.mesh, devices=jax.devices()[:1]))
    batch = tasks.example_batch(config, config.data.batch_size)
    # The host's raw clip parts (data.clip_ops='device'): the step finishes them without TensorFlow.
    batch['frames'] = np.random.default_rng(0).integers(0, 256, batch['frames'].shape, dtype=np.uint8)
    batch['traj_ok'][:] = True
    state, metrics = trainer.step_fn(trainer.init(jax.random.PRNGKey(0)),
                                     sharding.to_global(batch, trainer.batch_sharding))
    loss = float(metrics['train/loss'])
    spec = importlib.util.spec_from_file_location('bench_train_step', sys.argv[1])
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.make_config(bench.parse_args(['--platform=gpu']), 8)
    loaded = sorted(m for m, v in sys.modules.items() if v is not None and m.split('.')[0] in
                    ('tensorflow', 'tensorboard', 'tensorflow_datasets'))
    print('OK', loss, loaded)
    ''')


def test_training_step_and_step_benchmark_need_no_tensorflow(tmp_path):
  """With TensorFlow unimportable: the pretraining trainer is built and runs a step, and bench/train_step.py imports
  and builds its config. (ml_collections is still needed: bench/device_check.sh installs it where it is missing.)"""
  out = subprocess.run([sys.executable, '-c', NO_TF_SCRIPT, BENCH], env=_no_tf_env(tmp_path), capture_output=True,
                       text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  line = out.stdout.strip().splitlines()[-1]
  assert line.startswith('OK ') and line.endswith(' []'), line
  assert np.isfinite(float(line.split()[1]))


def _fields(stdout: str) -> dict[str, float]:
  """The first number of each `name: value` line of the benchmark's figures."""
  out = {}
  for line in stdout.splitlines():
    m = re.match(r'^(steps/s|clips/s|flops/step|model flops/step|achieved TFLOP/s|MFU): ([0-9.eE+-]+)', line)
    if m:
      out[m.group(1)] = float(m.group(2))
  return out


TINY = ['--variant=mu', '--res=64', '--frames=8', '--steps=2', '--warmup=1', '--peak_tflops=1']


def test_step_benchmark_on_cpu_prints_positive_figures(tmp_path):
  """`--platform=cpu` with a tiny override (JAX side only, TensorFlow unimportable): every figure is printed and
  positive, and the JSON file holds them."""
  path = tmp_path / 'cpu.json'
  out = subprocess.run([sys.executable, BENCH, '--platform=cpu', '--batch=2', '--rounds=1', '--skip_torch',
                        f'--json={path}'] + TINY, env=_no_tf_env(tmp_path), capture_output=True, text=True,
                       timeout=300, cwd=REPO)
  assert out.returncode == 0, out.stderr[-3000:]
  fields = _fields(out.stdout)
  assert set(fields) == {'steps/s', 'clips/s', 'flops/step', 'model flops/step', 'achieved TFLOP/s', 'MFU'}, out.stdout
  assert all(v > 0 for v in fields.values()), fields
  assert 'peak memory: n/a' in out.stdout  # CPU devices report no memory stats.
  saved = json.loads(path.read_text())
  assert saved['batch'] == 2 and saved['attention_resolved'] == 'explicit'
  np.testing.assert_allclose(saved['clips_per_sec'], 2 * saved['steps_per_sec'])
  np.testing.assert_allclose(saved['achieved_tflops'], saved['model_flops_per_step'] * saved['steps_per_sec'] / 1e12)


@pytest.mark.slow  # Two benchmark processes, one searching 2 batch sizes: ~14 s on 2 cores.
def test_step_benchmark_accelerator_path_runs_on_the_cpu_backend(tmp_path):
  """The `--platform=gpu` path (batch search, bf16 default, remat FLOPs), run on CPU devices: no out-of-memory there,
  so the search doubles up to `--max_batch`."""
  path = tmp_path / 'gpu.json'
  out = subprocess.run([sys.executable, BENCH, '--platform=gpu', '--allow_cpu_backend', '--min_batch=2',
                        '--max_batch=4', '--rounds=2', '--remat', f'--json={path}'] + TINY,
                       env=_no_tf_env(tmp_path), capture_output=True, text=True, timeout=300, cwd=REPO)
  assert out.returncode == 0, out.stderr[-3000:]
  assert all(v > 0 for v in _fields(out.stdout).values()) and len(_fields(out.stdout)) == 6, out.stdout
  saved = json.loads(path.read_text())
  assert [t['batch'] for t in saved['batch_search']] == [2, 4] and saved['batch'] == 4
  assert saved['dtype'] == 'bfloat16' and saved['remat'] and len(saved['steps_per_sec_rounds']) == 2
  # Remat recomputes the forward pass: XLA executes more FLOPs than the model counts.
  assert saved['flops_per_step'] > saved['model_flops_per_step'] > 0
  # Without the escape hatch, a GPU run on a CPU-only JAX stops with one line saying so.
  out = subprocess.run([sys.executable, BENCH, '--platform=gpu'] + TINY, capture_output=True, text=True, timeout=120,
                       cwd=REPO)
  assert out.returncode != 0 and "error: --platform=gpu but JAX runs on 'cpu'" in out.stderr


def _load_bench():
  spec = importlib.util.spec_from_file_location('bench_train_step', BENCH)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


class _FakeDevice:
  device_kind = 'fake accelerator'

  def __init__(self, limit):
    self.limit = limit

  def memory_stats(self):
    return {'bytes_limit': self.limit, 'peak_bytes_in_use': 0}


@pytest.mark.parametrize('limit, runtime_limit, actual, expected_tries, expected_batch', [
    # Memory = 1 GB + 1 GB per clip. The programs of 8 and 16 predict 1 + b GB: 64 is the largest power of two
    # within 95 % of 100 GB, and 128 is predicted over the limit (not compiled).
    (100e9, None, {}, [(8, 'fits'), (16, 'fits'), (64, 'fits'), (128, 'not tried')], 64),
    # The same prediction, but the device runs out of memory above 40 GB: 64 fails, halving back gives 32.
    (100e9, 40e9, {}, [(8, 'fits'), (16, 'fits'), (64, 'out of memory'), (32, 'fits')], 32),
    # 32 is predicted to fit in 40 GB, but XLA's memory analysis of its program says 45 GB: not run.
    (40e9, None, {32: 45e9}, [(8, 'fits'), (16, 'fits'), (32, 'over the memory limit')], 16),
])
def test_batch_search_jumps_by_prediction_and_halves_after_out_of_memory(monkeypatch, limit, runtime_limit, actual,
                                                                          expected_tries, expected_batch):
  """`find_batch` with a fake device and step whose memory is known: which batches it compiles and runs."""
  bench = _load_bench()

  class FakeStep:
    def __init__(self, args, batch, device):
      del args, device
      self.batch, self.compile_s = batch, 0.0
      self.bytes = int(actual.get(batch, 1e9 * (1 + batch)))

    def run(self, state, steps):
      del steps
      if runtime_limit is not None and self.bytes > runtime_limit:
        raise RuntimeError('RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1.0GiB.')
      return state

  monkeypatch.setattr(bench, 'Step', FakeStep)
  monkeypatch.setattr(bench, 'fresh_state', lambda step: None)
  args = bench.parse_args(['--platform=gpu'])
  step, tries, out_of_memory = bench.find_batch(args, _FakeDevice(limit), lambda line: None)
  assert [(t['batch'], t['result'][:len(r)]) for t, (_, r) in zip(tries, expected_tries)] == expected_tries
  assert len(tries) == len(expected_tries) and step.batch == expected_batch
  assert out_of_memory == (runtime_limit is not None)
  # Any other error is not taken for a full device.
  FakeStep.run = lambda self, state, steps: (_ for _ in ()).throw(ValueError('shape mismatch'))
  with pytest.raises(ValueError, match='shape mismatch'):
    bench.find_batch(args, _FakeDevice(limit), lambda line: None)
