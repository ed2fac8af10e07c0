"""The one CLI convention (`m3video_jax/cli.py`): every tool lists its flags with --help, refuses a bad flag in one
line, can be imported beside the others and run in-process again, is quiet by default and ends with a summary."""
import importlib
import os
import subprocess
import sys

import numpy as np
import pytest

from data_prep import synthetic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# (module, a flag its --help must list, the prefix of its error line)
TOOLS = (('data_prep.extract', '--output_dir', '[data_prep] error: '),
         ('data_prep.synthetic', '--num_videos', 'error: '),
         ('m3video_jax.visualize', '--shards', 'error: '),
         ('m3video_jax.evaluate', '--views', 'error: '),
         ('m3video_jax.interop.export', '--format', 'error: '),
         ('m3video_jax.interop.import_weights', '--input', 'error: '),
         ('m3video_jax.interop.features', '--pool', 'error: '))


@pytest.mark.parametrize('module,flag,prefix', TOOLS)
def test_every_tool_lists_its_flags_and_refuses_bad_ones_in_one_line(module, flag, prefix, capsys):
  tool = importlib.import_module(module)  # All in one process: no tool defines absl's global flags.
  for _ in range(2):  # Re-entrant: a second run parses afresh.
    assert tool.main(['--help']) == 0
    out = capsys.readouterr().out
    assert flag in out and '--[no]verbose' in out and '--[no]summary' in out, out
  if module != 'data_prep.extract':  # Its unknown flags are Beam pipeline options.
    assert tool.main(['--no_such_flag=1']) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(prefix) and 'no_such_flag' in err[0], err
  assert tool.main([]) != 0  # A required flag is missing.
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith(prefix) and 'must have a value' in err[0], err


@pytest.mark.slow  # The CLI and its pool of Beam workers: ~13 s on 2 cores.
def test_extract_is_quiet_by_default_and_ends_with_what_it_wrote_and_what_to_run_next(tmp_path):
  frames = np.random.default_rng(0).integers(0, 256, size=(12, 64, 64, 3), dtype=np.uint8)
  synthetic.write_mp4(str(tmp_path / 'a.mp4'), frames)
  out = tmp_path / 'out'
  env = dict(os.environ, PYTHONPATH=REPO)
  proc = subprocess.run([sys.executable, '-m', 'data_prep.extract', f'--input={tmp_path / "a.mp4"}',
                         f'--output_dir={out}', '--short_side=64', '--progress_interval_s=0',
                         '--direct_num_workers=2'],  # A pool of Beam workers (one video alone runs in-process).
                        capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = proc.stderr.strip().splitlines()
  assert all(line.startswith(('[data_prep]', '  ')) for line in lines), lines  # Only the job's own lines.
  assert any(line.startswith('  next: python -m m3video_jax.visualize') for line in lines), lines
  assert any(line == f'  manifest: {out / "manifest.json"}' for line in lines), lines
  log = (out / '_work' / 'beam.log').read_text()
  assert 'sdk_worker' in log or 'apache_beam' in log or 'Beam' in log, log[-2000:]  # The chatter went here.


def test_extract_names_arguments_that_neither_it_nor_beam_knows(capsys):
  from data_prep import beam_runner

  beam_runner.warn_unknown_beam_args(['--short_sid=128', '--direct_num_workers=2'])
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "['--short_sid=128']" in err[0] and 'direct_num_workers' not in err[0], err
  beam_runner.warn_unknown_beam_args(['--direct_num_workers=2'])
  assert capsys.readouterr().err == ''


@pytest.mark.parametrize('runner,jar_flag', [('FlinkRunner', '--flink_job_server_jar'),
                                             ('SparkRunner', '--spark_job_server_jar')])
def test_a_runner_whose_job_server_cannot_be_fetched_is_a_one_line_error(tmp_path, runner, jar_flag):
  frames = np.random.default_rng(0).integers(0, 256, size=(10, 64, 64, 3), dtype=np.uint8)
  synthetic.write_mp4(str(tmp_path / 'a.mp4'), frames)
  # A jar URL nothing listens on: the same failure as an offline download, without the network.
  proc = subprocess.run([sys.executable, '-m', 'data_prep.extract', f'--input={tmp_path / "a.mp4"}',
                         f'--output_dir={tmp_path / "out"}', '--short_side=64', f'--runner={runner}',
                         f'{jar_flag}=http://127.0.0.1:9/job-server.jar', '--progress_interval_s=0'],
                        capture_output=True, text=True, cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO), timeout=300)
  assert proc.returncode == 2, proc.stderr[-3000:]
  errors = [line for line in proc.stderr.splitlines() if 'error' in line.lower()]
  assert len(errors) == 1, proc.stderr[-3000:]
  assert errors[0].startswith(f'[data_prep] error: --runner={runner} cannot start') and jar_flag in errors[0], errors
  assert 'http://127.0.0.1:9/job-server.jar' in errors[0]
