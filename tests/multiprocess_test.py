"""Two real JAX processes on localhost (gloo collectives on CPU): training equals one process's, checkpoints resume
across process counts, processes > 0 wait at a barrier for process 0's data preparation and write no metrics."""
import logging
import os
import socket
import subprocess
import sys
import textwrap

import pytest

import procs as test_procs  # Its functions; `procs` names the started processes here.

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WAITER = textwrap.dedent('''
    import sys, time
    import jax
    jax.distributed.initialize(sys.argv[1], 2, int(sys.argv[2]))
    from m3video_jax import sharding
    if jax.process_index() == 0:
      time.sleep(float(sys.argv[3]))  # "preparing the data"
    try:
      sharding.wait_for_process_0('test_barrier', float(sys.argv[4]), 'prepare the test data')
      print('PASSED', flush=True)
    except RuntimeError as e:
      print('ERROR', e, flush=True)
    sys.stdout.flush()
    import os
    os._exit(0)  # No shutdown barrier: process 0 may already be gone.
''')


LOCKER = textwrap.dedent('''
    import os, sys
    import jax
    jax.distributed.initialize(sys.argv[1], 2, int(sys.argv[2]))
    from m3video_jax import train_lib
    try:
      with train_lib.workdir_lock(sys.argv[3]):
        print('LOCKED', flush=True)
    except train_lib.WorkdirInUseError as e:
      print('REFUSED', e, flush=True)
    from jax._src import distributed
    # Process 0 hosts the coordination service: it waits for process 1 to have read the verdict before it exits.
    distributed.global_state.client.wait_at_barrier('locker_done', 60_000)
    os._exit(0)
''')


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _run_pair(prepare_s, timeout_s):
  address = f'127.0.0.1:{_free_port()}'
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS='cpu', XLA_FLAGS=test_procs.xla_flags(1))
  procs = [subprocess.Popen([sys.executable, '-c', WAITER, address, str(i), str(prepare_s), str(timeout_s)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
           for i in range(2)]
  return [p.communicate(timeout=120) for p in procs]


@pytest.mark.slow  # Two pairs of JAX processes, one waiting 8 s: ~15 s.
def test_processes_wait_for_process_0_and_say_so_when_it_takes_too_long():
  (out0, _), (out1, err1) = _run_pair(prepare_s=2, timeout_s=60)
  assert 'PASSED' in out0 and 'PASSED' in out1, (out0, out1, err1[-2000:])
  assert 'process 1: waiting up to 60 s for process 0 to prepare the test data' in err1
  (out0, _), (out1, err1) = _run_pair(prepare_s=8, timeout_s=2)
  assert out1.startswith('ERROR process 1 of 2 waited for process 0 to prepare the test data, which did not finish '
                         'within 2 s (config.data.prepare_timeout_s)'), (out1, err1[-2000:])


def test_only_an_enabled_metric_writer_logs_its_lines(tmp_path, caplog):
  from m3video_jax import metrics

  with caplog.at_level(logging.INFO):
    metrics.MetricWriter(str(tmp_path / 'off'), 10, enabled=False).write(1, {'train/loss': 1.0})
  assert not caplog.records and not os.path.exists(tmp_path / 'off')
  with caplog.at_level(logging.INFO):
    metrics.MetricWriter(str(tmp_path / 'on'), 10, enabled=True).write(1, {'train/loss': 1.0})
  assert any('loss 1.0' in r.getMessage() for r in caplog.records)


TRAINER = textwrap.dedent('''
    import sys
    address, workdir = sys.argv[1], sys.argv[4]
    count, index, steps = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[5])
    import jax
    if count > 1:
      jax.config.update('jax_cpu_collectives_implementation', 'gloo')
      jax.distributed.initialize(address, count, index)
    sys.path.insert(0, 'tests')
    import train_test  # tiny_config, random_batch: step-indexed batches with the pipeline's keys and shapes
    from m3video_jax import train_lib
    config = train_test.tiny_config(total_steps=steps, checkpoint_every_steps=2, log_every_steps=1)
    local = config.data.batch_size // count

    def batches(start_step):  # Every process gets its rows of the same global batch of each step.
      step = start_step
      while True:
        step += 1
        batch = train_test.random_batch(config, seed=step)
        yield {k: v[index * local:(index + 1) * local] for k, v in batch.items()}

    train_lib.train_and_evaluate(config, workdir, make_batch_iterator=batches)
''')


def _train(workdir, steps, processes):
  """Trains the tiny pretraining model to `steps` in `workdir` on 2 devices: 1 process with 2, or 2 with 1 each.
  Returns each process's stderr."""
  address = f'127.0.0.1:{_free_port()}'
  devices = 2 // processes
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS='cpu', XLA_FLAGS=test_procs.xla_flags(devices))
  procs = [subprocess.Popen([sys.executable, '-c', TRAINER, address, str(processes), str(i), str(workdir), str(steps)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
           for i in range(processes)]
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  return [err for _, err in outs]


def _losses(workdir):
  import json
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return {r['step']: r['train/loss'] for r in map(json.loads, f)}


@pytest.mark.slow
def test_two_processes_train_like_one_and_their_checkpoints_resume_either_way(tmp_path):
  """2 processes (gloo collectives) fed the rows of the same global batches as 1 process: the same losses to 1e-6;
  a 2-process checkpoint resumes in 1 process and a 1-process checkpoint in 2, reaching the same losses; only
  process 0 writes metrics."""
  import shutil

  import numpy as np

  one = tmp_path / 'one'
  _train(one, 4, processes=1)  # Checkpoints at steps 2 and 4.
  reference = _losses(one)
  two_then_one = tmp_path / 'two_then_one'
  _train(two_then_one, 2, processes=2)
  with open(two_then_one / 'metrics.jsonl') as f:
    assert len(f.readlines()) == 2  # One line per step: process 1 writes no metrics.
  _train(two_then_one, 4, processes=1)
  one_then_two = tmp_path / 'one_then_two'
  shutil.copytree(one, one_then_two)
  shutil.rmtree(one_then_two / 'checkpoints' / '4')  # The 1-process run as it was at step 2.
  os.remove(one_then_two / 'metrics.jsonl')
  _train(one_then_two, 4, processes=2)
  got = _losses(two_then_one)
  for step in (1, 2, 3, 4):
    np.testing.assert_allclose(got[step], reference[step], rtol=0, atol=1e-6,
                               err_msg=f'2 then 1 process, step {step}')
  got = _losses(one_then_two)
  for step in (3, 4):
    np.testing.assert_allclose(got[step], reference[step], rtol=0, atol=1e-6,
                               err_msg=f'1 then 2 processes, step {step}')


@pytest.mark.slow  # Two pairs of JAX processes: ~7-10 s on 2 cores.
def test_a_refused_workdir_lock_stops_every_process_with_the_same_line(tmp_path):
  """Process 0 takes the lock of a multi-process run and tells the others whether it got it: when another run holds
  it, process 1 stops with the same line instead of going on to wait in the first collective."""
  from m3video_jax import train_lib

  address = f'127.0.0.1:{_free_port()}'
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS='cpu', XLA_FLAGS=test_procs.xla_flags(1))

  def pair():
    procs = [subprocess.Popen([sys.executable, '-c', LOCKER, address, str(i), str(tmp_path)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env, cwd=REPO) for i in range(2)]
    return [p.communicate(timeout=120)[0].strip() for p in procs]

  with train_lib.workdir_lock(str(tmp_path)):  # Another run holds it.
    outs = pair()
  assert all(o.startswith(f'REFUSED --workdir={tmp_path} is in use by another training run (pid {os.getpid()}')
             for o in outs), outs
  assert outs[0] == outs[1]
  address = f'127.0.0.1:{_free_port()}'
  assert pair() == ['LOCKED', 'LOCKED']
