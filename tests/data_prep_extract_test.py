"""The Beam extraction job end to end: round trip through schema.decode, bad inputs, resume after a kill, CLI."""
import io
import json
import os
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

import procs

from data_prep import extract
from data_prep import isolated_worker
from data_prep import shards
from data_prep import synthetic
from data_prep import video_io
from data_prep import video_targets
from data_prep.options import PrepConfig
from data_prep.inputs import VideoInput
from m3video_jax.data import schema

# One pytest-xdist worker runs this file: its tests share one run of the job (`job_run`).
pytestmark = pytest.mark.xdist_group('data_prep_extract')

IN_PROCESS = ['--runner=FnApiRunner', '--direct_running_mode=in_memory', '--direct_num_workers=1']
CONFIG = PrepConfig(short_side=64)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_local_runner_starts_one_worker_per_pending_shard_up_to_the_cores_and_none_for_one(monkeypatch):
  from apache_beam.options.pipeline_options import DirectOptions
  from apache_beam.options.pipeline_options import PipelineOptions
  from data_prep import beam_runner

  def parsed(num_tasks, args=()):
    o = PipelineOptions(beam_runner.default_args(num_tasks, args)).view_as(DirectOptions)
    return o.direct_running_mode, o.direct_num_workers

  monkeypatch.setattr(os, 'cpu_count', lambda: 4)
  assert parsed(1) == ('in_memory', 1)  # One video, or the last shard of a resumed job: no pool to start.
  assert parsed(3) == ('multi_processing', 3) and parsed(100) == ('multi_processing', 4)
  # Worker flags the user gives keep the pool as they say.
  assert parsed(1, ['--direct_num_workers=2']) == ('multi_processing', 2)
  assert parsed(100, ['--direct_running_mode=multi_threading']) == ('multi_threading', 0)
  assert beam_runner.default_args(2, ['--prefix_x=1'])[-1] == '--prefix_x=1'  # The user's arguments come last.


def _read_records(path):
  import tensorflow as tf
  return [r.numpy() for r in tf.data.TFRecordDataset(path)]


def _make_dataset(root, num_good=4, frames=12):
  """Good synthetic mp4s plus one input of every bad kind; returns (csv path, good paths, {bad path: reason})."""
  os.makedirs(root, exist_ok=True)
  rng = np.random.default_rng(0)
  good = []
  for i in range(num_good):
    path = os.path.join(root, f'good{i}.mp4')
    synthetic.write_mp4(path, synthetic.render(synthetic.sample_spec(rng, i % 8, 64, 64, frames)))
    good.append(path)
  gray = os.path.join(root, 'gray_odd.y4m')  # grayscale, odd size: a good input
  synthetic.write_y4m(gray, synthetic.render(synthetic.sample_spec(rng, 1, 62, 50, 10))[:, :49, :61, 0])
  good.append(gray)
  bad = {}
  open(os.path.join(root, 'empty.mp4'), 'wb').close()
  bad[os.path.join(root, 'empty.mp4')] = video_io.ZERO_BYTE
  with open(os.path.join(root, 'text.mp4'), 'w') as f:
    f.write('not a video\n' * 50)
  bad[os.path.join(root, 'text.mp4')] = video_io.NOT_A_VIDEO
  bad[os.path.join(root, 'missing.mp4')] = video_io.MISSING
  short = os.path.join(root, 'short.mp4')
  synthetic.write_mp4(short, synthetic.render(synthetic.sample_spec(rng, 2, 64, 64, 5)))
  bad[short] = video_io.TOO_SHORT
  tiny = os.path.join(root, 'tiny.y4m')
  synthetic.write_y4m(tiny, np.zeros((10, 10, 12, 3), np.uint8))
  bad[tiny] = video_io.TOO_SMALL
  data = open(good[0], 'rb').read()
  with open(os.path.join(root, 'cut.mp4'), 'wb') as f:
    f.write(data[:len(data) // 2])
  bad[os.path.join(root, 'cut.mp4')] = video_io.NOT_A_VIDEO
  csv = os.path.join(root, 'list.csv')
  with open(csv, 'w') as f:
    f.write('path,label\n')
    for i, p in enumerate(good + sorted(bad)):
      f.write(f'{os.path.basename(p)},{i % 3}\n')
  return csv, good, bad


@pytest.fixture(scope='module')
def job_run(tmp_path_factory):
  """One in-process run of the job over the dataset (shared by the checks below)."""
  root = str(tmp_path_factory.mktemp('data'))
  csv, good, bad = _make_dataset(root)
  out = str(tmp_path_factory.mktemp('out'))
  job = extract.JobOptions(min_shards=4, max_bad_fraction=0.7, progress_interval_s=0)
  manifest = extract.run(csv, out, CONFIG, job, beam_args=IN_PROCESS)
  return csv, good, bad, out, manifest, job


def test_manifest_and_failure_report(job_run):
  _, good, bad, out, manifest, _ = job_run
  assert manifest['records'] == len(good) and manifest['videos'] == len(good) + len(bad)
  assert manifest['status'] == 'ok' and manifest['schema_version'] == schema.SCHEMA_VERSION
  assert manifest['config'] == CONFIG.to_json() and manifest['code_version']['package']
  assert manifest['num_shards'] == 4 and sum(s['records'] for s in manifest['shards']) == len(good)
  names = sorted(n for n in os.listdir(out) if n.endswith('.tfrecord'))
  assert names == [f'videos-{i:05d}-of-00004.tfrecord' for i in range(4)]
  with open(os.path.join(out, 'failures.jsonl')) as f:
    failures = [json.loads(line) for line in f]
  assert {f['path']: f['reason'] for f in failures} == bad
  assert all(f['message'] for f in failures)
  assert 0 < manifest['non_jpeg_bytes_per_frame'] < 20 * 1024
  assert os.listdir(os.path.join(out, '_work', 'tmp')) == []


def test_round_trip_decodes_to_what_the_per_video_functions_computed(job_run):
  _, good, _, out, manifest, _ = job_run
  records = [r for s in manifest['shards'] for r in _read_records(os.path.join(out, s['file']))]
  by_path = {}
  for r in records:
    d = schema.decode(r)
    by_path[d['source_path']] = d
  assert sorted(by_path) == sorted(good)
  for path in good:
    d = by_path[path]
    want = video_targets.extract_video(path, CONFIG)
    assert d['video_id'] == video_targets.video_id(path)
    assert (d['height'], d['width'], d['num_frames']) == (want.height, want.width, want.num_frames)
    assert d['traj_len'] == CONFIG.traj_len and d['traj_start_stride'] == CONFIG.traj_start_stride
    # Δp within the 1/4 px quantisation, validity exact.
    np.testing.assert_allclose(d['traj_disp'], want.traj_disp, atol=0.125 + 1e-6)
    np.testing.assert_array_equal(d['traj_valid'], want.traj_valid)
    # HOG map within the sqrt companding (absolute error <= scale * 1/255 for the largest values).
    scale = want.hog_map.max(axis=(1, 2, 3), keepdims=True)
    np.testing.assert_allclose(d['hog_map'], want.hog_map, atol=float(scale.max()) * 2 / 255)
    # Looked up along the stored (quantised) displacements: only the HOG quantisation differs.
    want_traj_hog = schema.trajectory_hog(want.hog_map, d['traj_disp'], d['traj_start_frames'])
    np.testing.assert_allclose(d['traj_hog'], want_traj_hog, atol=float(scale.max()) * 0.05)
    # Frames: exactly the stored JPEGs; close to the decoded source frames.
    stored = np.stack([cv2.cvtColor(cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
                       for b in want.jpeg_frames])
    np.testing.assert_array_equal(d['frames'], stored)
    frames, _ = video_io.read_video(path, CONFIG.short_side)
    assert d['frames'].shape == frames.shape
    assert np.abs(d['frames'].astype(int) - frames).mean() < 8.0  # JPEG q90 of a busy random texture
  labels = {d['source_path']: d['label'] for d in by_path.values()}
  assert labels[good[0]] == 0 and labels[good[1]] == 1


def test_job_fails_above_max_bad_fraction_but_keeps_good_output(job_run):
  csv, good, bad, out, _, job = job_run
  strict = extract.JobOptions(**{**job.__dict__, 'max_bad_fraction': 0.1})
  with pytest.raises(extract.TooManyFailuresError, match='6 of 11 inputs failed'):
    extract.run(csv, out, CONFIG, strict, beam_args=IN_PROCESS)  # resumes: nothing to redo
  manifest = json.load(open(os.path.join(out, 'manifest.json')))
  assert manifest['status'] == 'too_many_failures' and manifest['records'] == len(good)


def test_other_config_in_same_output_dir_is_refused(job_run):
  csv, _, _, out, _, job = job_run
  with pytest.raises(ValueError, match='--overwrite'):
    extract.run(csv, out, PrepConfig(short_side=64, traj_len=4), job, beam_args=IN_PROCESS)


def test_resume_redoes_only_missing_or_broken_shards(tmp_path):
  root = str(tmp_path / 'data')
  csv, good, _, = _make_dataset(root, num_good=4, frames=10)[:3]
  out = str(tmp_path / 'out')
  job = extract.JobOptions(min_shards=4, max_bad_fraction=1.0, progress_interval_s=0)
  first = extract.run(csv, out, CONFIG, job, beam_args=IN_PROCESS)
  names = [s['file'] for s in first['shards']]
  mtimes = {n: os.stat(os.path.join(out, n)).st_mtime_ns for n in names}
  # Simulate kills at different points: (a) shard renamed but its result JSON never written; (b) a stale temp file;
  # (c) a shard file that does not match its result (e.g. clobbered by hand) -> all must be redone or cleaned.
  os.remove(shards.result_path(out, names[0]))
  with open(os.path.join(out, '_work', 'tmp', names[1] + '.tmp-dead'), 'wb') as f:
    f.write(b'partial')
  with open(os.path.join(out, names[2]), 'r+b') as f:
    f.truncate(10)
  time.sleep(0.01)
  second = extract.run(csv, out, CONFIG, job, beam_args=IN_PROCESS)
  redone = [n for n in names if os.stat(os.path.join(out, n)).st_mtime_ns != mtimes[n]]
  assert redone == [names[0], names[2]]
  assert os.listdir(os.path.join(out, '_work', 'tmp')) == []
  assert second['records'] == first['records'] == len(good)
  ids = [schema.decode(r, decode_frames=False)['video_id'] for n in names for r in _read_records(os.path.join(out, n))]
  assert len(ids) == len(set(ids)) == len(good)


def test_the_same_relative_command_resumes_from_another_working_directory(tmp_path, monkeypatch):
  """`source_path` used to be stored relative to the working directory, so the same job run from elsewhere was refused
  as 'other inputs'."""
  root = tmp_path / 'data'
  root.mkdir()
  rng = np.random.default_rng(3)
  for i in range(2):
    synthetic.write_mp4(str(root / f'v{i}.mp4'), synthetic.render(synthetic.sample_spec(rng, i, 64, 64, 10)))
  job = extract.JobOptions(min_shards=2, progress_interval_s=0)
  monkeypatch.chdir(tmp_path)
  first = extract.run('data', 'out', CONFIG, job, beam_args=IN_PROCESS)
  monkeypatch.chdir(root)
  log = io.StringIO()
  second = extract.run(['../data/', './'], '../out', CONFIG, job, beam_args=IN_PROCESS, log=log)
  assert '2 shards already complete, 0 to do' in log.getvalue()
  assert second['records'] == first['records'] == 2
  paths = {schema.decode(r, decode_frames=False)['source_path'] for s in first['shards']
           for r in _read_records(str(tmp_path / 'out' / s['file']))}
  assert paths == {str(root / 'v0.mp4'), str(root / 'v1.mp4')}


def test_unusable_output_dir_is_a_one_line_error(tmp_path, capsys):
  (tmp_path / 'list.txt').write_text('a.mp4\n')
  (tmp_path / 'afile').write_text('x')
  for out, why in ((tmp_path / 'afile', 'is a file, not a directory'),
                   (tmp_path / 'afile' / 'sub', 'cannot be created: Not a directory')):
    assert extract.main([f'--input={tmp_path / "list.txt"}', f'--output_dir={out}']) == 2
    err = capsys.readouterr().err.strip()
    assert err == f'[data_prep] error: --output_dir={out} {why}'


def test_overwrite_deletes_only_the_earlier_jobs_shards_and_work_files(tmp_path):
  """--overwrite used to delete every `*.tfrecord` in --output_dir, the user's own files included; and a directory
  holding only such files was refused as if it held another job's shards."""
  out = tmp_path / 'out'
  out.mkdir()
  users = ['other.tfrecord', 'videos-notes.tfrecord', 'videos-00000-of-00002.tfrecord.bak', 'notes.txt']
  for name in users:
    (out / name).write_bytes(b'mine')
  videos = [VideoInput('/a/v0.mp4'), VideoInput('/a/v1.mp4')]
  earlier = shards.plan_shards(videos, 'earlier', 1, 2)
  shards.prepare_output_dir(str(out), earlier, CONFIG)  # Not refused: no file there is a shard of a job.
  for task in earlier:
    (out / task.name).write_bytes(b'shard')
  (out / shards.MANIFEST).write_text('{}')
  later = shards.plan_shards(videos, 'videos', 1, 2)
  with pytest.raises(ValueError, match=r'already holds shards of other inputs or another config \(2 shards\)'):
    shards.prepare_output_dir(str(out), later, PrepConfig(short_side=64, traj_len=4))
  shards.prepare_output_dir(str(out), later, PrepConfig(short_side=64, traj_len=4), overwrite=True)
  assert sorted(os.listdir(out)) == sorted(users + [shards.WORK_DIR])  # The earlier job's shards and manifest went.
  assert all((out / name).read_bytes() == b'mine' for name in users)
  assert shards.read_json(str(out / shards.WORK_DIR / 'plan.json'))['prefix'] == 'videos'


# A device that fills up while the second shard is written: TensorFlow's own error for the shard, and writes to stderr
# fail too while it is the job's _work/beam.log (on that device).
_FULL_AFTER_ONE_SHARD = """
import errno
import os
import sys
import tensorflow as tf
from data_prep import extract

opened = []


class FullAfterOneShard(tf.io.TFRecordWriter):

  def __init__(self, path, *args, **kwargs):
    super().__init__(path, *args, **kwargs)
    opened.append(path)

  def write(self, record):
    if len(opened) > 1:
      raise tf.errors.ResourceExhaustedError(None, None, f'{opened[-1]}; No space left on device')
    super().write(record)


class StderrOnTheDevice:

  def __init__(self, stream):
    self.stream, self.terminal = stream, os.fstat(2)

  def write(self, text):
    if len(opened) > 1 and not os.path.samestat(os.fstat(2), self.terminal):
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return self.stream.write(text)

  def __getattr__(self, name):
    return getattr(self.stream, name)


tf.io.TFRecordWriter = FullAfterOneShard
sys.stderr = StderrOnTheDevice(sys.stderr)
sys.exit(extract.main(sys.argv[1:]))
"""


def test_a_full_disk_is_one_error_line_and_the_complete_shard_stays(tmp_path):
  """The job used to end in a traceback of dozens of frames, or wait forever when Beam's worker could not print that
  traceback to _work/beam.log (multi_threading: the workers run in this process, with the writer and stderr above,
  and print a failed bundle's traceback as those of the multi_processing runner do)."""
  root = tmp_path / 'data'
  root.mkdir()
  rng = np.random.default_rng(5)
  for i in range(2):
    synthetic.write_mp4(str(root / f'v{i}.mp4'), synthetic.render(synthetic.sample_spec(rng, i, 64, 64, 10)))
  out = tmp_path / 'out'
  cmd = [sys.executable, '-c', _FULL_AFTER_ONE_SHARD, f'--input={root}', f'--output_dir={out}', '--short_side=64',
         '--min_shards=2', '--isolation=none', '--progress_interval_s=0', '--runner=FnApiRunner',
         '--direct_running_mode=multi_threading', '--direct_num_workers=1']
  done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
  assert done.returncode == 2 and 'Traceback' not in done.stderr, done.stderr
  assert done.stderr.splitlines()[1:] == [
      f'[data_prep] error: --output_dir={out}: no space left on its device; 1 of 2 shards are complete and kept. '
      'Free space and re-run the same command: it resumes with the missing shards'], done.stderr
  first, second = shards.plan_shards([VideoInput(str(root / f'v{i}.mp4')) for i in range(2)], 'videos', 64, 2)
  assert shards.completed_result(str(out), first) is not None and len(_read_records(str(out / first.name))) == 1
  assert not os.path.exists(out / second.name) and os.listdir(out / '_work' / 'tmp') == []


def test_a_second_job_on_a_locked_output_dir_is_refused_and_touches_nothing(tmp_path):
  root = str(tmp_path / 'data')
  csv = _make_dataset(root, num_good=1, frames=10)[0]
  out = str(tmp_path / 'out')
  os.makedirs(os.path.join(out, '_work', 'tmp'))
  in_flight = os.path.join(out, '_work', 'tmp', 'videos-00000-of-00001.tfrecord.tmp-live')
  open(in_flight, 'wb').close()
  job = extract.JobOptions(min_shards=1, max_bad_fraction=1.0, progress_interval_s=0)
  with shards.output_dir_lock(out):  # Held as a running job holds it.
    with pytest.raises(shards.OutputDirInUseError, match=rf'in use by another data_prep job \(pid {os.getpid()} on '):
      extract.run(csv, out, CONFIG, job, beam_args=IN_PROCESS)
    assert os.path.exists(in_flight)  # A second job used to delete the first job's in-flight temp shard.
  manifest = extract.run(csv, out, CONFIG, job, beam_args=IN_PROCESS)  # Released: the job runs and cleans up.
  assert manifest['records'] == 2 and not os.path.exists(in_flight)
  with shards.output_dir_lock(out):  # Released again after the job, also after an error inside it.
    # --overwrite by the lock holder clears _work but keeps the lock file it holds.
    other = shards.plan_shards([VideoInput('/elsewhere/v.mp4')], 'videos', 1, 1)
    shards.prepare_output_dir(out, other, PrepConfig(short_side=64, traj_len=4), overwrite=True)
    assert not os.path.exists(shards.result_path(out, 'videos-00000-of-00001.tfrecord'))
    with pytest.raises(shards.OutputDirInUseError):
      with shards.output_dir_lock(out):
        pass


def test_progress_stops_printing_when_done_and_the_final_rate_does_not_fall(tmp_path):
  from data_prep import progress

  out = str(tmp_path)
  tasks = shards.plan_shards([VideoInput(f'/v{i}.mp4') for i in range(2)], 'videos', 1, 2)
  for sub in ('shards', 'progress'):
    os.makedirs(os.path.join(out, '_work', sub))
  stream = io.StringIO()
  monitor = progress.ProgressMonitor(out, tasks, interval_s=0.05, stream=stream).start()
  time.sleep(0.3)
  for t in tasks:
    shards.write_json_atomic(shards.result_path(out, t.name),
                             {'shard': t.name, 'videos': 1, 'failures': [], 'frames': 100})
  time.sleep(0.5)
  first = monitor.line()
  printed = stream.getvalue().count('\n')
  time.sleep(0.5)  # The runner shutting down.
  assert monitor.line() == first and 'videos 2/2' in first
  assert stream.getvalue().count('\n') == printed and 'videos 2/2' not in stream.getvalue()
  monitor.stop()


def test_process_video_maps_worker_crash_and_timeout_to_reasons():

  class Crashing:

    def __init__(self, exc):
      self.exc = exc

    def call(self, *args, **kwargs):
      raise self.exc

  video = VideoInput('/some/video.mp4', 3, 'x')
  out = extract.process_video(video, CONFIG, Crashing(isolated_worker.WorkerCrashed(-11)))
  assert out.records is None and out.reason == video_io.DECODER_CRASH and 'SIGSEGV' in out.message
  out = extract.process_video(video, CONFIG, Crashing(isolated_worker.WorkerTimeout('slow')))
  assert out.reason == video_io.TIMEOUT
  out = extract.process_video(video, CONFIG, Crashing(MemoryError('boom')))
  assert out.reason == video_io.ERROR and 'MemoryError' in out.message


def _finished_shards(out):
  return [n for n in os.listdir(os.path.join(out, '_work', 'shards')) if n.endswith('.json')] if os.path.isdir(
      os.path.join(out, '_work', 'shards')) else []


@pytest.mark.slow  # The CLI and its pool of Beam workers: ~17 s on 2 cores.
def test_cli_default_runner_from_another_cwd(tmp_path):
  """`python -m data_prep.extract` outside the repo with the default local runner (multi-processing, all cores)."""
  root = str(tmp_path / 'data')
  csv, good, bad = _make_dataset(root, num_good=2, frames=10)
  out = str(tmp_path / 'out')
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  cmd = [sys.executable, '-m', 'data_prep.extract', f'--input={csv}', f'--output_dir={out}', '--short_side=64',
         '--max_bad_fraction=0.5', '--min_shards=2']
  done = subprocess.run(cmd, cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=300)
  # 3 good of 9 inputs: above --max_bad_fraction=0.5 -> exit code 1, good inputs written, report complete.
  assert done.returncode == 1, done.stdout + done.stderr
  assert 'FAILED' in done.stderr and 'non-JPEG bytes per source frame' in done.stderr
  assert 'Beam counters: frames=' in done.stderr and 'videos_failed=6' in done.stderr and 'videos_ok=3' in done.stderr
  manifest = json.load(open(os.path.join(out, 'manifest.json')))
  assert manifest['records'] == len(good) and manifest['videos_failed'] == len(bad)
  assert manifest['job']['isolation'] == 'subprocess'


def _cli_job(tmp_path, *, num_videos, seed, min_shards, progress_interval_s):
  """Synthetic videos and the CLI command of a job over them (default local runner, 2 workers): (out, cmd, env)."""
  root = str(tmp_path / 'data')
  os.makedirs(root)
  rng = np.random.default_rng(seed)
  for i in range(num_videos):
    synthetic.write_mp4(os.path.join(root, f'v{i:02d}.mp4'),
                        synthetic.render(synthetic.sample_spec(rng, i % 8, 64, 64, 24)))
  out = str(tmp_path / 'out')
  cmd = [sys.executable, '-m', 'data_prep.extract', f'--input={root}', f'--output_dir={out}', '--short_side=128',
         f'--min_shards={min_shards}', f'--progress_interval_s={progress_interval_s}', '--direct_num_workers=2']
  return out, cmd, {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}


@pytest.mark.slow
def test_cli_killed_and_resumed(tmp_path):
  """The CLI (default local runner) killed after its first shard, then re-run: visible shards are never partial, the
  re-run completes without duplicates. ~40 s (two job start-ups)."""
  out, cmd, env = _cli_job(tmp_path, num_videos=12, seed=1, min_shards=6, progress_interval_s=1)
  proc = subprocess.Popen(cmd, cwd=str(tmp_path), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          start_new_session=True)
  deadline = time.time() + 120
  while time.time() < deadline and proc.poll() is None and not _finished_shards(out):
    time.sleep(0.05)
  if proc.poll() is None:
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher, its Beam workers and their isolated children
  proc.wait()
  visible = sorted(n for n in os.listdir(out) if n.endswith('.tfrecord'))
  for name in visible:  # every visible shard is complete
    for r in _read_records(os.path.join(out, name)):
      schema.decode(r, decode_frames=False)
  assert len(_finished_shards(out)) < 6, 'the job finished before it could be killed; use more videos'
  done = subprocess.run(cmd, cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stdout + done.stderr
  assert 'non-JPEG bytes per source frame' in done.stderr and 'videos 12/12' in done.stderr
  assert 'Beam counters' in done.stderr
  manifest = json.load(open(os.path.join(out, 'manifest.json')))
  assert manifest['records'] == 12 and manifest['num_shards'] == 6
  ids = [schema.decode(r, decode_frames=False)['video_id'] for s in manifest['shards']
         for r in _read_records(os.path.join(out, s['file']))]
  assert len(ids) == len(set(ids)) == 12
  assert not os.path.exists(os.path.join(REPO, 'out'))


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir('/proc'), reason='reads the process tree from /proc')
def test_cli_second_job_is_refused_and_workers_end_with_a_killed_launcher(tmp_path):
  """A second job on a running job's --output_dir exits at once naming the holder; after SIGKILL of the launcher
  alone, its Beam workers and their isolated children used to keep running and writing for >= 9 s. ~50 s.
  (24 videos: with 12, a loaded machine let the job finish while the second one was starting.)"""
  out, cmd, env = _cli_job(tmp_path, num_videos=24, seed=2, min_shards=8, progress_interval_s=0)
  proc = subprocess.Popen(cmd, cwd=str(tmp_path), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          start_new_session=True)
  try:
    progress_dir = os.path.join(out, '_work', 'progress')
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not (os.path.isdir(progress_dir)
                                                                   and os.listdir(progress_dir)):
      time.sleep(0.05)
    assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
    second = subprocess.run(cmd, cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=120)
    assert second.returncode == 2, second.stderr[-3000:]
    assert f'is in use by another data_prep job (pid {proc.pid} on ' in second.stderr
    workers = procs.descendants(proc.pid)
    assert workers, 'the job has no worker processes'
    assert len(_finished_shards(out)) < 8, 'the job finished before it could be killed; use more videos'
    os.kill(proc.pid, signal.SIGKILL)  # The launcher alone.
    proc.wait()
    deadline = time.time() + 10
    while time.time() < deadline and any(procs.alive(p) for p in workers):
      time.sleep(0.1)
    assert not [p for p in workers if procs.alive(p)], 'worker processes outlived the launcher by 10 s'
  finally:
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)
    for p in procs.descendants(proc.pid):
      try:
        os.kill(p, signal.SIGKILL)
      except ProcessLookupError:
        pass
  done = subprocess.run(cmd, cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stdout + done.stderr
  manifest = json.load(open(os.path.join(out, 'manifest.json')))
  assert manifest['records'] == 24
