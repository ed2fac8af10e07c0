"""Fake copies of the official layouts of SSV2, Kinetics-400, UCF101 and HMDB51 (annotation files in their official
formats, tiny real videos in the official containers and names), with the labels each video must get.

Each writer returns `(input, expected)`: the `--input` value and `{video path: (label, class name)}` of the split it
writes, from the dataset's full class list in its official order (0-based), whichever classes the split contains.
"""
import json
import os

import cv2
import numpy as np

from data_prep import synthetic

SIZE = (48, 32)  # width, height
FRAMES = 9


def write_video(path, seed, fourcc):
  """A short textured video (a moving synthetic object) in the container `path` names, encoded with `fourcc`."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  rng = np.random.default_rng(seed)
  frames = synthetic.render(synthetic.sample_spec(rng, seed % 8, SIZE[0], SIZE[1], FRAMES))
  writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*fourcc), 12, SIZE)
  assert writer.isOpened(), (path, fourcc)
  for f in frames:
    writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
  writer.release()
  return path


SSV2_CLASSES = ['Approaching something with your camera', 'Moving something up', 'Putting something on a surface',
                'Pushing something from left to right']


def ssv2(root, *, missing=()):
  """`something-something-v2-{labels,train,validation}.json` + `20bn-something-something-v2/<id>.webm` (VP8).

  The labels file maps template -> index as strings, in an order that is not alphabetical; train uses classes 1-3,
  validation only 0 and 3. Ids in `missing` are listed but have no video."""
  labels = {name: str(i) for i, name in enumerate(SSV2_CLASSES)}
  ann = os.path.join(root, 'labels')
  os.makedirs(ann, exist_ok=True)
  with open(os.path.join(ann, 'something-something-v2-labels.json'), 'w') as f:
    json.dump(labels, f)
  videos = os.path.join(root, '20bn-something-something-v2')
  splits = {'train': [(101, 1, 'Moving [something] up'), (102, 2, 'Putting [something] on a surface'),
                      (103, 3, 'Pushing [something] from left to right'), (104, 1, 'Moving [something] up')],
            'validation': [(201, 0, 'Approaching [something] with your camera'),
                           (202, 3, 'Pushing [something] from left to right')]}
  expected = {}
  for split, rows in splits.items():
    entries = []
    for vid, label, template in rows:
      filled = template.replace('[something]', 'a cup')
      entries.append({'id': str(vid), 'label': filled.lower(), 'template': template, 'placeholders': ['a cup']})
      path = os.path.join(videos, f'{vid}.webm')
      if str(vid) not in missing:
        write_video(path, vid, 'VP80')
      expected.setdefault(split, {})[path] = (label, SSV2_CLASSES[label])
    with open(os.path.join(ann, f'something-something-v2-{split}.json'), 'w') as f:
      json.dump(entries, f)
  with open(os.path.join(ann, 'something-something-v2-test.json'), 'w') as f:
    json.dump([{'id': '301'}], f)
  write_video(os.path.join(videos, '301.webm'), 301, 'VP80')
  expected['test'] = {os.path.join(videos, '301.webm'): (-1, '')}
  return ann, videos, expected


K400_CLASSES = ['abseiling', 'air drumming', 'juggling balls', 'zumba']


def k400(root, *, class_folders=True, missing=()):
  """`annotations/{train,validate}.csv` (`label,youtube_id,time_start,time_end,split,is_cc`) and
  `<youtube_id>_<start:06d>_<end:06d>.mp4` under `videos/` (in class folders named with underscores, or flat).
  Train has all 4 classes; validate only 'juggling balls' and 'zumba' (indices 2 and 3)."""
  ann = os.path.join(root, 'annotations')
  os.makedirs(ann, exist_ok=True)
  rows = {'train': [('abseiling', 'aaa111', 10), ('air drumming', 'bbb222', 0), ('juggling balls', 'ccc333', 5),
                    ('zumba', 'ddd444', 30), ('abseiling', 'eee555', 1)],
          'validate': [('zumba', 'fff666', 2), ('juggling balls', 'ggg777', 4)]}
  expected = {}
  for split, items in rows.items():
    lines = ['label,youtube_id,time_start,time_end,split,is_cc']
    for n, (label, yid, start) in enumerate(items):
      lines.append(f'{label},{yid},{start},{start + 10},{split},0')
      name = f'{yid}_{start:06d}_{start + 10:06d}.mp4'
      folder = os.path.join(root, 'videos')
      if class_folders:
        folder = os.path.join(folder, split, label.replace(' ', '_'))
      path = os.path.join(folder, name)
      if yid not in missing:
        write_video(path, n + 7, 'mp4v')
      else:  # The reader cannot know the folder of a missing video: it expects it at <data_root>/<label>/<name>.
        path = os.path.join(root, 'videos', label, name)
      expected.setdefault(split, {})[path] = (K400_CLASSES.index(label), label)
    with open(os.path.join(ann, f'{split}.csv'), 'w') as f:
      f.write('\n'.join(lines) + '\n')
  return ann, os.path.join(root, 'videos'), expected


UCF_CLASSES = ['ApplyEyeMakeup', 'Basketball', 'HandstandPushups', 'YoYo']


def ucf101(root, *, missing=()):
  """`ucfTrainTestlist/{classInd,trainlist01,testlist01}.txt` and `UCF-101/<Class>/v_*.avi` (XVID), 1-based
  classInd; the test list has no labels; the HandstandPushups files are spelt `v_HandStandPushups_*` as in the
  release."""
  lists = os.path.join(root, 'ucfTrainTestlist')
  os.makedirs(lists, exist_ok=True)
  with open(os.path.join(lists, 'classInd.txt'), 'w') as f:
    f.write(''.join(f'{i + 1} {c}\n' for i, c in enumerate(UCF_CLASSES)))

  def name(c, g):
    return f'v_{"HandStandPushups" if c == "HandstandPushups" else c}_g{g:02d}_c01.avi'
  train = [(c, g) for c in UCF_CLASSES for g in (8, 9)]
  test = [('Basketball', 1), ('YoYo', 2)]
  expected = {'train': {}, 'test': {}}
  with open(os.path.join(lists, 'trainlist01.txt'), 'w') as f:
    for c, g in train:
      f.write(f'{c}/{name(c, g)} {UCF_CLASSES.index(c) + 1}\r\n')  # The release has CRLF line ends.
  with open(os.path.join(lists, 'testlist01.txt'), 'w') as f:
    for c, g in test:
      f.write(f'{c}/{name(c, g)}\r\n')
  for split, items in (('train', train), ('test', test)):
    for c, g in items:
      path = os.path.join(root, 'UCF-101', c, name(c, g))
      if name(c, g) not in missing:
        write_video(path, g + UCF_CLASSES.index(c), 'XVID')
      expected[split][path] = (UCF_CLASSES.index(c), c)
  return lists, os.path.join(root, 'UCF-101'), expected


HMDB_CLASSES = ['brush_hair', 'cartwheel', 'pullup', 'wave']


def hmdb51(root):
  """`testTrainMulti_7030_splits/<class>_test_split1.txt` (`<video>.avi 0|1|2`) and `hmdb51/<class>/<video>.avi`
  (XVID). Each class: one train (1), one test (2) and one unused (0) video."""
  lists = os.path.join(root, 'testTrainMulti_7030_splits')
  os.makedirs(lists, exist_ok=True)
  expected = {'train': {}, 'test': {}}
  for i, c in enumerate(HMDB_CLASSES):
    lines = []
    for marker in (1, 2, 0):
      video = f'{c}_clip{marker}_f_cm_np1_fr_med_{i}.avi'
      lines.append(f'{video} {marker} ')  # The release ends each line with a space.
      path = write_video(os.path.join(root, 'hmdb51', c, video), 10 * i + marker, 'XVID')
      if marker:
        expected['train' if marker == 1 else 'test'][path] = (i, c)
    with open(os.path.join(lists, f'{c}_test_split1.txt'), 'w') as f:
      f.write('\n'.join(lines) + '\n')
    with open(os.path.join(lists, f'{c}_test_split2.txt'), 'w') as f:  # Another split: must not be read.
      f.write(f'{c}_clip1_f_cm_np1_fr_med_{i}.avi 2 \n')
  return lists, os.path.join(root, 'hmdb51'), expected
