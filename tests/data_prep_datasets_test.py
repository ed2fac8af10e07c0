"""The official annotation formats (SSV2, Kinetics-400, UCF101, HMDB51) on fake copies of their layouts: every label
is the official 0-based index of the full class list, the split selection is right, missing videos are kept for the
failure report, and malformed files are refused naming the file and line."""
import json
import os

import pytest

import dataset_layouts as layouts

from data_prep import datasets
from data_prep import inputs


def _labels(listed):
  return {v.path: (v.label, v.label_name) for v in listed.videos}


@pytest.mark.parametrize('split', ['train', 'validation', 'test'])
def test_ssv2_json_with_the_official_labels_file(tmp_path, split):
  ann, videos, expected = layouts.ssv2(str(tmp_path))
  spec = os.path.join(ann, f'something-something-v2-{split}.json')
  assert datasets.detect(spec) == 'ssv2'
  # The labels file beside the JSON is found by itself; the videos live in another folder.
  got = inputs.list_inputs(spec, data_root=videos)
  assert _labels(got) == expected[split]
  assert got.label_map == {name: i for i, name in enumerate(layouts.SSV2_CLASSES)}
  assert (got.dataset, got.split) == ('ssv2', split)


def test_ssv2_refuses_an_unknown_template_and_a_missing_labels_file(tmp_path):
  ann, videos, _ = layouts.ssv2(str(tmp_path))
  bad = tmp_path / 'something-something-v2-train.json'
  bad.write_text(json.dumps([{'id': '9', 'template': 'Dropping [something]', 'label': 'dropping a cup'}]))
  with pytest.raises(ValueError, match='does not exist; pass --label_map'):
    inputs.list_inputs(str(bad), data_root=videos)
  with pytest.raises(ValueError, match=r"entry 0 \(id 9\): template 'Dropping something' is not a class"):
    inputs.list_inputs(str(bad), data_root=videos,
                       label_map_path=os.path.join(ann, 'something-something-v2-labels.json'))


@pytest.mark.parametrize('class_folders', [True, False])
def test_k400_csv_flat_or_in_class_folders_takes_indices_from_every_split(tmp_path, class_folders):
  ann, videos, expected = layouts.k400(str(tmp_path), class_folders=class_folders)
  for split in ('train', 'validate'):
    spec = os.path.join(ann, f'{split}.csv')
    assert datasets.detect(spec) == 'k400'
    got = inputs.list_inputs(spec, data_root=videos)
    assert _labels(got) == expected[split]
    assert got.label_map == {name: i for i, name in enumerate(layouts.K400_CLASSES)}
  # validate has only classes 2 and 3: they keep those indices (not 0 and 1 from the classes present).
  assert sorted(lab for lab, _ in expected['validate'].values()) == [2, 3]


def test_k400_split_column_and_missing_videos(tmp_path):
  ann, videos, expected = layouts.k400(str(tmp_path), missing=('bbb222',))
  got = inputs.list_inputs(os.path.join(ann, 'train.csv'), data_root=videos, split='train')
  assert _labels(got) == expected['train']
  missing = [p for p in expected['train'] if not os.path.exists(p)]
  assert len(missing) == 1 and 'bbb222' in missing[0]
  with pytest.raises(ValueError, match=r"has no row with split 'test'; its splits are \['train'\]"):
    inputs.list_inputs(os.path.join(ann, 'train.csv'), data_root=videos, split='test')


@pytest.mark.parametrize('split', ['train', 'test'])
def test_ucf101_class_index_is_zero_based_and_the_test_list_is_labelled_by_folder(tmp_path, split):
  lists, _, expected = layouts.ucf101(str(tmp_path))
  assert datasets.detect(lists) == 'ucf101'
  got = inputs.list_inputs(lists, split=split, split_id=1)  # Videos found below the folder above the lists.
  assert _labels(got) == expected[split]
  assert got.label_map == {name: i for i, name in enumerate(layouts.UCF_CLASSES)}
  # One of the list files as --input selects its split and split number itself.
  assert _labels(inputs.list_inputs(os.path.join(lists, f'{split}list01.txt'))) == expected[split]


def test_ucf101_errors_name_the_file_and_line(tmp_path):
  lists, videos, _ = layouts.ucf101(str(tmp_path))
  with pytest.raises(ValueError, match=r"needs --split, one of \['test', 'train'\]"):
    inputs.list_inputs(lists)
  with pytest.raises(ValueError, match='trainlist02.txt does not exist'):
    inputs.list_inputs(lists, split='train', split_id=2)
  with open(os.path.join(lists, 'trainlist01.txt'), 'a') as f:
    f.write('YoYo/v_YoYo_g10_c01.avi 2\n')
  with pytest.raises(ValueError, match=r'trainlist01.txt line 9: .*marked class 2, but classInd.txt numbers YoYo 4'):
    inputs.list_inputs(lists, split='train', data_root=videos)


@pytest.mark.parametrize('split', ['train', 'test'])
def test_hmdb51_split_marker_selects_videos_and_never_becomes_the_label(tmp_path, split):
  lists, videos, expected = layouts.hmdb51(str(tmp_path))
  assert datasets.detect(lists) == 'hmdb51'
  got = inputs.list_inputs(lists, split=split, split_id=1, data_root=videos)
  assert _labels(got) == expected[split]
  assert got.label_map == {name: i for i, name in enumerate(layouts.HMDB_CLASSES)}
  # Split 2 reads only the *_test_split2.txt files.
  assert len(inputs.list_inputs(lists, split='test', split_id=2, data_root=videos).videos) == 4


def test_list_labels_out_of_range_and_bad_label_maps_are_refused(tmp_path):
  (tmp_path / 'm.json').write_text(json.dumps(['a', 'b']))
  (tmp_path / 'l.csv').write_text('v1.mp4,1\nv2.mp4,5\n')
  with pytest.raises(ValueError, match=r'v2.mp4 has label 5; expected -1 \(unlabelled\) or one of the 2 class'):
    inputs.list_inputs(str(tmp_path / 'l.csv'), label_map_path=str(tmp_path / 'm.json'))
  (tmp_path / 'l.csv').write_text('v1.mp4,-3\n')
  with pytest.raises(ValueError, match='has label -3'):
    inputs.list_inputs(str(tmp_path / 'l.csv'))
  (tmp_path / 'dup.json').write_text(json.dumps({'a': 0, 'b': 0}))
  with pytest.raises(ValueError, match=r'repeated: \[0\]'):
    inputs.list_inputs(str(tmp_path / 'l.csv'), label_map_path=str(tmp_path / 'dup.json'))
  assert inputs.load_label_map(_write(tmp_path / 's.json', {'x': '1', 'y': '0'})) == {'x': 1, 'y': 0}


def _write(path, data):
  path.write_text(json.dumps(data))
  return str(path)


IN_PROCESS = ['--runner=FnApiRunner', '--direct_running_mode=in_memory', '--direct_num_workers=1']


@pytest.fixture(scope='module')
def ucf_prepared(tmp_path_factory):
  """UCF101's train and test split prepared into one dataset directory (one video of the test list is missing)."""
  from data_prep import extract
  from data_prep.options import PrepConfig

  root = str(tmp_path_factory.mktemp('ucf'))
  lists, videos, expected = layouts.ucf101(root, missing=('v_YoYo_g02_c01.avi',))
  out = str(tmp_path_factory.mktemp('prep'))
  job = extract.JobOptions(min_shards=2, max_bad_fraction=0.5, progress_interval_s=0, isolation='none')
  log = open(os.path.join(root, 'log.txt'), 'w+')
  manifests = {split: extract.run(lists, out, PrepConfig(short_side=32), job, beam_args=IN_PROCESS, split=split,
                                  data_root=videos, log=log)
               for split in ('train', 'test')}
  log.seek(0)
  return lists, videos, expected, out, manifests, log.read()


def test_prepared_splits_have_the_official_labels_and_report_the_missing_video(ucf_prepared):
  from m3video_jax.data import schema

  _, _, expected, out, manifests, log = ucf_prepared
  for split in ('train', 'test'):
    got = {}
    for shard in sorted(os.listdir(os.path.join(out, split))):
      if shard.endswith('.tfrecord'):
        assert shard.startswith('videos-')
        for rec in _records(os.path.join(out, split, shard)):
          d = schema.decode(rec, decode_frames=False)
          got[d['source_path']] = (d['label'], d['label_name'])
    want = {p: v for p, v in expected[split].items() if os.path.exists(p)}
    assert got == want
    assert manifests[split]['num_classes'] == 4 and manifests[split]['split'] == split
  failures = [json.loads(line) for line in open(os.path.join(out, 'test', 'failures.jsonl'))]
  assert [(os.path.basename(f['path']), f['reason']) for f in failures] == [('v_YoYo_g02_c01.avi', 'missing')]
  assert '1 of the 2 listed videos do not exist' in log
  assert json.load(open(os.path.join(out, 'label_map.json'))) == {c: i for i, c in enumerate(layouts.UCF_CLASSES)}


def _records(path):
  import tensorflow as tf
  return [r.numpy() for r in tf.data.TFRecordDataset(path)]


def test_a_split_with_another_class_list_is_refused(ucf_prepared, tmp_path):
  from data_prep import extract
  from data_prep.options import PrepConfig

  _, videos, _, out, _, _ = ucf_prepared
  (tmp_path / 'val.csv').write_text(f'{videos}/YoYo/v_YoYo_g08_c01.avi,Yo-Yo\n')
  before = sorted(os.listdir(out))
  with pytest.raises(ValueError, match=r"\['Yo-Yo'\] are not in the label map"):  # Takes the dataset's own list.
    extract.run(str(tmp_path / 'val.csv'), out, PrepConfig(short_side=32), beam_args=IN_PROCESS, split='val')
  (tmp_path / 'other.json').write_text(json.dumps(['YoYo', 'ApplyEyeMakeup', 'Basketball', 'HandstandPushups']))
  (tmp_path / 'val.csv').write_text(f'{videos}/YoYo/v_YoYo_g08_c01.avi,YoYo\n')
  with pytest.raises(ValueError, match='differs from .*label_map.json .*written with an earlier split'):
    extract.run(str(tmp_path / 'val.csv'), out, PrepConfig(short_side=32), beam_args=IN_PROCESS, split='val',
                label_map_path=str(tmp_path / 'other.json'))
  assert sorted(os.listdir(out)) == before  # Nothing written.


def test_the_dataset_directory_loads_with_tfds_and_matches_schema_decode(ucf_prepared):
  import numpy as np
  import tensorflow as tf
  import tensorflow_datasets as tfds

  from m3video_jax.data import schema

  _, _, _, out, manifests, _ = ucf_prepared
  builder = tfds.builder_from_directory(out)
  assert set(builder.info.splits) == {'train', 'test'}
  assert builder.info.splits['train'].num_examples == manifests['train']['records'] == 8
  assert builder.info.features['label'].names == layouts.UCF_CLASSES
  raw = {}
  for shard in sorted(os.listdir(os.path.join(out, 'train'))):
    if shard.endswith('.tfrecord'):
      for rec in _records(os.path.join(out, 'train', shard)):
        d = schema.decode(rec)
        raw[d['video_id']] = (d, schema.parse_example(rec))
  seen = 0
  for ex in tfds.as_numpy(builder.as_dataset(split='train', shuffle_files=False)):
    d, parsed = raw[ex['video_id'].decode()]
    assert ex['label'] == d['label'] and ex['label_name'].decode() == d['label_name']
    # TFDS decodes the JPEGs with TensorFlow, as the training input does (`schema.decode` uses OpenCV's decoder,
    # whose rounding differs by a few levels).
    np.testing.assert_array_equal(ex['frames'], np.stack([tf.io.decode_jpeg(b).numpy() for b in parsed['frames']]))
    diff = np.abs(ex['frames'].astype(int) - d['frames'])
    assert diff.max() <= 8 and diff.mean() < 2.0, (diff.max(), diff.mean())
    for key in (schema.TRAJ_DISP, schema.TRAJ_INSIDE, schema.HOG_MAP):
      assert list(ex[key]) == list(parsed[key])
    np.testing.assert_allclose(ex[schema.HOG_SCALE], parsed[schema.HOG_SCALE])
    assert ex['num_frames'] == d['num_frames'] and ex['height'] == d['height']
    seen += 1
  assert seen == 8


def test_tfds_video_dataset_as_input_on_tfds_mock_data(tmp_path):
  """`--input=tfds:ucf101/ucf101_1_256:train` on TFDS's mock data (random examples from the dataset's own features;
  nothing downloaded): every video becomes a record with its label and frame count."""
  import numpy as np
  import tensorflow_datasets as tfds

  from data_prep import extract
  from data_prep.options import PrepConfig
  from m3video_jax.data import schema

  spec = 'tfds:ucf101/ucf101_1_256:train'
  job = extract.JobOptions(min_shards=1, progress_interval_s=0, isolation='none')  # The mock patches this process.
  with tfds.testing.mock_data(num_examples=3, policy=tfds.testing.MockPolicy.USE_CODE):
    examples = list(tfds.as_numpy(tfds.load('ucf101/ucf101_1_256', split='train', shuffle_files=False)))
    listed = inputs.list_inputs(spec)
    manifest = extract.run(spec, str(tmp_path / 'out'), PrepConfig(short_side=32, max_frames=12), job,
                           beam_args=IN_PROCESS, log=open(os.devnull, 'w'))
  names = tfds.builder('ucf101/ucf101_1_256').info.features['label'].names
  assert listed.label_map == {n: i for i, n in enumerate(names)} and len(names) == 101
  assert [v.label for v in listed.videos] == [int(e['label']) for e in examples]
  assert manifest['videos_failed'] == 0 and manifest['records'] == 3 and manifest['split'] == 'train'
  got = {}
  for shard in sorted((tmp_path / 'out' / 'train').glob('*.tfrecord')):
    for rec in _records(str(shard)):
      d = schema.decode(rec)
      got[d['source_path']] = d
  for i, e in enumerate(examples):
    d = got[f'{spec}[{i}]']
    assert d['label'] == e['label'] and d['label_name'] == names[e['label']]
    assert d['num_frames'] == min(12, len(e['video'])) and d['frames'].shape[1:3] == (32, 32)
    # The stored first frame is the example's first frame at prep size (JPEG-compressed).
    import cv2
    want = cv2.resize(e['video'][0], (32, 32), interpolation=cv2.INTER_AREA)
    assert np.abs(d['frames'][0].astype(int) - want).mean() < 12
