"""Output directories given on a command line: created when missing, refused with one line naming the flag."""
import os
import subprocess
import sys

import pytest

from m3video_jax import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_writable_dir_creates_and_refuses_with_the_flag_name(tmp_path):
  assert cli.writable_dir(str(tmp_path / 'a' / 'b'), '--output_dir') == str(tmp_path / 'a' / 'b')
  assert os.path.isdir(tmp_path / 'a' / 'b') and os.listdir(tmp_path / 'a' / 'b') == []  # The probe is removed.
  (tmp_path / 'f').write_text('x')
  with pytest.raises(cli.UnusableOutputError, match=r'^--output_dir=.*/f is a file, not a directory$'):
    cli.writable_dir(str(tmp_path / 'f'), '--output_dir')
  with pytest.raises(cli.UnusableOutputError, match=r'^--workdir=.*/f/sub cannot be created: Not a directory$'):
    cli.writable_dir(str(tmp_path / 'f' / 'sub'), '--workdir')
  assert cli.writable_dir('gs://bucket/x', '--output_dir') == 'gs://bucket/x'


@pytest.mark.skipif(os.geteuid() == 0, reason='root writes into read-only directories')
def test_read_only_dir_is_refused(tmp_path):
  os.chmod(tmp_path, 0o555)
  try:
    with pytest.raises(cli.UnusableOutputError, match='is not writable: Permission denied'):
      cli.writable_dir(str(tmp_path), '--output_dir')
  finally:
    os.chmod(tmp_path, 0o755)


def test_synthetic_cli_prints_one_line_for_an_unusable_output_dir(tmp_path):
  (tmp_path / 'f').write_text('x')
  proc = subprocess.run([sys.executable, '-m', 'data_prep.synthetic', f'--output_dir={tmp_path / "f"}',
                         '--num_videos=1'], cwd=REPO, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 1
  assert proc.stderr.strip() == f'error: --output_dir={tmp_path / "f"} is a file, not a directory'
