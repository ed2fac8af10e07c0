"""Bad input to a training run is one `error:` line (`cli.UserError`), leaves the workdir as it was, and a second run on
a workdir in use is refused: invalid target fields, `data.train_files` or `init_from` holding nothing usable,
checkpoints that do not restore onto the config (config.json untouched), a full disk while checkpointing (the earlier
checkpoint resumes), the workdir lock."""
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from m3video_jax import checkpointing
from m3video_jax import cli
from m3video_jax import config_lib
from m3video_jax import sharding
from m3video_jax import targets
from m3video_jax import tasks
from m3video_jax import train_lib

from train_test import run
from train_test import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _main(workdir, *overrides):
  """`python -m m3video_jax.main` on the tiny pretraining config: (exit status, stderr)."""
  proc = subprocess.run([sys.executable, '-m', 'm3video_jax.main', '--config=configs/pretrain_ssv2.py:tiny',
                         f'--workdir={workdir}', '--config.data.train_files=unused', *overrides],
                        cwd=REPO, capture_output=True, text=True, timeout=300)
  return proc.returncode, proc.stderr


def _assert_one_error_line(status, stderr, starts):
  assert status == 1 and 'Traceback' not in stderr, stderr[-3000:]
  assert stderr.strip().splitlines()[-1].startswith(starts), stderr[-3000:]


def test_the_config_errors_of_every_part_are_user_errors():
  assert issubclass(config_lib.ConfigError, cli.UserError) and issubclass(config_lib.ConfigError, ValueError)
  assert issubclass(sharding.WaitTimeoutError, cli.UserError)
  config = tiny_config(**{'target.position_norm': 'bogus'})
  with pytest.raises(cli.UserError, match=r"config.target.position_norm='bogus' is invalid: expected one of"):
    targets.validate(config.target)


def test_main_prints_an_invalid_target_field_in_one_line(tmp_path):
  _assert_one_error_line(*_main(tmp_path / 'run', '--config.target.position_norm=bogus'),
                         "error: config.target.position_norm='bogus' is invalid: expected one of")


def test_train_files_matching_nothing_is_a_user_error_naming_the_field(tmp_path):
  config = tiny_config(total_steps=1)
  config.data.train_files = str(tmp_path / 'nothing-*.tfrecord')
  with pytest.raises(cli.UserError, match=r"config.data.train_files='.*nothing-\*.tfrecord' matches no file"):
    train_lib.train_and_evaluate(config, str(tmp_path / 'run'))


def test_eval_files_matching_nothing_stop_a_fine_tune_before_it_trains(tmp_path):
  from configs import finetune_ssv2
  import motion_records

  config = finetune_ssv2.get_config('tiny')
  config.data.train_files = motion_records.write_motion_shards(tmp_path / 'train', num_videos=4, size=48, frames=12)
  config.data.eval_files = str(tmp_path / 'val-nothing-*.tfrecord')
  with pytest.raises(cli.UserError, match=r"config.data.eval_files='.*val-nothing-\*.tfrecord' matches no file"):
    train_lib.train_and_evaluate(config, str(tmp_path / 'run'))
  checkpoints = tmp_path / 'run' / 'checkpoints'  # Stopped before the first step: no checkpoint was written.
  assert not os.path.exists(checkpoints) or not [n for n in os.listdir(checkpoints) if n.isdigit()]


def _abstract_params(config):
  abstract = jax.eval_shape(tasks.get_task(config).init_params, jax.random.PRNGKey(0))
  return jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), abstract)


def test_init_from_without_a_checkpoint_or_of_a_classifier_is_a_user_error(tmp_path):
  config = tiny_config()
  fresh = _abstract_params(config)
  os.makedirs(tmp_path / 'empty')
  with pytest.raises(cli.UserError, match=r"config.init_from='.*empty' holds no checkpoint to initialise from: no "
                                          'orbax checkpoint found'):
    checkpointing.load_init_params(str(tmp_path / 'empty'), fresh)
  # A fine-tuning run's params: the encoder without its final norm, plus fc_norm and head.
  encoder = dict(fresh['encoder'])
  del encoder['norm']
  classifier = {'encoder': encoder, 'fc_norm': fresh['encoder']['norm'],
                'head': {'kernel': np.zeros((64, 5), np.float32), 'bias': np.zeros(5, np.float32)}}
  with ocp.CheckpointManager(str(tmp_path / 'finetuned' / 'checkpoints')) as manager:
    manager.save(0, args=ocp.args.StandardSave({'params': classifier}))
  with pytest.raises(cli.UserError, match=r"config.init_from='.*finetuned' does not fit the model \(it holds a "
                                          r"classifier: \['encoder', 'fc_norm', 'head'\]\): missing encoder params "
                                          r"\[\"\['encoder'\]\['norm'\]"):
    checkpointing.load_init_params(str(tmp_path / 'finetuned'), fresh)


def test_a_run_that_does_not_restore_leaves_config_json_as_it_was(tmp_path):
  """The workdir's checkpoints are of decoder_width 32; a run with 64 fails to restore them and must not rewrite
  config.json (which export and evaluation read to know the model)."""
  workdir = tmp_path / 'run'
  config = tiny_config()
  trainer = train_lib.make_trainer(config)
  manager = checkpointing.make_manager(str(workdir), config)
  checkpointing.save(manager, 2, trainer.init(jax.random.PRNGKey(0)), force=True)
  manager.wait_until_finished()
  manager.close()
  train_lib.save_config(config, str(workdir))
  before = (workdir / 'config.json').read_bytes()
  other = tiny_config(**{'model.decoder_width': 64})
  with pytest.raises(RuntimeError, match='restores onto this config') as e:
    train_lib.train_and_evaluate(other, str(workdir))
  assert (workdir / 'config.json').read_bytes() == before
  assert json.loads(before)['model']['decoder_width'] == 32
  assert isinstance(e.value, cli.UserError)  # m3video_jax.main prints it as one line.


def _disk_full(directory, step):
  """What Orbax raises when the disk is full (tensorstore's ValueError, as seen on a full tmpfs)."""
  return ValueError(f'RESOURCE_EXHAUSTED: Error writing local file "{directory}/{step}.orbax-checkpoint-tmp/default.'
                    'orbax-checkpoint-tmp/_sharding": Failed writing: "_sharding.__lock": Failed to write 42610 bytes '
                    "to file 13: No space left on device [os_error_code='28']")


def test_a_full_disk_while_checkpointing_is_a_user_error_and_the_earlier_checkpoint_resumes(tmp_path, monkeypatch):
  """A full disk surfaces from the save after the failed one or from the final wait (Orbax writes asynchronously):
  both are one error naming the checkpoints still intact, and a re-run resumes from them."""
  config = tiny_config(total_steps=2, checkpoint_every_steps=1, log_every_steps=1)
  workdir = tmp_path / 'run'
  ckpt_dir = checkpointing.checkpoint_dir(str(workdir))
  save, wait = ocp.CheckpointManager.save, ocp.CheckpointManager.wait_until_finished

  def full_at_step_2(self, step, *args, **kwargs):
    if step == 2:
      raise _disk_full(ckpt_dir, step)
    return save(self, step, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, 'save', full_at_step_2)
  message = (r'no space left to write a checkpoint in .*/run/checkpoints \(RESOURCE_EXHAUSTED: .*\); the checkpoints '
             r'written before \(steps \[1\]\) are intact: free space .* resumes from step 1')
  with pytest.raises(cli.UserError, match=message):
    run(config, workdir)
  assert ocp.utils.checkpoint_steps(ckpt_dir) == [1]
  monkeypatch.setattr(ocp.CheckpointManager, 'save', save)

  def full_while_writing(self):
    wait(self)
    if self.latest_step() == 2:  # The last save, as if its background write had failed.
      shutil.rmtree(os.path.join(ckpt_dir, '2'), ignore_errors=True)
      raise _disk_full(ckpt_dir, 2)

  monkeypatch.setattr(ocp.CheckpointManager, 'wait_until_finished', full_while_writing)
  with pytest.raises(cli.UserError, match=message):
    run(config, workdir)
  monkeypatch.setattr(ocp.CheckpointManager, 'wait_until_finished', wait)
  assert sorted(ocp.utils.checkpoint_steps(ckpt_dir)) == [1]
  resumed = run(config, workdir)
  assert sorted(ocp.utils.checkpoint_steps(ckpt_dir)) == [1, 2] and np.isfinite(resumed['train/loss'])


def test_a_second_run_on_a_workdir_in_use_is_refused_naming_the_holder(tmp_path):
  workdir = tmp_path / 'run'
  os.makedirs(workdir)
  with train_lib.workdir_lock(str(workdir)):
    with pytest.raises(train_lib.WorkdirInUseError, match=rf'--workdir={workdir} is in use by another training run '
                                                          rf'\(pid {os.getpid()} on .*, started '):
      train_lib.train_and_evaluate(tiny_config(), str(workdir))
    assert not os.path.exists(workdir / 'config.json') and not os.path.exists(workdir / 'checkpoints')
    _assert_one_error_line(*_main(workdir), f'error: --workdir={workdir} is in use by another training run (pid '
                                            f'{os.getpid()} on ')
  with train_lib.workdir_lock(str(workdir)):  # Released when the holder is done.
    pass
