"""Decoding and bad inputs of data_prep, per video (no Beam): every bad-input kind gets its reason; crash isolation."""
import ctypes
import os
import time

import cv2
import numpy as np
import pytest

import procs

from data_prep import isolated_worker
from data_prep import synthetic
from data_prep import video_io
from data_prep import video_targets
from data_prep.options import PrepConfig
from m3video_jax.data import schema


def _frames(n=12, h=64, w=80, seed=0):
  spec = synthetic.sample_spec(np.random.default_rng(seed), 0, w, h, n)
  return synthetic.render(spec)


def _mp4(tmp_path, name='good.mp4', **kw):
  path = str(tmp_path / name)
  synthetic.write_mp4(path, _frames(**kw))
  return path


def _reason(path, config=PrepConfig(short_side=0)):
  with pytest.raises(video_io.BadVideoError) as e:
    video_targets.extract_video(path, config)
  return e.value.reason


def test_prep_size_short_side_and_grid_multiple():
  assert video_io.prep_size(720, 1280, 256) == (256, 456)  # 455.1 -> nearest multiple of 8
  assert video_io.prep_size(1280, 720, 256) == (456, 256)
  assert video_io.prep_size(144, 176, 256) == (256, 312)
  assert video_io.prep_size(75, 97, 0) == (75, 97)
  with pytest.raises(ValueError, match='short_side=250'):
    PrepConfig(short_side=250)


@pytest.mark.parametrize('shape', [(20, 30), (20, 30, 1), (20, 30, 3), (20, 30, 4)])
def test_to_rgb_handles_gray_bgr_bgra(shape):
  frame = np.random.default_rng(0).integers(0, 255, size=shape, dtype=np.uint8)
  rgb = video_io.to_rgb(frame)
  assert rgb.shape == (20, 30, 3) and rgb.dtype == np.uint8
  if len(shape) == 3 and shape[2] >= 3:
    np.testing.assert_array_equal(rgb, frame[..., 2::-1])
  else:
    np.testing.assert_array_equal(rgb, np.repeat(frame.reshape(20, 30, 1), 3, axis=2))
  assert video_io.to_rgb(frame.astype(np.uint16) << 8).shape == (20, 30, 3)


def test_good_video_shapes(tmp_path):
  t = video_targets.extract_video(_mp4(tmp_path, n=12), PrepConfig())
  assert (t.height, t.width) == (256, 320)
  s = schema.num_starts(12, 6, 2)
  assert t.traj_disp.shape == (s, 6, 32, 40, 2) and t.traj_valid.shape == (s, 32, 40)
  assert t.hog_map.shape == (12, 32, 40, 9) and len(t.jpeg_frames) == 12 and t.fps == 25.0


def test_zero_byte(tmp_path):
  (tmp_path / 'empty.mp4').write_bytes(b'')
  assert _reason(str(tmp_path / 'empty.mp4')) == video_io.ZERO_BYTE


def test_unreadable_paths(tmp_path):
  assert _reason(str(tmp_path / 'missing.mp4')) == video_io.MISSING
  os.makedirs(tmp_path / 'folder.mp4')
  assert _reason(str(tmp_path / 'folder.mp4')) == video_io.UNREADABLE


def test_not_a_video(tmp_path):
  (tmp_path / 'text.mp4').write_text('this is not a video\n' * 100)
  assert _reason(str(tmp_path / 'text.mp4')) == video_io.NOT_A_VIDEO
  (tmp_path / 'noise.avi').write_bytes(np.random.default_rng(0).bytes(50_000))
  assert _reason(str(tmp_path / 'noise.avi')) == video_io.NOT_A_VIDEO


def test_truncated_and_corrupt(tmp_path):
  data = open(_mp4(tmp_path, n=20), 'rb').read()
  # mp4v writes its index at the end: a truncated mp4 does not open at all.
  (tmp_path / 'cut.mp4').write_bytes(data[:len(data) // 2])
  assert _reason(str(tmp_path / 'cut.mp4')) == video_io.NOT_A_VIDEO
  # Garbage in the middle of the stream: fewer frames decode than announced.
  broken = bytearray(data)
  broken[len(data) // 3:len(data) // 3 + 2000] = np.random.default_rng(1).bytes(2000)
  (tmp_path / 'corrupt.mp4').write_bytes(bytes(broken))
  assert _reason(str(tmp_path / 'corrupt.mp4')) in (video_io.TRUNCATED, video_io.NOT_A_VIDEO)
  # An AVI (index at the end, frames readable without it) cut in half: decodes part of the announced frames.
  path = str(tmp_path / 'mjpg.avi')
  writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*'MJPG'), 25, (80, 64))
  for f in _frames(n=20):
    writer.write(f[..., ::-1].copy())
  writer.release()
  avi = open(path, 'rb').read()
  (tmp_path / 'cut.avi').write_bytes(avi[:len(avi) // 2])
  assert _reason(str(tmp_path / 'cut.avi')) == video_io.TRUNCATED


def test_too_short(tmp_path):
  assert _reason(_mp4(tmp_path, n=6)) == video_io.TOO_SHORT  # L = 6 needs 7 frames
  t = video_targets.extract_video(_mp4(tmp_path, 'seven.mp4', n=7), PrepConfig(short_side=0))
  assert t.traj_disp.shape[0] == 1


def test_tiny_odd_large_gray_and_four_channel_sizes(tmp_path):
  frames = _frames(n=8, h=12, w=14)
  synthetic.write_y4m(str(tmp_path / 'tiny.y4m'), frames)
  assert _reason(str(tmp_path / 'tiny.y4m')) == video_io.TOO_SMALL
  # Odd native size (y4m keeps it; OpenCV's writers round to even).
  synthetic.write_y4m(str(tmp_path / 'odd.y4m'), _frames(n=8, h=75, w=97))
  t = video_targets.extract_video(str(tmp_path / 'odd.y4m'), PrepConfig(short_side=0))
  assert (t.height, t.width) == (75, 97) and t.traj_disp.shape[2:4] == (9, 12)
  t = video_targets.extract_video(str(tmp_path / 'odd.y4m'), PrepConfig())
  assert (t.height, t.width) == (256, 328)
  # Grayscale and 4-channel (YUVA) sources.
  gray = _frames(n=8)[..., 1]
  synthetic.write_y4m(str(tmp_path / 'gray.y4m'), gray)
  t = video_targets.extract_video(str(tmp_path / 'gray.y4m'), PrepConfig(short_side=0))
  assert t.hog_map.shape == (8, 8, 10, 9)
  rgba = np.concatenate([_frames(n=8), np.full((8, 64, 80, 1), 200, np.uint8)], axis=-1)
  synthetic.write_y4m(str(tmp_path / 'rgba.y4m'), rgba)
  t = video_targets.extract_video(str(tmp_path / 'rgba.y4m'), PrepConfig(short_side=0))
  assert t.num_frames == 8
  # Very large: 1920x1080 is resized to 256x456 on the fly (frames are never all held at native size).
  big = np.repeat(np.repeat(_frames(n=8, h=108, w=192), 10, axis=1), 10, axis=2)
  path = str(tmp_path / 'big.mp4')
  synthetic.write_mp4(path, big)
  t = video_targets.extract_video(path, PrepConfig())
  assert (t.height, t.width) == (256, 456)


def test_four_channel_and_gray_frames_through_the_pure_path():
  frames = _frames(n=8)
  bgra = [cv2.cvtColor(f, cv2.COLOR_RGB2BGRA) for f in frames]
  t = video_targets.extract_from_frames((video_io.to_rgb(f) for f in bgra), PrepConfig(short_side=0))
  t_ref = video_targets.extract_from_frames(iter(frames), PrepConfig(short_side=0))
  np.testing.assert_array_equal(t.traj_disp, t_ref.traj_disp)


def test_bad_video_error_survives_pickling():
  import pickle
  e = pickle.loads(pickle.dumps(video_io.BadVideoError(video_io.TOO_SHORT, 'only 3 frames')))
  assert e.reason == video_io.TOO_SHORT and e.message == 'only 3 frames'


def test_isolated_worker_survives_segfault_and_timeout(tmp_path):
  path = _mp4(tmp_path, n=8)
  with isolated_worker.IsolatedWorker(timeout_s=60, init=(cv2.setNumThreads, (1,))) as worker:
    t0 = time.perf_counter()
    got = worker.call(video_targets.extract_video, path, PrepConfig(short_side=0))
    assert got.traj_disp.shape[0] == 1
    with pytest.raises(isolated_worker.WorkerCrashed, match='SIGSEGV'):
      worker.call(ctypes.string_at, 0)  # reads address 0: a real segfault in the child
    with pytest.raises(isolated_worker.WorkerTimeout):
      worker.call(time.sleep, 5, timeout_s=0.3)
    with pytest.raises(video_io.BadVideoError) as e:
      worker.call(video_targets.extract_video, str(tmp_path / 'missing.mp4'), PrepConfig())
    assert e.value.reason == video_io.MISSING
    again = worker.call(video_targets.extract_video, path, PrepConfig(short_side=0))
    np.testing.assert_array_equal(again.traj_disp, got.traj_disp)
    assert worker.restarts == 2
    print(f'worker calls took {time.perf_counter() - t0:.2f} s including 3 child starts')


def test_extreme_aspect_ratio_is_an_unsupported_size_not_an_opencv_error(tmp_path):
  """A 20000x16 video used to fail inside OpenCV (its prep frames would be 320000x256)."""
  synthetic.write_y4m(str(tmp_path / 'strip.y4m'), np.zeros((8, 16, 20000, 3), np.uint8))
  with pytest.raises(video_io.BadVideoError, match=r'20000x16: at short side 256 its prep frames would be 320000x256'):
    video_targets.extract_video(str(tmp_path / 'strip.y4m'), PrepConfig())
  assert _reason(str(tmp_path / 'strip.y4m')) == video_io.UNSUPPORTED_SIZE


@pytest.mark.skipif(not os.path.isdir('/proc'), reason='reads the process state from /proc')
def test_isolated_child_ends_when_its_parent_is_killed(tmp_path):
  """A child busy on a long call must not outlive a SIGKILLed parent (it used to finish its call first)."""
  import signal
  import subprocess
  import sys

  pid_file = tmp_path / 'child.pid'
  code = (f'import os, time\nfrom data_prep import isolated_worker\nw = isolated_worker.IsolatedWorker(timeout_s=None)\n'
          f'w.call(os.getpid)\nopen({str(pid_file)!r}, "w").write(str(w._proc.pid))\nw.call(time.sleep, 120)\n')
  parent = subprocess.Popen([sys.executable, '-c', code], env=isolated_worker._child_env())
  try:
    deadline = time.time() + 60
    while time.time() < deadline and not (pid_file.exists() and pid_file.read_text()):
      time.sleep(0.05)
    child = int(pid_file.read_text())
    time.sleep(0.5)  # The child is inside time.sleep(120).
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 5
    while time.time() < deadline and procs.alive(child):
      time.sleep(0.05)
    assert not procs.alive(child), 'the isolated child outlived its killed parent'
  finally:
    parent.kill()

