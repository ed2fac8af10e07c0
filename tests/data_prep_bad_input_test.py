"""Annotation files as careless users and broken downloads give them: a byte-order mark changes nothing, and every
malformed entry (one naming a file outside --data_root, a time or index that is not a number, bytes that are not UTF-8,
an SSV2 id of null) is one `[data_prep] error:` line of `data_prep.extract` naming the file and line, no traceback."""
import codecs
import json
import os
import re

import pytest

import dataset_layouts as layouts

from data_prep import extract
from data_prep import inputs
from m3video_jax import cli


def _labels(listed):
  return {v.path: (v.label, v.label_name) for v in listed.videos}


def _prepend_bom(*paths):
  for path in paths:
    with open(path, 'rb') as f:
      data = f.read()
    with open(path, 'wb') as f:
      f.write(codecs.BOM_UTF8 + data)


def _bom_case(name, root):
  """(list_inputs kwargs, expected labels) of a layout whose annotation files start with a byte-order mark."""
  if name == 'k400':  # Only train.csv has one: validate.csv (read for the class list) has not.
    ann, videos, expected = layouts.k400(root)
    _prepend_bom(os.path.join(ann, 'train.csv'))
    return dict(spec=os.path.join(ann, 'train.csv'), data_root=videos), expected['train']
  if name == 'ssv2':
    ann, videos, expected = layouts.ssv2(root)
    _prepend_bom(*(os.path.join(ann, f'something-something-v2-{s}.json') for s in ('labels', 'train')))
    return dict(spec=os.path.join(ann, 'something-something-v2-train.json'), data_root=videos), expected['train']
  if name == 'ucf101':
    lists, _, expected = layouts.ucf101(root)
    _prepend_bom(os.path.join(lists, 'classInd.txt'), os.path.join(lists, 'trainlist01.txt'))
    return dict(spec=lists, split='train'), expected['train']
  if name == 'hmdb51':
    lists, videos, expected = layouts.hmdb51(root)
    _prepend_bom(*(os.path.join(lists, n) for n in os.listdir(lists)))
    return dict(spec=lists, split='train', data_root=videos), expected['train']
  path = os.path.join(root, 'list.csv')  # A plain list with a header line.
  with open(path, 'w') as f:
    f.write('path,label\na.mp4,cat\nb.mp4,dog\n')
  _prepend_bom(path)
  return dict(spec=path), {os.path.join(root, 'a.mp4'): (0, 'cat'), os.path.join(root, 'b.mp4'): (1, 'dog')}


@pytest.mark.parametrize('name', ['k400', 'ssv2', 'ucf101', 'hmdb51', 'list'])
def test_a_byte_order_mark_changes_nothing(tmp_path, name):
  """Excel's "CSV UTF-8" starts a file with a BOM: Kinetics lost every label (the header read `\\ufefflabel`), HMDB51
  its first video, a list gained a video named `\\ufeffpath`; SSV2 and UCF101 refused the file."""
  kwargs, expected = _bom_case(name, str(tmp_path))
  got = inputs.list_inputs(kwargs.pop('spec'), **kwargs)
  assert _labels(got) == expected
  if name == 'k400':
    assert got.label_map == {c: i for i, c in enumerate(layouts.K400_CLASSES)}


def _edit(path, old, new):
  with open(path, 'rb') as f:
    data = f.read()
  assert old in data, (path, old)
  with open(path, 'wb') as f:
    f.write(data.replace(old, new, 1))


def _ssv2_ids(root, *ids):
  ann, videos, _ = layouts.ssv2(root)
  path = os.path.join(ann, 'something-something-v2-train.json')
  with open(path) as f:
    entries = json.load(f)
  for entry, vid in zip(entries, ids):
    entry['id'] = vid
  with open(path, 'w') as f:
    json.dump(entries, f)
  return [f'--input={path}', f'--data_root={videos}'], path


def _k400(root, old, new):
  ann, videos, _ = layouts.k400(root)
  _edit(os.path.join(ann, 'train.csv'), old, new)
  return [f'--input={os.path.join(ann, "train.csv")}', f'--data_root={videos}'], os.path.join(ann, 'train.csv')


def _ucf(root, line):
  lists, _, _ = layouts.ucf101(root)
  with open(os.path.join(lists, 'trainlist01.txt'), 'ab') as f:
    f.write(line)
  return [f'--input={lists}', '--split=train'], os.path.join(lists, 'trainlist01.txt')


def _hmdb(root, line):
  lists, videos, _ = layouts.hmdb51(root)
  with open(os.path.join(lists, 'wave_test_split1.txt'), 'ab') as f:
    f.write(line)
  return [f'--input={lists}', '--split=train', f'--data_root={videos}'], os.path.join(lists, 'wave_test_split1.txt')


# (case, how to break a layout -> (flags, the file the error names), what the error says after the file's name).
BAD = [
    ('ssv2_dotdot_id', lambda r: _ssv2_ids(r, '../../etc/hosts'), r" entry 0 \(id \.\./\.\./etc/hosts\): .* outside "
     '--data_root'),
    ('ssv2_absolute_id', lambda r: _ssv2_ids(r, '101', '/etc/hosts'), r' entry 1 \(id /etc/hosts\): .* outside'),
    ('ssv2_null_id', lambda r: _ssv2_ids(r, '101', '102', None), r' entry 2: "id" is null'),
    ('k400_dotdot_youtube_id', lambda r: _k400(r, b'ccc333', b'../../ccc333'), r" line 4: '\.\./\.\./ccc333_000005_"
     '000015.mp4. names a file outside --data_root'),
    ('k400_dotdot_label', lambda r: _k400(r, b'\nzumba,', b'\n../../zumba,'), r" line 5: '\.\./\.\./zumba' names a "
     'file outside'),
    ('k400_inf_time', lambda r: _k400(r, b',10,20,', b',inf,20,'), r" line 2: time 'inf' is not a number"),
    ('k400_text_time', lambda r: _k400(r, b',5,15,', b',5,soon,'), r" line 4: time 'soon' is not a number"),
    ('k400_latin1', lambda r: _k400(r, b'zumba,ddd', b'zumb\xe9,ddd'), ' line 5: byte 0xe9 is not UTF-8'),
    ('ucf_dotdot', lambda r: _ucf(r, b'YoYo/../../../x/v_YoYo_g99_c01.avi 4\r\n'), r' line 9: .* outside --data_root'),
    ('ucf_absolute', lambda r: _ucf(r, b'/tmp/YoYo/v_YoYo_g99_c01.avi 4\r\n'), ' line 9: .* outside --data_root'),
    ('ucf_text_index', lambda r: _ucf(r, b'YoYo/v_YoYo_g99_c01.avi four\r\n'), ' line 9: expected "<Class>/<video>.avi '
     '<1-based class index>"'),
    ('ucf_latin1', lambda r: _ucf(r, b'YoYo/v_YoYo_g99_c\xe91.avi 4\r\n'), ' line 9: byte 0xe9 is not UTF-8'),
    ('hmdb_absolute', lambda r: _hmdb(r, b'/tmp/x/d24.avi 1\n'), " line 4: '/tmp/x/d24.avi' names a file outside"),
    ('hmdb_dotdot', lambda r: _hmdb(r, b'../../x/d24.avi 1\n'), r" line 4: '\.\./\.\./x/d24.avi' names a file"),
    ('hmdb_latin1', lambda r: _hmdb(r, b'caf\xe9.avi 1\n'), ' line 4: byte 0xe9 is not UTF-8'),
]


@pytest.mark.parametrize('case,make,says', BAD, ids=[b[0] for b in BAD])
def test_a_bad_entry_is_one_error_line_naming_file_and_line(tmp_path, capsys, case, make, says):
  del case
  args, named = make(str(tmp_path / 'data'))
  capsys.readouterr()
  assert extract.main(args + [f'--output_dir={tmp_path / "out"}']) == 2
  err = capsys.readouterr().err
  assert 'Traceback' not in err and len(err.strip().splitlines()) == 1, err
  assert re.fullmatch(rf'\[data_prep\] error: {re.escape(named)}{says}.*\n', err), err
  assert not os.path.exists(tmp_path / 'out')  # Refused before anything was written.


def test_readers_raise_the_cli_user_error():
  """The mechanism `cli.run` turns into one line, for every tool that reads input lists (extract, features)."""
  from data_prep import datasets
  from data_prep import input_files
  assert issubclass(datasets.DatasetError, cli.UserError) and issubclass(input_files.InputFileError, cli.UserError)


def test_an_unknown_tfds_dataset_is_one_line_without_the_catalogue(tmp_path, capsys):
  pytest.importorskip('tensorflow_datasets')
  capsys.readouterr()
  assert extract.main(['--input=tfds:nosuch_ds:train', f'--output_dir={tmp_path / "out"}']) == 2
  err = capsys.readouterr().err
  assert err.startswith('[data_prep] error: tfds:nosuch_ds: TFDS cannot open this dataset (DatasetNotFoundError: '
                        'Dataset nosuch_ds not found.)')
  assert len(err.strip().splitlines()) == 1, err[:2000]
