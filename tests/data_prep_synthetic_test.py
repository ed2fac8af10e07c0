"""The synthetic motion-class dataset of data_prep: files, CSVs, split, and ground truth that matches the class."""
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

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


def test_max_pan_bounds_the_camera_and_zero_gives_a_static_background(tmp_path):
  rng = np.random.default_rng(0)
  pans = np.array([synthetic.sample_spec(rng, i % 8, max_pan=0.4).pan for i in range(64)])
  assert np.abs(pans).max() <= 0.4 and np.abs(pans).max() > 0.2
  specs = synthetic.generate(str(tmp_path), 4, width=48, height=48, num_frames=8, seed=0, max_pan=0.0)
  assert all(s.pan == (0.0, 0.0) for s in specs)
  # Static camera: the background pixels (far from the object) do not change between frames.
  frames = synthetic.render(specs[0])
  ys, xs = np.mgrid[0:48, 0:48]
  off_object = np.ones((48, 48), bool)
  for t in range(8):
    off_object &= ~synthetic.object_mask(specs[0], t, xs, ys, margin=-2.0)
  assert off_object.sum() > 100
  assert np.abs(frames[1:].astype(int) - frames[:1].astype(int))[:, off_object].max() <= 1
  with pytest.raises(ValueError, match='max_pan'):
    synthetic.sample_spec(rng, 0, max_pan=-1.0)


def test_cli(tmp_path):
  out = tmp_path / 'synth'
  done = subprocess.run([sys.executable, '-m', 'data_prep.synthetic', f'--output_dir={out}', '--num_videos=2',
                         '--size=48x32', '--frames=8'], capture_output=True, text=True, timeout=120, cwd=str(tmp_path))
  assert done.returncode == 0, done.stderr
  assert len(os.listdir(out / 'videos')) == 2 and (out / 'all.csv').exists()


def test_several_objects_share_the_class_motion_and_later_ones_occlude_earlier_ones():
  rng = np.random.default_rng(1)
  spec = synthetic.sample_spec(rng, 1, 96, 96, 16, max_pan=0.0, num_objects=3, object_scale=1.2)  # translate_right
  assert len(spec.objects) == 3 and spec.objects[0].center0 == spec.center0
  one = synthetic.sample_spec(np.random.default_rng(1), 1, 96, 96, 16, max_pan=0.0)
  assert spec.objects[1].radius < one.radius * 1.2  # Each of K objects is 1/sqrt(K) of the scaled size.
  for i, obj in enumerate(spec.objects):
    assert obj.velocity[0] > 0.5 and obj.velocity[1] == 0.0
    c, _, _ = synthetic.object_pose(spec, 3, i)
    d = synthetic.object_step(spec, 3, np.array([c[0]]), np.array([c[1]]), with_camera=False, index=i)[0]
    np.testing.assert_allclose(d, obj.velocity, atol=1e-9)
  frames = synthetic.render(spec)
  ys, xs = np.mgrid[0:96, 0:96]
  off = np.ones((96, 96), bool)
  for t in range(16):
    off &= ~synthetic.object_mask(spec, t, xs, ys, margin=-2.0)  # Union of the objects.
  assert off.sum() > 500
  assert np.abs(frames[1:].astype(int) - frames[:1].astype(int))[:, off].max() <= 1  # Static background.
  # Put object 2 (moving 2 px/frame) on top of object 0 (1 px/frame): the overlap shows object 2's texture, which
  # moves with object 2.
  import dataclasses
  objs = spec.extra_objects
  spec = dataclasses.replace(spec, center0=(40.0, 48.0), velocity=(1.0, 0.0), extra_objects=(
      objs[0], dataclasses.replace(objs[1], center0=(44.0, 48.0), velocity=(2.0, 0.0))))
  frames = synthetic.render(spec).astype(int)
  both = (synthetic.object_mask(spec, 0, xs, ys, margin=3.0, index=0)
          & synthetic.object_mask(spec, 0, xs, ys, margin=5.0, index=2))
  yy, xx = np.nonzero(both)
  assert len(xx) > 20
  with_2 = np.abs(frames[1][yy, xx + 2] - frames[0][yy, xx]).mean()
  with_0 = np.abs(frames[1][yy, xx + 1] - frames[0][yy, xx]).mean()
  assert with_2 < 2.0 < with_0, (with_2, with_0)
  with pytest.raises(ValueError, match='num_objects'):
    synthetic.sample_spec(rng, 0, num_objects=0)


def test_the_appearance_task_labels_by_shape_and_colour_with_random_motion(tmp_path):
  """`--task=appearance`: the class fixes the objects' shape and colour family and nothing else; their motion is any
  motion class. The motion task draws exactly the same videos as without the option."""
  rng_a, rng_b = np.random.default_rng(7), np.random.default_rng(7)
  assert synthetic.sample_spec(rng_a, 3) == synthetic.sample_spec(rng_b, 3, task='motion')
  specs = synthetic.generate(str(tmp_path), 32, width=64, height=64, num_frames=8, seed=4, task='appearance',
                             num_objects=2)
  assert [s.task_label for s in specs] == [i % 8 for i in range(32)]
  assert len({s.label for s in specs}) >= 5  # Motion classes drawn at random, independent of the class.
  assert json.load(open(tmp_path / 'label_map.json')) == {n: i for i, n in enumerate(synthetic.APPEARANCE_CLASSES)}
  assert {r['label'] for r in csv.DictReader(open(tmp_path / 'all.csv'))} == {str(c) for c in range(8)}
  for spec in specs[:8]:
    shape, colour = synthetic.APPEARANCE_CLASSES[spec.task_label].split('_')
    assert {o.shape for o in spec.objects} == {shape}
    frames = synthetic.render(spec)
    xs, ys = np.meshgrid(np.arange(64), np.arange(64))
    inside = synthetic.object_mask(spec, 0, xs, ys, margin=2.0)
    mean = frames[0][inside].mean(axis=0)
    # The object's mean colour is nearest its family's base colour.
    families = {name: np.linalg.norm(mean - np.asarray(c)) for name, c in synthetic.COLOUR_FAMILIES.items()}
    assert min(families, key=families.get) == colour, (spec.task_class_name, mean)
  with pytest.raises(ValueError, match='appearance task'):
    synthetic.sample_spec(np.random.default_rng(0), 8, task='appearance')
