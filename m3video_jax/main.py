"""Command-line entry point for pretraining (and the other tasks on the same loop); `m3video_jax.cli` convention, with
absl's global flags (its `--config.<field>=value` overrides need them).

  python -m m3video_jax.main --config=configs/demo.py --workdir=/tmp/m3video_demo
  python -m m3video_jax.main --config=configs/pretrain_ssv2.py:variant=B --workdir=$WD \
      --config.data.train_files='/data/ssv2/train-*.tfrecord' --config.data.batch_size=256

Re-running the same command resumes from the latest checkpoint in --workdir. Multi-host: launch one process per host;
`jax.distributed.initialize()` runs when the launcher's environment says there are several processes (or with
--multiprocess).
"""
import logging
import os
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file, optionally with `:args`.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, TensorBoard events and config.json.')
_MULTIPROCESS = flags.DEFINE_enum('multiprocess', 'auto', ['auto', 'true', 'false'],
                                  'Call jax.distributed.initialize(); auto = when the environment names several '
                                  'processes (SLURM, Open MPI, JAX_COORDINATOR_ADDRESS, Cloud TPU pods).')
_COORDINATOR = flags.DEFINE_string('coordinator_address', None, 'host:port of process 0, for a manual multi-host '
                                   'launch (with --num_processes and --process_id); implies --multiprocess=true.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Number of processes of a manual multi-host launch.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process index in a manual multi-host launch.')
_VERBOSE = flags.DEFINE_bool('verbose', False, 'Also show the INFO lines of TensorFlow, Beam, Orbax and JAX.')
flags.mark_flags_as_required(['config', 'workdir'])

_MULTI_PROCESS_ENV = ('JAX_COORDINATOR_ADDRESS', 'OMPI_COMM_WORLD_SIZE', 'TPU_WORKER_HOSTNAMES')


def _launched_multiprocess() -> bool:
  if any(os.environ.get(k) for k in _MULTI_PROCESS_ENV):
    return True
  return int(os.environ.get('SLURM_NTASKS', '1')) > 1


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  from m3video_jax import cli
  cli.quiet_libraries(_VERBOSE.value)  # Before TF and JAX are imported.
  import jax  # After flag parsing, so --help is fast.

  multiprocess = bool(_COORDINATOR.value) or _MULTIPROCESS.value == 'true' or (
      _MULTIPROCESS.value == 'auto' and _launched_multiprocess())
  if multiprocess and not os.environ.get('JAX_CPU_COLLECTIVES_IMPLEMENTATION'):
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')  # Collectives across CPU processes.
  if _COORDINATOR.value:
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  elif multiprocess:
    jax.distributed.initialize()
  logging.info('JAX process %d/%d, %d local / %d global devices (%s)', jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count(), jax.devices()[0].platform)
  if jax.process_index() > 0 and not _VERBOSE.value:  # Process 0 speaks for the run; the others only warn.
    from absl import logging as absl_logging
    absl_logging.set_verbosity(absl_logging.WARNING)
    logging.getLogger().setLevel(logging.WARNING)
  from m3video_jax import train_lib

  try:
    train_lib.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except cli.UserError as e:  # Bad input (config, data, workdir, checkpoints, disk): one line, no traceback.
    sys.exit(f'error: {e}')


if __name__ == '__main__':
  app.run(main)
