"""The synthetic motion-class dataset of data_prep: files, CSVs, split, and ground truth that matches the class."""
import csv
import json
import os
import subprocess
import sys

import numpy as np

from data_prep import inputs
from data_prep import synthetic
from data_prep import video_io


def test_generate_writes_videos_csvs_and_ground_truth(tmp_path):
  specs = synthetic.generate(str(tmp_path), 16, width=64, height=48, num_frames=10, seed=3)
  assert [s.label for s in specs] == [i % 8 for i in range(16)]
  rows = {name: list(csv.DictReader(open(tmp_path / name))) for name in ('all.csv', 'train.csv', 'val.csv')}
  assert len(rows['all.csv']) == 16 and len(rows['train.csv']) + len(rows['val.csv']) == 16
  assert {r['label'] for r in rows['val.csv']} == {str(c) for c in range(8)}  # stratified: every class held out
  assert not {r['path'] for r in rows['train.csv']} & {r['path'] for r in rows['val.csv']}
  label_map = json.load(open(tmp_path / 'label_map.json'))
  assert label_map == {name: i for i, name in enumerate(synthetic.CLASSES)}
  listed = inputs.list_inputs(str(tmp_path / 'train.csv'), label_map_path=str(tmp_path / 'label_map.json'))
  assert all(v.label_name == synthetic.CLASSES[v.label] for v in listed.videos)
  frames, fps = video_io.read_video(str(tmp_path / rows['all.csv'][0]['path']), 0)
  assert frames.shape == (10, 48, 64, 3) and fps == 25.0
  truth = [json.loads(line) for line in open(tmp_path / 'ground_truth.jsonl')]
  assert [t['label'] for t in truth] == [s.label for s in specs]
  # Same seed -> same videos.
  again = synthetic.generate(str(tmp_path / 'again'), 16, width=64, height=48, num_frames=10, seed=3)
  assert again == specs


def test_ground_truth_motion_matches_the_class():
  rng = np.random.default_rng(0)
  for label, name in enumerate(synthetic.CLASSES):
    spec = synthetic.sample_spec(rng, label, 128, 128, 32)
    c, _, _ = synthetic.object_pose(spec, 5)
    # A point right of the centre, relative to the background (camera pan removed).
    d = synthetic.object_step(spec, 5, np.array([c[0] + 10.0]), np.array([c[1]]), with_camera=False)[0]
    expect = {'translate_left': d[0] < -0.5, 'translate_right': d[0] > 0.5, 'translate_up': d[1] < -0.5,
              'translate_down': d[1] > 0.5, 'rotate_cw': d[1] > 0.3, 'rotate_ccw': d[1] < -0.3,
              'grow': d[0] > 0.1, 'shrink': d[0] < -0.1}[name]
    assert expect, (name, d)
    with_cam = synthetic.object_step(spec, 5, np.array([c[0] + 10.0]), np.array([c[1]]), with_camera=True)[0]
    np.testing.assert_allclose(with_cam - d, synthetic.background_step(spec, with_camera=True))


def test_cli(tmp_path):
  out = tmp_path / 'synth'
  done = subprocess.run([sys.executable, '-m', 'data_prep.synthetic', f'--output_dir={out}', '--num_videos=2',
                         '--size=48x32', '--frames=8'], capture_output=True, text=True, timeout=120, cwd=str(tmp_path))
  assert done.returncode == 0, done.stderr
  assert len(os.listdir(out / 'videos')) == 2 and (out / 'all.csv').exists()
