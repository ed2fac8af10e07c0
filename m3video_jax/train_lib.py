"""The one training loop: `train_and_evaluate(config, workdir)` builds everything, trains, checkpoints and logs.

Order of work: validate the config (`tasks.validate`) -> lock the workdir (`workdir_lock`) -> (demo) the task prepares
its data -> `make_trainer`: mesh, task, optimiser, abstract state (`eval_shape`), shardings, jitted step -> restore the
latest checkpoint in the workdir, else `init_from`, else a fresh init -> config.json -> input stream positioned at the
restored step -> jitted step (state donated on accelerators) in a loop -> async checkpoints -> TensorBoard + console
metrics.
The task's `evaluate` runs every `eval_every_steps` and after the last step (classification: validation and test).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import subprocess
import time
from typing import Any, Callable, Iterable, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from m3video_jax import checkpointing
from m3video_jax import cli
from m3video_jax import config_lib
from m3video_jax import metrics as metrics_lib
from m3video_jax import optim
from m3video_jax import sharding
from m3video_jax import tasks
from m3video_jax import train_step as train_step_lib
from m3video_jax.train_state import TrainState


def save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Writes `<workdir>/config.json` (process 0): called once the state is restored or initialised, so a run that
  cannot restore the workdir's checkpoints leaves the config that describes them."""
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config.to_json_best_effort(indent=2, sort_keys=True))


def init_state(task, tx, rng: jax.Array) -> TrainState:
  """A fresh TrainState: the task's params, the optimiser state, step 0 and the training rng."""
  rng_init, rng_train = jax.random.split(rng)
  params = task.init_params(rng_init)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), rng=rng_train)


@dataclasses.dataclass(frozen=True)
class Trainer:
  """What a run builds from its config before it reads any data (`make_trainer`): the task, its optimiser, the mesh,
  the abstract state and its shardings, and the jitted step. The training loop, the tests and `bench/train_step.py`
  all use this one set-up."""
  config: Any
  task: Any
  tx: Any
  mesh: Any
  init_fn: Callable[[jax.Array], TrainState]  # rng -> a fresh state (not jitted, not sharded)
  abstract_state: Any
  state_sharding: Any
  batch_sharding: Any
  step_fn: Callable[[TrainState, dict[str, jax.Array]], tuple[TrainState, dict[str, jax.Array]]]

  def init(self, rng: jax.Array) -> TrainState:
    """A fresh state, created sharded on the mesh."""
    return jax.jit(self.init_fn, out_shardings=self.state_sharding)(rng)


def make_trainer(config: ml_collections.ConfigDict, mesh=None) -> Trainer:
  """The task, optimiser, abstract state, shardings and jitted step of `config` (mesh default: `config.mesh` over
  all devices)."""
  mesh = mesh if mesh is not None else sharding.make_mesh(config.mesh)
  task = tasks.get_task(config)
  tx = task.optimizer()
  init_fn = functools.partial(init_state, task, tx)
  abstract = jax.eval_shape(init_fn, jax.random.PRNGKey(0))
  state_shd = sharding.state_sharding(abstract, mesh)
  batch_shd = sharding.batch_sharding(mesh)
  return Trainer(config=config, task=task, tx=tx, mesh=mesh, init_fn=init_fn, abstract_state=abstract,
                 state_sharding=state_shd, batch_sharding=batch_shd,
                 step_fn=make_step_fn(task, tx, config, state_shd, batch_shd, mesh))


def donates_state(mesh) -> bool:
  """Whether the train step donates the state: on accelerators yes (it halves the state's memory); on CPU no.

  XLA:CPU runs independent kernels concurrently and cannot order the in-place parameter update after the backward
  matmuls that still read the parameter, so with donation it copies every parameter each step (~5% of a ViT-S step on
  2 cores, bench/train_step.py); host memory is rarely what limits a CPU run.
  """
  return mesh.devices.flat[0].platform != 'cpu'


def make_step_fn(task, tx, config, state_shd, batch_shd, mesh):
  """The jitted train step with explicit in/out shardings; donates the state except on CPU (`donates_state`)."""
  return jax.jit(
      functools.partial(train_step_lib.train_step, loss_fn=task.loss_fn, tx=tx, lr_schedule=task.lr_schedule(),
                        accum_steps=config.optim.grad_accum_steps),
      in_shardings=(state_shd, batch_shd), out_shardings=(state_shd, sharding.replicated(mesh)),
      donate_argnums=(0,) if donates_state(mesh) else ())


def check_workdir(workdir: str) -> None:
  """Creates `workdir`, or raises `config_lib.ConfigError` saying why it cannot be used (a file, not writable)."""
  try:
    cli.writable_dir(workdir, '--workdir')
  except cli.UnusableOutputError as e:
    raise config_lib.ConfigError(str(e)) from None


LOCK_FILE = 'run.lock'


class WorkdirInUseError(cli.UserError):
  """Another training run holds the lock of the workdir (`workdir_lock`)."""


@contextlib.contextmanager
def workdir_lock(workdir: str):
  """Holds an exclusive lock on `workdir` (`cli.exclusive_lock` on `<workdir>/run.lock`) for a run's lifetime.

  Two runs in one workdir would interleave `metrics.jsonl` and delete each other's checkpoints. One lock per run:
  process 0 takes it (the other processes of a multi-process run share its workdir and write no metrics). A killed
  run's lock goes with its process, so it never blocks the resume.

  Process 0 tells the others whether it got the lock (the coordination service's key-value store), so that a refused
  run stops in every process with the same line instead of leaving processes > 0 waiting in the first collective.

  Raises:
    WorkdirInUseError: naming the holder (pid, host, start time) when another run holds the lock.
  """
  key = f'm3video_workdir_lock:{workdir}'
  if jax.process_index() > 0:
    verdict = sharding.hear_from_process_0(key, timeout_s=600)
    if verdict != 'ok':
      raise WorkdirInUseError(verdict)
    yield
    return
  busy = lambda holder: WorkdirInUseError(
      f'--workdir={workdir} is in use by another training run ({holder}); wait for it to finish (or stop it) and '
      're-run this command, which then resumes, or use another --workdir')
  with contextlib.ExitStack() as stack:
    try:
      stack.enter_context(cli.exclusive_lock(os.path.join(workdir, LOCK_FILE), busy))
    except WorkdirInUseError as e:
      sharding.tell_other_processes(key, str(e))
      raise
    sharding.tell_other_processes(key, 'ok')
    yield


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       make_batch_iterator: Callable[[int], Iterator[dict[str, np.ndarray]]] | None = None
                       ) -> dict[str, float]:
  """Trains `config` in `workdir`, resuming from the latest checkpoint there.

  Args:
    config: a validated-or-not config (validated here first).
    workdir: checkpoints, TensorBoard events and config.json go here.
    make_batch_iterator: override of the input pipeline (tests): `fn(start_step)` -> iterator of host-local numpy
      batches, the first one for step `start_step + 1`.

  Returns:
    The metrics of the last logged interval.

  Raises:
    cli.UserError: bad input, reported by `m3video_jax.main` as one line (an invalid config field, an unusable or
      locked workdir, checkpoints that do not restore onto `config`, `init_from` or `data.train_files` that hold
      nothing usable, a full disk).
  """
  t_start = time.perf_counter()
  tasks.validate(config, num_devices=jax.device_count())
  jax.config.update('jax_threefry_partitionable', True)
  workdir = os.path.abspath(workdir)
  check_workdir(workdir)
  with workdir_lock(workdir):
    return _train(config, workdir, make_batch_iterator, t_start)


def _train(config: ml_collections.ConfigDict, workdir: str,
           make_batch_iterator: Callable[[int], Iterator[dict[str, np.ndarray]]] | None,
           t_start: float) -> dict[str, float]:
  """`train_and_evaluate` in a checked and locked workdir."""
  if config.optim.warmup_steps > config.total_steps:
    logging.warning('optim.warmup_steps=%d is longer than total_steps=%d: warming up over all %d steps',
                    config.optim.warmup_steps, config.total_steps, optim.warmup_steps(config))
  if config.data.get('prepare_if_missing') and make_batch_iterator is None:
    with config.unlocked():
      tasks.get_task(config).prepare_demo_data(workdir, is_chief=jax.process_index() == 0)
    sharding.wait_for_process_0('m3video_demo_data', float(config.data.get('prepare_timeout_s', 3600)),
                       f'prepare the demo data in {workdir} (the workdir must be on a file system all processes share)')

  trainer = make_trainer(config)
  task, tx, mesh = trainer.task, trainer.tx, trainer.mesh
  state_shd, batch_shd = trainer.state_sharding, trainer.batch_sharding
  rng = jax.random.PRNGKey(config.seed)

  def fresh_state():
    state = trainer.init(rng)
    if config.init_from:
      params = checkpointing.load_init_params(config.init_from, jax.device_get(state.params))
      params = jax.device_put(params, state_shd.params)
      state = state.replace(params=params, opt_state=jax.jit(tx.init, out_shardings=state_shd.opt_state)(params))
      logging.info('initialised params from %s', config.init_from)
    return state

  manager, state, restored = checkpointing.restore_or_init(workdir, config, trainer.abstract_state, state_shd,
                                                           fresh_state)
  start_step = int(jax.device_get(state.step))
  if restored is not None:
    logging.info('resumed from %s at step %d', checkpointing.checkpoint_dir(workdir), start_step)
  save_config(config, workdir)  # Only now: the state restored, or a fresh one was made.

  try:
    batch_iterator = (make_batch_iterator or task.make_train_iterator)(start_step)
  except FileNotFoundError as e:  # data.train_files matching no file (the message names the field).
    raise cli.UserError(str(e)) from None
  step_fn = trainer.step_fn

  writer = metrics_lib.MetricWriter(workdir, config.total_steps, enabled=jax.process_index() == 0)
  alarm = metrics_lib.LearningAlarm.from_config(config, optim.warmup_steps(config), workdir=workdir,
                                                start_step=start_step)
  history: list[dict[str, jax.Array]] = []
  last: dict[str, float] = {}
  interval_start = start_step + 1
  viz_batch = None  # The first host batch: the pictures follow one clip through the run.
  draws = config.viz_every_steps > 0 and jax.process_index() == 0
  if config.viz_every_steps > 0 and jax.process_count() > 1:
    draws = False
    logging.warning('viz_every_steps: pictures are drawn in single-process runs only; none in this run')
  try:
    for step in range(start_step + 1, config.total_steps + 1):
      host_batch = next(batch_iterator)
      if draws and viz_batch is None:
        viz_batch = host_batch
      batch = sharding.to_global(host_batch, batch_shd)
      state, step_metrics = step_fn(state, batch)
      history.append(step_metrics)
      is_last = step == config.total_steps
      should_save = is_last or step % config.checkpoint_every_steps == 0
      should_eval = is_last or (config.eval_every_steps > 0 and step % config.eval_every_steps == 0)
      if step % config.log_every_steps == 0 or should_save or should_eval:
        # The only device->host sync of an interval; checking before a save keeps NaN states out of checkpoints.
        metrics_lib.check_finite(history, interval_start)
        scalars = metrics_lib.mean_metrics(history)
        if should_eval:  # Classification: val/* (and eval/* at the end); pretraining: nothing.
          scalars.update(task.evaluate(state.params, mesh=mesh, workdir=workdir, step=step, final=is_last))
        last = writer.write(step, scalars, alarm.update(interval_start, step, scalars))
        history, interval_start = [], step + 1
      if draws and (step % config.viz_every_steps == 0 or is_last):
        writer.write_images(step, task.pictures(state.params, viz_batch, step))
      if should_save:
        checkpointing.save(manager, step, state, force=is_last)
  finally:
    try:
      checkpointing.finish(manager)
    finally:
      writer.close()
  if jax.process_index() == 0:
    outputs = {}
    if start_step < config.total_steps and jax.process_count() == 1:  # Pictures jit on params of one process.
      try:
        outputs = task.closing_outputs(state.params, workdir)
      except (OSError, ValueError, RuntimeError, subprocess.CalledProcessError) as e:  # The run itself is done.
        logging.warning('closing picture not written (%s: %s); the checkpoints are complete', type(e).__name__, e)
    for line in closing_summary(config, task, workdir, last, start_step, time.perf_counter() - t_start, outputs,
                                alarms=alarm.raised.values()):
      logging.info(line)
  return last


def closing_summary(config, task, workdir: str, last: dict[str, float], start_step: int, seconds: float,
                    outputs: dict[str, str], alarms: Iterable[str] = ()) -> list[str]:
  """What a finished run tells its user: what was learned (and the run's `LearningAlarm` warnings again), where
  everything was written, what to run next."""
  if start_step >= config.total_steps:
    head = f'run already complete (checkpoint at step {start_step}, total_steps {config.total_steps}) in {workdir}; ' \
           'nothing trained'
  else:
    prep = ' (data prep included)' if config.data.get('prepare_if_missing') else ''
    head = f'run complete: steps {start_step + 1}..{config.total_steps} in {metrics_lib.format_seconds(seconds)}{prep}'
  lines = [head] + ([f'  {line}' for line in task.summary_lines(last)] if last else [])
  lines += [f'  {line}' for line in alarms]
  lines += [f'  checkpoints: {checkpointing.checkpoint_dir(workdir)}',
            f'  TensorBoard events and {metrics_lib.METRICS_FILE}: {workdir} (tensorboard --logdir {workdir})',
            f'  config: {os.path.join(workdir, "config.json")}']
  lines += [f'  {name}: {path}' for name, path in outputs.items()]
  if config.get('next_commands'):
    lines.append('  next:')
    lines += [f'    {command.format(workdir=workdir)}' for command in config.next_commands]
  result = task.result_line(workdir)
  return lines + ([result] if result else [])
