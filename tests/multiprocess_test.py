"""Two real JAX processes on localhost: the barrier that makes processes > 0 wait for process 0's data preparation,
and the silence of processes > 0's metric lines."""
import logging
import os
import socket
import subprocess
import sys
import textwrap

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WAITER = textwrap.dedent('''
    import sys, time
    import jax
    jax.distributed.initialize(sys.argv[1], 2, int(sys.argv[2]))
    from m3video_jax import train_lib
    if jax.process_index() == 0:
      time.sleep(float(sys.argv[3]))  # "preparing the data"
    try:
      train_lib.wait_for_process_0('test_barrier', float(sys.argv[4]), 'prepare the test data')
      print('PASSED', flush=True)
    except RuntimeError as e:
      print('ERROR', e, flush=True)
    sys.stdout.flush()
    import os
    os._exit(0)  # No shutdown barrier: process 0 may already be gone.
''')


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _run_pair(prepare_s, timeout_s):
  address = f'127.0.0.1:{_free_port()}'
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS='cpu', XLA_FLAGS='--xla_force_host_platform_device_count=1')
  procs = [subprocess.Popen([sys.executable, '-c', WAITER, address, str(i), str(prepare_s), str(timeout_s)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
           for i in range(2)]
  return [p.communicate(timeout=120) for p in procs]


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
