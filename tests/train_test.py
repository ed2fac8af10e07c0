"""Training system: sharding equivalence, no recompiles, kill-and-resume, NaN stop, config validation, optimiser."""
import functools
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import pretrain_ssv2
from m3video_jax import checkpointing
from m3video_jax import config_lib
from m3video_jax import metrics as metrics_lib
from m3video_jax import optim
from m3video_jax import sharding
from m3video_jax import tasks
from m3video_jax.data import clip_device
from m3video_jax import train_lib


def tiny_config(**overrides):
  c = pretrain_ssv2.get_config('tiny')
  c.data.train_files = 'unused'
  # The loop's tests feed synthetic finished clips (`random_batch`); clips finished on the device are
  # tests/clip_device_test.py's, and the 1-vs-8-devices step below runs both.
  c.data.clip_ops = 'host'
  for k, v in overrides.items():
    node = c
    *parents, leaf = k.split('.')
    for p in parents:
      node = node[p]
    node[leaf] = v
  return c


def random_batch(config, seed, batch_size=None):
  """A batch with the pipeline's keys, shapes and value ranges."""
  rng = np.random.default_rng(seed)
  n = batch_size or config.data.batch_size
  layout = clip_device.ClipLayout.from_config(config)
  if layout.on_device:  # The host's raw clip parts (random frames, trajectories, HOG, crops and flips).
    return clip_device.example_raw(layout, n, rng)
  b = tasks.example_batch(config, n)
  b['video'] = rng.integers(0, 256, size=b['video'].shape, dtype=np.uint8)
  b['traj_disp'] = rng.normal(scale=3.0, size=b['traj_disp'].shape).astype(np.float32)
  b['traj_valid'] = rng.random(b['traj_valid'].shape) < 0.8
  b['traj_hog'] = rng.random(b['traj_hog'].shape).astype(np.float32)
  return b


def batches_from(config, start_step, fail_at=None, nan_at=None):
  """Step-indexed batches (batch for step k depends only on k), like the real pipeline after a resume."""
  step = start_step
  while True:
    step += 1
    if fail_at is not None and step == fail_at:
      raise KeyboardInterrupt(f'simulated kill before step {step}')
    b = random_batch(config, seed=step)
    if nan_at is not None and step >= nan_at:
      b['traj_disp'][:] = np.nan
    yield b


def loss_and_grads(config, mesh, params, batch, rng):
  task = tasks.get_task(config)
  state_shd = jax.tree.map(lambda _: sharding.replicated(mesh), params)
  if mesh.shape['fsdp'] > 1:
    state_shd = sharding.state_sharding(jax.eval_shape(lambda: params), mesh)
  fn = jax.jit(jax.value_and_grad(task.loss_fn, has_aux=True),
               in_shardings=(state_shd, sharding.batch_sharding(mesh), sharding.replicated(mesh)))
  (loss, _), grads = fn(jax.device_put(params, state_shd), sharding.to_global(batch, sharding.batch_sharding(mesh)),
                        rng)
  return jax.device_get(loss), jax.device_get(grads)


def assert_same_loss_and_grads_on_1_and_8_devices(config, params, batch, rng):
  """The task's loss and gradients on one device equal those on 8 (data 8) and on data 4 x fsdp 2."""
  assert jax.device_count() == 8, 'tests/conftest.py sets 8 simulated CPU devices'
  one = jax.make_mesh((1, 1), sharding.MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 2,
                      devices=jax.devices()[:1])
  ref_loss, ref_grads = loss_and_grads(config, one, params, batch, rng)
  assert np.isfinite(ref_loss)
  for data, fsdp in ((8, 1), (4, 2)):
    with config.unlocked():
      config.mesh.data, config.mesh.fsdp = data, fsdp
    loss, grads = loss_and_grads(config, sharding.make_mesh(config.mesh), params, batch, rng)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5, atol=1e-6)
    jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-4, atol=1e-6), grads, ref_grads)


@pytest.mark.parametrize('clip_ops', ['host', 'device'])
def test_train_step_same_loss_and_grads_on_1_and_8_devices(clip_ops):
  config = tiny_config(**{'data.clip_ops': clip_ops})
  params = jax.device_get(tasks.get_task(config).init_params(jax.random.PRNGKey(0)))
  assert_same_loss_and_grads_on_1_and_8_devices(config, params, random_batch(config, seed=0), jax.random.PRNGKey(1))


def test_fsdp_shards_large_params():
  config = tiny_config(**{'mesh.data': 4, 'mesh.fsdp': 2, 'model.encoder': 'S'})
  task = tasks.get_task(config)
  abstract = jax.eval_shape(task.init_params, jax.random.PRNGKey(0))
  shd = sharding.state_sharding(abstract, sharding.make_mesh(config.mesh))
  specs = [s.spec for s in jax.tree.leaves(shd)]
  assert any('fsdp' in tuple(s) for s in specs)


def test_no_recompilation_across_steps():
  config = tiny_config()
  trainer = train_lib.make_trainer(config)
  step_fn = trainer.step_fn
  state = trainer.init(jax.random.PRNGKey(0))
  for step in range(3):
    state, _ = step_fn(state, sharding.to_global(random_batch(config, step), trainer.batch_sharding))
  assert step_fn._cache_size() == 1  # pylint: disable=protected-access
  assert int(state.step) == 3


def run(config, workdir, **kwargs):
  return train_lib.train_and_evaluate(config, str(workdir),
                                      make_batch_iterator=lambda start: batches_from(config, start, **kwargs))


def test_kill_and_resume_reaches_the_same_final_loss(tmp_path):
  config = tiny_config(total_steps=6, checkpoint_every_steps=2, log_every_steps=1)
  straight = run(config, tmp_path / 'straight')
  with pytest.raises(KeyboardInterrupt):
    run(config, tmp_path / 'killed', fail_at=4)  # Killed while fetching step 4; checkpoint at step 2 exists.
  assert checkpointing.resolve_checkpoint(str(tmp_path / 'killed'))[1] == 2
  resumed = run(config, tmp_path / 'killed')
  # Same masks (rng folded with the step), same data for each step, same restored optimiser state: bitwise on CPU.
  assert resumed['train/loss'] == straight['train/loss']
  assert resumed['train/grad_norm'] == straight['train/grad_norm']
  saved = json.load(open(tmp_path / 'killed' / 'config.json'))
  assert saved['total_steps'] == 6


def test_resume_onto_a_different_device_count(tmp_path):
  config = tiny_config(total_steps=2, checkpoint_every_steps=2)
  run(config, tmp_path)
  with config.unlocked():
    config.total_steps = 4
    config.mesh.data, config.mesh.fsdp = 4, 2
  # validate() checks against all 8 devices; a (4, 2) mesh restores the replicated (8, 1) checkpoint.
  out = run(config, tmp_path)
  assert np.isfinite(out['train/loss'])
  assert checkpointing.resolve_checkpoint(str(tmp_path))[1] == 4


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  config = tiny_config(total_steps=8, checkpoint_every_steps=2, log_every_steps=4)
  with pytest.raises(metrics_lib.NonFiniteLossError, match='at step 5'):
    run(config, tmp_path, nan_at=5)
  assert checkpointing.resolve_checkpoint(str(tmp_path))[1] == 4


def test_tensorboard_events_have_the_documented_tags(tmp_path):
  from tensorboard.backend.event_processing import event_accumulator
  config = tiny_config(total_steps=2, log_every_steps=1, viz_every_steps=2)
  run(config, tmp_path)
  acc = event_accumulator.EventAccumulator(str(tmp_path))
  acc.Reload()
  tags = set(acc.Tags()['tensors']) | set(acc.Tags()['scalars'])
  for tag in ('train/loss', 'train/loss_position', 'train/loss_shape', 'train/valid_fraction', 'train/lr',
              'train/grad_norm', 'perf/steps_per_sec', 'train/zero_position', 'train/position_vs_zero',
              'train/shape_vs_zero', 'train/position_moving_vs_zero', 'train/position_static_vs_zero',
              'train/loss_shape_moving', 'train/moving_fraction', 'viz/trajectories'):
    assert tag in tags, (tag, tags)
  # metrics.jsonl: one entry per logged step, the interval ratio = ratio of the interval's mean losses.
  entries = metrics_lib.read_jsonl(str(tmp_path))
  assert [e['step'] for e in entries] == [1, 2]
  e = entries[-1]
  np.testing.assert_allclose(e['train/position_vs_zero'], e['train/loss_position'] / e['train/zero_position'],
                             rtol=1e-6)


def test_interval_ratios_are_ratios_of_interval_means():
  history = [{'train/loss': 1.0, 'train/loss_position': 1.0, 'train/zero_position': 1.0,
              'train/position_vs_zero': 1.0},
             {'train/loss': 1.0, 'train/loss_position': 3.0, 'train/zero_position': 9.0,
              'train/position_vs_zero': 1 / 3}]
  m = metrics_lib.mean_metrics(history)
  np.testing.assert_allclose(m['train/position_vs_zero'], 2.0 / 5.0)  # Not the mean of the ratios (2/3).
  history[1]['train/zero_position'] = history[0]['train/zero_position'] = 0.0
  assert np.isnan(metrics_lib.mean_metrics(history)['train/position_vs_zero'])
  line = metrics_lib.MetricWriter('/unused', 10, enabled=False).format_line(
      5, {'train/loss': 0.5, 'train/loss_position': 0.04, 'train/position_vs_zero': 0.8,
          'train/loss_position_moving': 0.1, 'train/position_moving_vs_zero': 0.75,
          'train/loss_position_static': 0.0, 'train/position_static_vs_zero': float('nan'),
          'train/moving_fraction': 0.25})
  assert 'position 0.0400 (vs zero 0.800, moving 0.750, static n/a)' in line and 'moving 0.250' in line
  assert 'position_moving' not in line


def test_grad_accumulation_averages_micro_batch_losses_and_grads():
  """2 micro-batches of 4 (rows 0, 2, 4, 6 and 1, 3, 5, 7): the step's loss and gradient are their means."""
  from m3video_jax import train_step as train_step_lib
  config = tiny_config(**{'optim.grad_accum_steps': 2})
  task = tasks.get_task(config)
  tx = task.optimizer()
  state = train_lib.init_state(task, tx, jax.random.PRNGKey(0))
  batch = random_batch(config, 0)
  step = jax.jit(functools.partial(train_step_lib.train_step, loss_fn=task.loss_fn, tx=tx,
                                   lr_schedule=task.lr_schedule(), accum_steps=2))  # Jitted: eager is ~10x slower.
  _, m = step(state, batch)
  rng = jax.random.fold_in(state.rng, 0)
  grad_fn = jax.jit(jax.value_and_grad(task.loss_fn, has_aux=True))
  outs = [grad_fn(state.params, jax.tree.map(lambda x, i=i: x[i::2], batch), jax.random.fold_in(rng, i))
          for i in range(2)]
  np.testing.assert_allclose(m['train/loss'], np.mean([o[0][0] for o in outs]), rtol=1e-6)
  mean_grads = jax.tree.map(lambda a, b: (a + b) / 2, outs[0][1], outs[1][1])
  np.testing.assert_allclose(m['train/grad_norm'], optax.tree.norm(mean_grads), rtol=1e-5)


def test_config_validation_names_field_and_allowed_values():
  with pytest.raises(ValueError, match=r"config.mask.kind='random'.*one of \('tube', 'cube'\)"):
    tasks.validate(tiny_config(**{'mask.kind': 'random'}))
  with pytest.raises(ValueError, match=r'config.model.encoder=.*one of'):
    tasks.validate(tiny_config(**{'model.encoder': 'XL'}))
  with pytest.raises(ValueError, match=r'config.data.batch_size=6.*multiple of 8 devices'):
    tasks.validate(tiny_config(**{'data.batch_size': 6}), num_devices=8)
  with pytest.raises(ValueError, match=r'config.data.num_frames=5.*multiple of the tubelet length 2'):
    tasks.validate(tiny_config(**{'data.num_frames': 5}))
  with pytest.raises(ValueError, match=r'config.data.train_files'):
    tasks.validate(tiny_config(**{'data.train_files': ''}))
  with pytest.raises(ValueError, match='unknown config arg'):
    pretrain_ssv2.get_config('varient=S')
  with pytest.raises(ValueError, match="target='optical_flow' is invalid: 'optical_flow' is not one of"):
    pretrain_ssv2.get_config('target=optical_flow')


def test_tuple_fields_are_type_and_length_checked():
  """`crop_scales=(1.0,x)` (parsed as a 1-string tuple) used to raise a raw TypeError, and a 2-value `data.mean` was
  reported as `data.std`."""
  with pytest.raises(config_lib.ConfigError, match=r"config.data.crop_scales=\('\(1.0,x\)',\) is invalid: expected a "
                     r'non-empty tuple of numbers, e.g. --config.data.crop_scales="\(1.0,0.875,0.75,0.66\)"'):
    tasks.validate(tiny_config(**{'data.crop_scales': ('(1.0,x)',)}))
  with pytest.raises(config_lib.ConfigError, match=r'config.data.mean=\(0.5, 0.5\) is invalid: expected a tuple of 3'):
    tasks.validate(tiny_config(**{'data.mean': (0.5, 0.5)}))
  with pytest.raises(config_lib.ConfigError, match=r'config.model.patch_size=\(2, 16\) .* 3 integers'):
    tasks.validate(tiny_config(**{'model.patch_size': (2, 16)}))
  with pytest.raises(config_lib.ConfigError, match=r'config.model.patch_size=\(2.0, 16, 16\) .* 3 integers'):
    tasks.validate(tiny_config(**{'model.patch_size': (2.0, 16, 16)}))
  from configs import finetune_ucf101
  ft = finetune_ucf101.get_config()
  ft.data.train_files = ft.data.eval_files = 'x'
  ft.aug.crop_area = (0.2, True)
  with pytest.raises(config_lib.ConfigError, match=r'config.aug.crop_area=\(0.2, True\) .* 2 numbers'):
    tasks.validate(ft)


@pytest.mark.parametrize('name', sorted(n[:-3] for n in os.listdir(os.path.join(os.path.dirname(__file__), '..',
                                                                                'configs'))
                                        if n.endswith('.py') and n != '__init__.py'))
def test_every_config_accepts_a_5_step_run(name):
  """Tools and users shorten runs with --config.total_steps; the demo's 20-step warmup used to refuse 5 steps."""
  import importlib
  config = importlib.import_module(f'configs.{name}').get_config()
  with config.unlocked():
    config.total_steps = 5
    config.data.train_files = config.data.train_files or '/data/x-*.tfrecord'
    if 'eval_files' in config.data:
      config.data.eval_files = config.data.eval_files or '/data/y-*.tfrecord'
  tasks.validate(config)
  sched = tasks.get_task(config).lr_schedule()
  assert optim.warmup_steps(config) == min(config.optim.warmup_steps, 5)
  assert all(np.isfinite(float(sched(k))) for k in range(6)) and float(sched(optim.warmup_steps(config))) > 0


@pytest.mark.parametrize('name', ['pretrain_ssv2', 'pretrain_k400'])
def test_paper_configs_validate_and_compile_abstractly(name):
  import importlib
  module = importlib.import_module(f'configs.{name}')
  config = module.get_config()
  with config.unlocked():
    config.data.train_files = '/data/x-*.tfrecord'
  tasks.validate(config, num_devices=8)
  assert config.data.batch_size == 512 and config.mask.ratio == 0.7 and config.target.traj_len == 6
  task = tasks.get_task(config)
  params = jax.eval_shape(task.init_params, jax.random.PRNGKey(0))
  n = sum(np.prod(x.shape) for x in jax.tree.leaves(params['encoder']))
  assert 86e6 < n < 87e6
  batch = jax.eval_shape(lambda: jax.tree.map(jnp.asarray, tasks.example_batch(config, 2)))
  loss, _ = jax.eval_shape(task.loss_fn, params, batch, jax.random.PRNGKey(0))
  assert loss.shape == ()


def test_weight_decay_skips_biases_norms_and_tokens():
  config = tiny_config()
  params = tasks.get_task(config).init_params(jax.random.PRNGKey(0))
  mask = optim.weight_decay_mask(params)
  flat = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(mask)}
  assert not any(v for k, v in flat.items() if 'bias' in k or 'norm' in k or 'mask_token' in k)
  assert any(v for k, v in flat.items() if 'kernel' in k)


def test_lr_schedule_warms_up_and_scales_with_batch():
  config = tiny_config(total_steps=100, **{'optim.warmup_steps': 10, 'data.batch_size': 512})
  sched = tasks.get_task(config).lr_schedule()
  assert float(sched(0)) == 0.0
  np.testing.assert_allclose(float(sched(10)), config.optim.base_lr * 2, rtol=1e-6)
  np.testing.assert_allclose(float(sched(100)), config.optim.min_lr * 2, rtol=1e-5)
  assert isinstance(tasks.get_task(config).optimizer(), optax.GradientTransformation)


def test_init_from_loads_params_of_another_run(tmp_path):
  config = tiny_config(total_steps=1, checkpoint_every_steps=1)
  run(config, tmp_path / 'pretrained')
  trained = checkpointing.load_params(str(tmp_path / 'pretrained'))
  with config.unlocked():
    config.init_from = str(tmp_path / 'pretrained')
  task = tasks.get_task(config)
  fresh = jax.device_get(task.init_params(jax.random.PRNGKey(0)))
  loaded = checkpointing.load_init_params(config.init_from, fresh)
  jax.tree.map(np.testing.assert_array_equal, loaded, trained)
  # An encoder-only checkpoint (e.g. imported weights) keeps the fresh decoder; a missing encoder leaf is an error.
  partial = {'encoder': trained['encoder']}
  import orbax.checkpoint as ocp
  with ocp.CheckpointManager(str(tmp_path / 'enc' / 'checkpoints')) as m:
    m.save(0, args=ocp.args.StandardSave({'params': partial}))
  loaded = checkpointing.load_init_params(str(tmp_path / 'enc'), fresh)
  jax.tree.map(np.testing.assert_array_equal, loaded['encoder'], trained['encoder'])
  jax.tree.map(np.testing.assert_array_equal, loaded['decoder'], fresh['decoder'])
  del partial['encoder']['norm']
  with ocp.CheckpointManager(str(tmp_path / 'broken' / 'checkpoints')) as m:
    m.save(0, args=ocp.args.StandardSave({'params': partial}))
  with pytest.raises(ValueError, match=r"missing encoder params \[\"\['encoder'\]\['norm'\]"):
    checkpointing.load_init_params(str(tmp_path / 'broken'), fresh)


def _damage_checkpoint(step_dir, how):
  item = os.path.join(step_dir, 'default')
  if how in ('truncate_data', 'delete_data'):
    data = max((os.path.join(d, f) for d, _, fs in os.walk(os.path.join(item, 'ocdbt.process_0', 'd')) for f in fs),
               key=os.path.getsize)  # The file holding the parameters.
    if how == 'delete_data':
      os.remove(data)
    else:
      os.truncate(data, os.path.getsize(data) // 2)
  elif how == 'delete_metadata':
    os.remove(os.path.join(item, '_METADATA'))
  else:  # Emptied step directory.
    for entry in os.listdir(step_dir):
      path = os.path.join(step_dir, entry)
      if os.path.isdir(path):
        shutil.rmtree(path)
      else:
        os.remove(path)


def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_step_and_resumes_exactly(tmp_path, caplog):
  """Each of these damages used to stop every restart (zstd, event-loop, pytree-structure or `Composite` args
  errors); now the restart logs it, moves the step aside and resumes exactly from the step before."""
  config = tiny_config(total_steps=6, checkpoint_every_steps=2, log_every_steps=1)
  straight = run(config, tmp_path / 'straight')
  with pytest.raises(KeyboardInterrupt):
    run(config, tmp_path / 'killed', fail_at=6)  # Checkpoints at steps 2 and 4.
  for how in ('truncate_data', 'delete_data', 'delete_metadata', 'empty_dir'):
    workdir = tmp_path / how
    shutil.copytree(tmp_path / 'killed', workdir)
    _damage_checkpoint(str(workdir / 'checkpoints' / '4'), how)
    caplog.clear()
    with caplog.at_level('WARNING'):
      resumed = run(config, workdir)
    assert 'checkpoint step 4' in caplog.text and 'cannot be restored' in caplog.text, how
    assert 'checkpoint step 2' not in caplog.text, how
    # Trained from step 2 to 6 on the same data: the same final loss as the uninterrupted run.
    assert resumed['train/loss'] == straight['train/loss'], how
    assert resumed['train/grad_norm'] == straight['train/grad_norm'], how
    aside = os.listdir(workdir / checkpointing.DAMAGED_DIR)
    assert len(aside) == 1 and aside[0].startswith('4-'), how  # Kept, renamed, outside the checkpoint directory.
    assert sorted(os.listdir(workdir / 'checkpoints')) == ['2', '4', '6'], how
  # A config that matches no checkpoint is not damage: nothing is moved, the restart fails naming each step.
  other = tiny_config(total_steps=6, checkpoint_every_steps=2, log_every_steps=1, **{'model.decoder_width': 96})
  with pytest.raises(RuntimeError, match=r'no checkpoint in .* restores onto this config \(nothing was moved'):
    run(other, tmp_path / 'killed')
  assert sorted(os.listdir(tmp_path / 'killed' / 'checkpoints')) == ['2', '4']
  assert not os.path.exists(tmp_path / 'killed' / checkpointing.DAMAGED_DIR)


def test_unusable_workdir_and_bad_fields_are_one_line_errors(tmp_path):
  import subprocess
  import sys

  (tmp_path / 'afile').write_text('x')
  with pytest.raises(config_lib.ConfigError, match='is a file, not a directory'):
    train_lib.check_workdir(str(tmp_path / 'afile'))
  with pytest.raises(config_lib.ConfigError, match='cannot be created: Not a directory'):
    train_lib.check_workdir(str(tmp_path / 'afile' / 'run'))
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  for args, message in ((['--workdir=' + str(tmp_path / 'afile')], f'error: --workdir={tmp_path / "afile"} is a file'),
                        (['--workdir=' + str(tmp_path / 'run'), '--config.data.crop_scales=(1.0,x)'],
                         "error: config.data.crop_scales=('(1.0,x)',) is invalid")):
    proc = subprocess.run([sys.executable, '-m', 'm3video_jax.main', '--config=configs/demo.py', *args], cwd=repo,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and proc.stderr.strip().splitlines()[-1].startswith(message), proc.stderr[-2000:]
    assert 'Traceback' not in proc.stderr
