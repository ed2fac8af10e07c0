"""Input listing of data_prep: CSV / space-separated list files, class folders, globs; labels and label maps."""
import json

import pytest

from data_prep import inputs


def test_csv_with_header_int_labels_and_relative_paths(tmp_path):
  (tmp_path / 'list.csv').write_text('path,label\nb.mp4,1\na.mp4,0\n/abs/c.mp4,2\n')
  got = inputs.list_inputs(str(tmp_path / 'list.csv'))
  assert [(v.path, v.label) for v in got.videos] == [('/abs/c.mp4', 2), (str(tmp_path / 'a.mp4'), 0),
                                                     (str(tmp_path / 'b.mp4'), 1)]
  assert got.label_map == {}


def test_space_separated_reference_list_with_class_names_and_data_root(tmp_path):
  (tmp_path / 'train.txt').write_text('x/v1.mp4 walking\nx/v2.mp4 running\n\n# comment\nx/v3.mp4 walking\n')
  got = inputs.list_inputs(str(tmp_path / 'train.txt'), data_root='/data')
  assert got.label_map == {'running': 0, 'walking': 1}
  assert [(v.path, v.label, v.label_name) for v in got.videos] == [
      ('/data/x/v1.mp4', 1, 'walking'), ('/data/x/v2.mp4', 0, 'running'), ('/data/x/v3.mp4', 1, 'walking')]


def test_unlabelled_lines_and_label_map_file(tmp_path):
  (tmp_path / 'm.json').write_text(json.dumps({'walking': 7, 'running': 3}))
  (tmp_path / 'l.csv').write_text('v1.mp4\nv2.mp4,running\nv3.mp4,7\n')
  got = inputs.list_inputs(str(tmp_path / 'l.csv'), label_map_path=str(tmp_path / 'm.json'))
  assert [(v.label, v.label_name) for v in got.videos] == [(-1, ''), (3, 'running'), (7, 'walking')]
  (tmp_path / 'bad.csv').write_text('v1.mp4,jumping\n')
  with pytest.raises(ValueError, match="jumping"):
    inputs.list_inputs(str(tmp_path / 'bad.csv'), label_map_path=str(tmp_path / 'm.json'))


def test_directory_of_class_folders(tmp_path):
  for rel in ('zebra/a.mp4', 'ant/b.avi', 'ant/sub/c.MKV', 'ant/readme.txt', 'loose.mp4'):
    (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / rel).write_bytes(b'x')
  got = inputs.list_inputs(str(tmp_path))
  assert got.label_map == {'ant': 0, 'zebra': 1}
  assert [(v.path[len(str(tmp_path)) + 1:], v.label, v.label_name) for v in got.videos] == [
      ('ant/b.avi', 0, 'ant'), ('ant/sub/c.MKV', 0, 'ant'), ('loose.mp4', -1, ''), ('zebra/a.mp4', 1, 'zebra')]


def test_glob_and_errors(tmp_path):
  for name in ('a.mp4', 'b.mp4', 'c.txt'):
    (tmp_path / name).write_bytes(b'x')
  got = inputs.list_inputs(str(tmp_path / '*'))
  assert [v.path for v in got.videos] == [str(tmp_path / 'a.mp4'), str(tmp_path / 'b.mp4')]
  assert all(v.label == -1 for v in got.videos)
  with pytest.raises(ValueError, match='does not exist'):
    inputs.list_inputs(str(tmp_path / 'missing.csv'))
  with pytest.raises(ValueError, match='not a directory, a glob'):
    inputs.list_inputs(str(tmp_path / 'c.txt.bak'))
  (tmp_path / 'dup.csv').write_text('a.mp4,1\na.mp4,2\n')
  with pytest.raises(ValueError, match='labels 1 and 2'):
    inputs.list_inputs(str(tmp_path / 'dup.csv'))


@pytest.mark.timeout(60)
def test_symlink_loop_in_a_directory_adds_nothing(tmp_path):
  """`B/loop -> ..` used to turn 2 videos into 82 inputs (copies of A/a.mp4 labelled B)."""
  for rel in ('A/a.mp4', 'B/b.mp4'):
    (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / rel).write_bytes(b'x')
  (tmp_path / 'B' / 'loop').symlink_to('..')
  (tmp_path / 'B' / 'self').symlink_to('.')
  got = inputs.list_inputs(str(tmp_path))
  assert [(v.path, v.label_name) for v in got.videos] == [(str(tmp_path / 'A/a.mp4'), 'A'),
                                                          (str(tmp_path / 'B/b.mp4'), 'B')]


def test_a_linked_file_is_one_input_and_two_labels_for_one_file_are_refused(tmp_path):
  (tmp_path / 'store').mkdir()
  (tmp_path / 'store' / 'blob.mp4').write_bytes(b'x')
  (tmp_path / 'data' / 'walk').mkdir(parents=True)
  (tmp_path / 'data' / 'walk' / 'v.mp4').symlink_to(tmp_path / 'store' / 'blob.mp4')
  (tmp_path / 'list.txt').write_text(f'{tmp_path}/store/blob.mp4\ndata/walk/v.mp4\n')
  got = inputs.list_inputs(str(tmp_path / 'list.txt'))
  assert [v.path for v in got.videos] == [str(tmp_path / 'data/walk/v.mp4')]  # One input; the link's own name.
  (tmp_path / 'data' / 'run').symlink_to(tmp_path / 'store', target_is_directory=True)
  with pytest.raises(ValueError, match=r'run/blob.mp4 and .*walk/v.mp4 \(the same file\) is listed with labels 0 and 1'):
    inputs.list_inputs(str(tmp_path / 'data'))


def test_spellings_of_one_path_are_one_canonical_input(tmp_path, monkeypatch):
  """`videos/x.mp4`, `./videos/x.mp4` and `/abs/videos/x.mp4` used to be 3 records with 3 ids."""
  (tmp_path / 'videos').mkdir()
  (tmp_path / 'videos' / 'x.mp4').write_bytes(b'x')
  monkeypatch.chdir(tmp_path)
  got = inputs.list_inputs(['videos/x.mp4', './videos/x.mp4', str(tmp_path / 'videos' / 'x.mp4'),
                            'videos/../videos/x.mp4'])
  assert [v.path for v in got.videos] == [str(tmp_path / 'videos' / 'x.mp4')]
  (tmp_path / 'l.csv').write_text('./videos/x.mp4,1\nvideos//x.mp4,1\n')
  assert [v.path for v in inputs.list_inputs('l.csv').videos] == [str(tmp_path / 'videos' / 'x.mp4')]
