"""Orbax checkpoints of the TrainState: async saves every `checkpoint_every_steps`, keep-N, resume onto any mesh."""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp

from m3video_jax import cli


class RestoreError(cli.UserError, RuntimeError):
  """No checkpoint of the workdir restores onto the config (`restore_or_init`)."""


class DiskFullError(cli.UserError):
  """A checkpoint could not be written for lack of space (`save`, `finish`); the ones written before are intact."""


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), 'checkpoints')


def make_manager(workdir: str, config) -> ocp.CheckpointManager:
  if not cli.verbose_from_env():
    for name in ('absl', 'asyncio'):  # Orbax logs through absl; asyncio reports the failed writes it never awaited.
      if _DISK_FULL_NOISE not in logging.getLogger(name).filters:
        logging.getLogger(name).addFilter(_DISK_FULL_NOISE)
  options = ocp.CheckpointManagerOptions(
      max_to_keep=config.keep_checkpoints, save_interval_steps=config.checkpoint_every_steps, create=True,
      enable_async_checkpointing=True)
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options)


def abstract_with_sharding(abstract: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs that carry the target sharding, so a restore lands directly on the current mesh."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


DAMAGED_DIR = 'checkpoints_damaged'


def restore_or_init(workdir: str, config, abstract_state: Any, shardings: Any,
                    init_fn: Callable[[], Any]) -> tuple[ocp.CheckpointManager, Any, int | None]:
  """Restores the newest checkpoint in `workdir` that restores onto `shardings`, or calls `init_fn()` when there is none.

  Steps are tried newest first. When an older step restores, every newer one that did not (a truncated or deleted
  data file, missing metadata, an emptied step directory) is logged with its reason and moved aside to
  `<workdir>/checkpoints_damaged/<step>-<time>` (kept, not deleted): a damaged newest checkpoint costs the steps since
  the one before it, not the run, and the training stream resumes exactly from the step restored. When no step
  restores (typically a config that no longer matches the checkpoints), nothing is moved and the error is raised.

  Returns:
    (the checkpoint manager to save with, state, restored step or None).

  Raises:
    RestoreError: no step restores; the message names each step and why, the newest step's error is the cause.
  """
  target = abstract_with_sharding(abstract_state, shardings)
  manager = make_manager(workdir, config)
  steps = sorted(manager.all_steps(), reverse=True)
  if not steps:
    return manager, init_fn(), None
  failed: list[tuple[int, str, Exception]] = []
  for step in steps:
    try:
      state = _restore_step(checkpoint_dir(workdir), step, target)
    except Exception as e:  # Orbax raises many types for damaged files (zstd, tensorstore, tree, args errors).
      text = str(e).strip()
      failed.append((step, f'{type(e).__name__}: {text.splitlines()[0] if text else ""}'[:300], e))
      continue
    if failed:
      manager.close()
      for bad, reason, _ in failed:
        moved = _set_aside(checkpoint_dir(workdir), bad)
        logging.warning('checkpoint step %d in %s cannot be restored (%s); %s; resuming from step %d', bad,
                        checkpoint_dir(workdir), reason, f'moved it to {moved}' if moved else 'process 0 moves it',
                        step)
      manager = make_manager(workdir, config)
    return manager, state, step
  manager.close()
  raise RestoreError(f'no checkpoint in {checkpoint_dir(workdir)} restores onto this config (nothing was moved or '
                     'deleted): ' + '; '.join(f'step {st}: {reason}' for st, reason, _ in failed)
                     + '. If the config changed, train in a new --workdir') from failed[0][2]


def _restore_step(ckpt_dir: str, step: int, target: Any) -> Any:
  """One step's state, read on its own (a manager that failed on one step can misjudge the next)."""
  checkpointer = ocp.StandardCheckpointer()
  try:
    return checkpointer.restore(os.path.join(ckpt_dir, str(step), 'default'), target)
  finally:
    checkpointer.close()


def _set_aside(ckpt_dir: str, step: int) -> str | None:
  """Moves `<ckpt_dir>/<step>` to `<ckpt_dir>/../checkpoints_damaged/<step>-<UTC time>`; process 0 only."""
  if jax.process_index() != 0:
    return None
  import datetime

  src = os.path.join(ckpt_dir, str(step))
  dst_dir = os.path.join(os.path.dirname(ckpt_dir.rstrip('/')), DAMAGED_DIR)
  os.makedirs(dst_dir, exist_ok=True)
  dst = os.path.join(dst_dir, f'{step}-{datetime.datetime.now(datetime.timezone.utc):%Y%m%dT%H%M%S.%fZ}')
  os.rename(src, dst)
  return dst


def save(manager: ocp.CheckpointManager, step: int, state: Any, *, force: bool = False) -> bool:
  """Saves when `step` hits the interval (or `force`); returns whether a save started.

  Raises:
    DiskFullError: when this save, or the previous one still being written, finds no space.
  """
  try:
    return manager.save(step, args=ocp.args.StandardSave(state), force=force)
  except Exception as e:  # Orbax reports a full disk as tensorstore's ValueError('RESOURCE_EXHAUSTED: ...').
    _raise_if_disk_full(e, manager)
    raise


def finish(manager: ocp.CheckpointManager) -> None:
  """Waits for the save in flight and closes `manager`.

  Raises:
    DiskFullError: when that save finds no space.
  """
  try:
    manager.wait_until_finished()
  except Exception as e:
    try:
      manager.close()
    except Exception:  # pylint: disable=broad-except  # The same failure, reported again.
      pass
    _raise_if_disk_full(e, manager)
    raise
  manager.close()


class _DiskFullNoise(logging.Filter):
  """Drops the reports, each with its traceback, that Orbax's writer threads (absl) and asyncio log of a save that
  found no space: the run reports that failure in one line (`DiskFullError`); `--verbose` shows them."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not (record.exc_info and cli.is_disk_full(record.exc_info[1]))


_DISK_FULL_NOISE = _DiskFullNoise()


def _raise_if_disk_full(e: Exception, manager: ocp.CheckpointManager) -> None:
  """Raises `DiskFullError` from `e` when `e` says no space is left, naming the checkpoints still intact."""
  if not cli.is_disk_full(e):
    return
  try:
    manager.wait_until_finished()  # An earlier save still in flight may complete.
  except Exception:  # pylint: disable=broad-except  # The same failure.
    pass
  directory = str(manager.directory)
  intact = sorted(ocp.utils.checkpoint_steps(directory)) if os.path.isdir(directory) else []
  text = str(e).strip()
  reason = text.splitlines()[0] if text else type(e).__name__
  reason = reason if len(reason) <= 200 else reason[:200] + '...'
  kept = (f'the checkpoints written before (steps {intact}) are intact: free space (or lower config.keep_checkpoints) '
          f'and re-run the same command, which resumes from step {intact[-1]}' if intact else
          'no checkpoint was written: free space and re-run the same command')
  raise DiskFullError(f'no space left to write a checkpoint in {directory} ({reason}); {kept}') from e


def resolve_checkpoint(path: str, step: int | None = None) -> tuple[str, int]:
  """A workdir, a `checkpoints/` dir or a step dir -> (checkpoints dir, step). Latest step unless `step` is given.

  Raises:
    FileNotFoundError: naming the path when it holds no checkpoint (or not the requested step).
  """
  path = os.path.abspath(path)
  candidates = [path, os.path.join(path, 'checkpoints')]
  for d in candidates:
    if os.path.isdir(d):
      steps = ocp.utils.checkpoint_steps(d)
      if steps:
        if step is None:
          return d, max(steps)
        if step in steps:
          return d, step
        raise FileNotFoundError(f'{d} has checkpoints at steps {sorted(steps)}, not at step {step}')
  base = os.path.basename(path)
  if base.isdigit() and os.path.isdir(path):
    return os.path.dirname(path), int(base)
  raise FileNotFoundError(f'no orbax checkpoint found in {path} (looked for step dirs in {candidates})')


def load_params(path: str, step: int | None = None) -> Any:
  """The `params` of a TrainState checkpoint as host numpy arrays, whatever mesh or devices saved it.

  For init_from, export and features. Every leaf is read whole as a numpy array (a restore onto the saved sharding
  fails on another topology, e.g. an 8-device checkpoint read on one device); the optimiser state is not read.

  Raises:
    FileNotFoundError: naming the path when it holds no checkpoint (or not the requested step).
    ValueError: when the checkpoint holds no `params`.
  """
  ckpt_dir, step = resolve_checkpoint(path, step)
  item_dir = os.path.join(ckpt_dir, str(step), 'default')  # CheckpointManager's name for its single item.
  if not os.path.isdir(item_dir):
    found = sorted(os.listdir(os.path.dirname(item_dir))) if os.path.isdir(os.path.dirname(item_dir)) else []
    raise FileNotFoundError(f'{item_dir} does not exist (the step directory holds {found}); expected a checkpoint '
                            'saved by CheckpointManager with one unnamed item')
  checkpointer = ocp.PyTreeCheckpointer()
  absl_logger = logging.getLogger('absl')
  level = absl_logger.level
  absl_logger.setLevel(logging.ERROR)  # Reading the item's metadata warns that _CHECKPOINT_METADATA is one dir up.
  try:
    tree = checkpointer.metadata(item_dir).item_metadata
  finally:
    absl_logger.setLevel(level)
  tree = getattr(tree, 'tree', tree)
  if 'params' not in tree:
    raise ValueError(f'{item_dir} holds {sorted(tree)}, not a "params" item')
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree['params'])
  restored = checkpointer.restore(item_dir, args=ocp.args.PyTreeRestore(
      item={'params': tree['params']}, restore_args={'params': restore_args}, partial_restore=True))
  return _to_plain_dict(restored['params'])


def read_run_config(checkpoint_dir: str) -> dict[str, Any] | None:
  """The `config.json` beside an orbax `checkpoints/` dir (a training workdir or an import output), if any."""
  path = os.path.join(os.path.dirname(os.path.abspath(checkpoint_dir)), 'config.json')
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _to_plain_dict(tree: Any) -> Any:
  if isinstance(tree, Mapping):
    return {k: _to_plain_dict(v) for k, v in tree.items()}
  return np.asarray(tree)


def load_init_params(path: str, init_params: Any) -> Any:
  """Params from `config.init_from` (an orbax checkpoint of ours or one written by
  `m3video_jax.interop.import_weights`).

  Every leaf under `encoder` must be in the checkpoint with the model's shape; other leaves (decoder, classifier head)
  are taken from the checkpoint when present and shaped alike, else (absent, or e.g. a head for another number of
  classes) keep their fresh initialisation. Leaves of the
  checkpoint the model does not have (e.g. a pretraining decoder when finetuning) are ignored.

  Raises:
    cli.ConfigError: naming `path` when it holds no checkpoint, or listing missing encoder leaves or shape
      mismatches.
  """
  try:
    loaded = load_params(path)
  except FileNotFoundError as e:
    raise cli.ConfigError(f'config.init_from={path!r} holds no checkpoint to initialise from: {e}') from None
  flat_loaded = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(loaded)}
  flat_model = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(init_params)}
  encoder = lambda k: k.startswith("['encoder']")
  missing = sorted(k for k in flat_model if encoder(k) and k not in flat_loaded)
  mismatched = sorted(k for k in set(flat_model) & set(flat_loaded) if flat_model[k].shape != flat_loaded[k].shape)
  reshaped = [k for k in mismatched if not encoder(k)]  # E.g. another number of classes: keep the fresh head.
  mismatched = [k for k in mismatched if encoder(k)]
  for k in reshaped:
    del flat_loaded[k]
  if reshaped:
    logging.info('init_from: %s have another shape in %s and keep their initialisation', reshaped, path)
  if missing or mismatched:
    # E.g. a classifier (no final encoder norm) as init_from of pretraining.
    kind = f' (it holds a classifier: {sorted(loaded)})' if 'head' in loaded and 'head' not in init_params else ''
    raise cli.ConfigError(
        f'config.init_from={path!r} does not fit the model{kind}: missing encoder params {missing[:10]}, encoder '
        f'shape mismatches (checkpoint vs model) '
        f'{[(k, flat_loaded[k].shape, flat_model[k].shape) for k in mismatched[:10]]}')
  kept = sorted(k for k in flat_model if k not in flat_loaded)
  if kept:
    logging.info('init_from: %d params not in %s keep their initialisation (first: %s)', len(kept), path, kept[:5])
  return jax.tree_util.tree_map_with_path(
      lambda k, v: flat_loaded.get(jax.tree_util.keystr(k), v), init_params)
