"""The official annotation files of SSV2, Kinetics-400, UCF101 and HMDB51 -> the input videos of a job, with labels.

Every reader returns the dataset's full class list as the label map (0-based, in the dataset's official order), so a
class has the same index in every split whichever classes a split happens to contain:

* `ssv2`: `--input=something-something-v2-{train,validation,test}.json` (objects with `id`, `template`, ...). Classes:
  the labels file (`--label_map`, default `something-something-v2-labels.json` beside the JSON; template -> index as
  strings), matched by the template without its brackets. Videos: `<data_root>/<id>.webm`. Split: the file's.
* `k400`: `--input={train,validate,test}.csv` (`label,youtube_id,time_start,time_end,split[,is_cc]`). Classes: the
  sorted class names of every Kinetics CSV in the annotation folder (train + validate). Videos:
  `<youtube_id>_<start:06d>_<end:06d>.<ext>` anywhere below `<data_root>` (flat or in class folders). Split: the rows
  whose `split` column is `--split` (default: the file's only split).
* `ucf101`: `--input=ucfTrainTestlist/` (or one of its `trainlistNN.txt`/`testlistNN.txt`). Classes: `classInd.txt`
  (`1 ApplyEyeMakeup` is index 0). Videos: `v_*.avi` anywhere below `<data_root>` (the release: `UCF-101/<Class>/`).
  Split: `--split=train|test`, `--split_id=1|2|3`; the test lists carry no index, so the class folder gives it.
* `hmdb51`: `--input=testTrainMulti_7030_splits/` (`<class>_test_splitN.txt`, lines `<video>.avi 0|1|2`). Classes:
  the sorted class names of the split files. Videos: `<video>.avi` anywhere below `<data_root>`. Split:
  `--split=train` (marker 1) or `test` (marker 2), `--split_id=1|2|3`; marker 0 videos are in neither.

`data_root` defaults to the annotation file's folder (for UCF101 and HMDB51: the folder above the split-file folder,
where the official archives unpack their videos). An entry whose video is not found keeps its expected path, so the
job reports it as `missing` in `failures.jsonl` like any other bad input (SSV2 and Kinetics downloads always lack
some videos). An entry that would name a file outside `data_root` (an absolute path, a `..`) is refused, naming the
file and line: an annotation file never makes the job read, and store in its records, a file elsewhere.

Files are read by `input_files.read_text` (UTF-8, with or without a byte-order mark).
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from typing import NamedTuple

from data_prep import input_files as files
from data_prep import tfds_io
from data_prep.input_files import InputList, VideoInput

FORMATS = ('auto', 'list', 'ssv2', 'k400', 'ucf101', 'hmdb51', 'tfds')
OFFICIAL = ('ssv2', 'k400', 'ucf101', 'hmdb51')
SSV2_LABELS = 'something-something-v2-labels.json'
_K400_SPLITS = {'train': 'train', 'val': 'validate', 'validate': 'validate', 'validation': 'validate', 'test': 'test'}
_SSV2_SPLIT = re.compile(r'something-something-v2-(train|validation|test)\.json$')
_UCF_LIST = re.compile(r'(train|test)list0?([123])\.txt$')
_HMDB_LIST = re.compile(r'^(.+)_test_split([123])\.txt$')


class DatasetError(files.InputFileError):
  """An annotation file that does not follow its dataset's official format; the message names the file and line."""


def _listdir(path: str) -> list[str]:
  if '://' in path:
    return sorted(p.rstrip('/') for p in files.gfile().listdir(path))
  return sorted(os.listdir(path))


def _k400_header(path: str) -> list[str] | None:
  try:  # Bytes that are not UTF-8 do not change the format; its reader names their line.
    first = files.read_text(path, errors='replace').splitlines()[0]
  except (IndexError, OSError):
    return None
  header = [h.strip() for h in first.split(',')]
  return header if {'youtube_id', 'time_start', 'time_end'} <= set(header) else None


def detect(spec: str) -> str:
  """The format of one `--input` value: one of `OFFICIAL`, 'tfds' or 'list' (lists, directories, globs, files)."""
  if tfds_io.is_tfds_path(spec):
    return 'tfds'
  base = os.path.basename(spec.rstrip('/'))
  if spec.lower().endswith('.json'):
    return 'ssv2'
  if _UCF_LIST.search(base) or base == 'classInd.txt':
    return 'ucf101'
  if _HMDB_LIST.match(base):
    return 'hmdb51'
  if files.isdir(spec):
    names = _listdir(spec)
    if 'classInd.txt' in names:
      return 'ucf101'
    if any(_HMDB_LIST.match(n) for n in names):
      return 'hmdb51'
    return 'list'
  if spec.lower().endswith('.csv') and files.exists(spec) and _k400_header(spec):
    return 'k400'
  return 'list'


def _root(data_root: str | None, annotation: str) -> str:
  if data_root:
    return data_root
  return annotation.rstrip('/') if files.isdir(annotation) else os.path.dirname(annotation)


def _index_by_stem(root: str) -> dict[str, list[str]]:
  """`{file stem: [paths]}` of the video files below `root` (one walk for the whole list)."""
  if not files.isdir(root):
    raise DatasetError(f'--data_root={root} is not a directory; pass the folder that holds the videos')
  index: dict[str, list[str]] = {}
  for path in files.walk(files.canonical(root)):
    if files.has_video_extension(path):
      index.setdefault(os.path.splitext(os.path.basename(path))[0], []).append(path)
  return {stem: sorted(paths) for stem, paths in index.items()}  # Sorted: `_pick` does not depend on the OS.


def _below(root: str, where: str, *parts: str) -> str:
  """The path `root/<parts>` of the video an annotation entry names (`parts`: its folder and file names, '' skipped).

  Raises:
    DatasetError: naming `where` (file and line) when a part is an absolute path or URL or has a `..` component.
  """
  parts = tuple(p for p in parts if p)
  for part in parts:
    if os.path.isabs(part) or part.startswith('\\') or '://' in part or '..' in re.split(r'[/\\]', part):
      raise DatasetError(f'{where}: {part!r} names a file outside --data_root (an absolute path or ".."); the '
                         'entries of an annotation file are paths below it')
  rel = '/'.join(parts)
  return f'{root.rstrip("/")}/{rel}' if files.is_remote(root) else files.canonical(os.path.join(root, rel))


def _pick(candidates: list[str], folder_names: tuple[str, ...]) -> str:
  """One of several files with the same stem: the one in a folder named like the class, else the first."""
  for path in candidates:
    if os.path.basename(os.path.dirname(path)) in folder_names:
      return path
  return candidates[0]


def _split_error(what: str, split: str | None, allowed) -> DatasetError:
  return DatasetError(f'{what} needs --split, one of {sorted(allowed)} (got {split!r})')


# ---------------------------------------------------------------------------------------------------- SSV2


def _ssv2_label_map(path: str) -> dict[str, int]:
  try:
    data = json.loads(files.read_text(path))
  except files.InputFileError:
    raise
  except (OSError, ValueError) as e:
    raise DatasetError(f'--label_map={path} cannot be read as the SSV2 labels JSON: {e}') from None
  return files.label_map_from_json(data, path)


def _template(text: str) -> str:
  """An SSV2 template without the brackets round its placeholders: `Putting [something] on [something]` ->
  `Putting something on something` (the labels file's spelling)."""
  return text.replace('[', '').replace(']', '')


def read_ssv2(path: str, *, data_root: str | None, label_map_path: str | None, split: str | None) -> InputList:
  """Reads `something-something-v2-<split>.json`: a JSON list of `{"id", "label", "template", "placeholders"}`
  (the test split has only `id`: its videos are unlabelled)."""
  label_map_path = label_map_path or os.path.join(os.path.dirname(path), SSV2_LABELS)
  if not files.exists(label_map_path):
    raise DatasetError(f'{path} is an SSV2 annotation file but its class list {label_map_path} does not exist; pass '
                       f'--label_map=<path of {SSV2_LABELS}>')
  label_map = _ssv2_label_map(label_map_path)
  try:
    entries = json.loads(files.read_text(path))
  except files.InputFileError:
    raise
  except ValueError as e:
    raise DatasetError(f'{path} is not valid JSON ({e}); expected the SSV2 list of {{"id", "template", ...}}') from None
  if not isinstance(entries, list) or not all(isinstance(e, dict) and 'id' in e for e in entries):
    raise DatasetError(f'{path} is not an SSV2 annotation file: expected a JSON list of objects with an "id"')
  m = _SSV2_SPLIT.search(os.path.basename(path))
  split = split or (m.group(1) if m else None)
  if not split:
    raise DatasetError(f'{path}: the split is not in the file name (something-something-v2-<split>.json); pass '
                       '--split')
  root = _root(data_root, path)
  videos = []
  for n, entry in enumerate(entries):
    vid = entry['id']
    if isinstance(vid, bool) or not isinstance(vid, (str, int)) or not str(vid).strip():
      raise DatasetError(f'{path} entry {n}: "id" is {json.dumps(vid)}; expected the video\'s name (<id>.webm), a '
                         'number or a string')
    video = _below(root, f'{path} entry {n} (id {vid})', f'{vid}.webm')
    if 'template' not in entry:
      videos.append(VideoInput(video))
      continue
    name = _template(str(entry['template']))
    if name not in label_map:
      raise DatasetError(f'{path} entry {n} (id {entry["id"]}): template {name!r} is not a class of '
                         f'{label_map_path} ({len(label_map)} classes)')
    videos.append(VideoInput(video, label_map[name], name))
  return InputList(videos, label_map, dataset='ssv2', split=split)


# ---------------------------------------------------------------------------------------------------- Kinetics


class _K400Row(NamedTuple):
  where: str  # '<file> line <n>', for errors.
  label: str  # '' when unlabelled (the test CSV).
  youtube_id: str
  start: int  # Whole seconds, as in the video file names.
  end: int
  split: str


def _k400_seconds(text: str, where: str) -> int:
  try:
    value = float(text)
  except ValueError:
    value = math.nan
  if not math.isfinite(value) or value < 0:
    raise DatasetError(f'{where}: time {text!r} is not a number of seconds >= 0')
  return int(value)


def _k400_rows(path: str) -> list[_K400Row]:
  reader = csv.DictReader(io.StringIO(files.read_text(path)))
  rows = []
  for row in reader:
    where = f'{path} line {reader.line_num}'
    if not row.get('youtube_id') or row.get('time_start') in (None, '') or row.get('time_end') in (None, ''):
      raise DatasetError(f'{where}: expected youtube_id,time_start,time_end (got {row})')
    rows.append(_K400Row(where, row.get('label') or '', row['youtube_id'], _k400_seconds(row['time_start'], where),
                         _k400_seconds(row['time_end'], where), row.get('split') or ''))
  return rows


def _k400_classes(path: str, label_map_path: str | None) -> dict[str, int]:
  """The class list: `--label_map`, else the sorted labels of every Kinetics CSV beside `path`."""
  if label_map_path:
    return files.load_label_map(label_map_path)
  folder = os.path.dirname(path) or '.'
  names: set[str] = set()
  for name in _listdir(folder):
    other = os.path.join(folder, name)
    if name.lower().endswith('.csv') and 'label' in (_k400_header(other) or ()):
      names.update(row.label for row in _k400_rows(other) if row.label)
  if not names:
    raise DatasetError(f'no Kinetics CSV in {folder} has a label column, so the class list is unknown; pass '
                       '--label_map=<JSON list or {name: index} of the classes>')
  return {name: i for i, name in enumerate(sorted(names))}


def read_k400(path: str, *, data_root: str | None, label_map_path: str | None, split: str | None) -> InputList:
  """Reads a Kinetics CSV (`label,youtube_id,time_start,time_end,split[,is_cc]`; the test CSV has no label)."""
  rows = _k400_rows(path)
  present = sorted({row.split for row in rows})
  if split is None:
    if len(present) != 1 or not present[0]:
      raise _split_error(path, split, present)
    split = present[0]
  wanted = _K400_SPLITS.get(split, split)
  rows = [row for row in rows if _K400_SPLITS.get(row.split, row.split) == wanted]
  if not rows:
    raise DatasetError(f'{path} has no row with split {split!r}; its splits are {present}')
  label_map = _k400_classes(path, label_map_path)
  root = _root(data_root, path)
  index = _index_by_stem(root)
  videos = []
  for row in rows:
    stem = f'{row.youtube_id}_{row.start:06d}_{row.end:06d}'
    label = row.label
    if label and label not in label_map:
      raise DatasetError(f'{row.where}: row of {stem} has label {label!r}, not one of the {len(label_map)} classes')
    folders = (label, label.replace(' ', '_'))
    found = index.get(stem)
    expected = _below(root, row.where, label, f'{stem}.mp4')
    video = _pick(found, folders) if found else expected
    videos.append(VideoInput(video, label_map[label], label) if label else VideoInput(video))
  return InputList(videos, label_map, dataset='k400', split=_K400_SPLITS.get(split, split))


# ---------------------------------------------------------------------------------------------------- UCF101


def _ucf_classes(path: str) -> dict[str, int]:
  label_map: dict[str, int] = {}
  for n, line in enumerate(files.read_text(path).splitlines()):
    if not line.strip():
      continue
    parts = line.split()
    if len(parts) != 2 or not parts[0].isdigit():
      raise DatasetError(f'{path} line {n + 1}: expected "<1-based index> <ClassName>", got {line!r}')
    label_map[parts[1]] = int(parts[0]) - 1
  if sorted(label_map.values()) != list(range(len(label_map))):
    raise DatasetError(f'{path}: the class indices are not 1..{len(label_map)} once each')
  return label_map


def read_ucf101(path: str, *, data_root: str | None, split: str | None, split_id: int) -> InputList:
  """Reads `classInd.txt` and `trainlistNN.txt` (`Class/v_X.avi <1-based index>`) or `testlistNN.txt`
  (`Class/v_X.avi`) from the `ucfTrainTestlist` folder (`path` is that folder or one of its files)."""
  folder = path.rstrip('/') if files.isdir(path) else os.path.dirname(path)
  m = _UCF_LIST.search(os.path.basename(path))
  if m:
    split = split or m.group(1)
    if split != m.group(1) or (split_id and int(m.group(2)) != split_id):
      raise DatasetError(f'--input={path} is the {m.group(1)} list of split {m.group(2)}, but --split={split} '
                         f'--split_id={split_id} were given')
    split_id = int(m.group(2))
  if split not in ('train', 'test'):
    raise _split_error(f'UCF101 ({path})', split, ('train', 'test'))
  split_id = split_id or 1
  label_map = _ucf_classes(os.path.join(folder, 'classInd.txt'))
  list_file = os.path.join(folder, f'{split}list0{split_id}.txt')
  if not files.exists(list_file):
    raise DatasetError(f'{list_file} does not exist; --input must be the ucfTrainTestlist folder of UCF101')
  root = _root(data_root, os.path.dirname(folder) or '.')
  index = _index_by_stem(root)
  videos = []
  for n, line in enumerate(files.read_text(list_file).splitlines()):
    parts = line.split()
    if not parts:
      continue
    rel = parts[0]
    where = f'{list_file} line {n + 1}'
    expected = _below(root, where, rel)
    name = rel.split('/')[0]
    if name not in label_map:
      raise DatasetError(f'{where}: class folder {name!r} of {rel} is not in classInd.txt')
    if len(parts) > 1 and not parts[1].isdigit():
      raise DatasetError(f'{where}: expected "<Class>/<video>.avi <1-based class index>", got {line!r}')
    if len(parts) > 1 and int(parts[1]) - 1 != label_map[name]:
      raise DatasetError(f'{where}: {rel} is marked class {parts[1]}, but classInd.txt numbers {name} '
                         f'{label_map[name] + 1}')
    found = index.get(os.path.splitext(os.path.basename(rel))[0])
    video = _pick(found, (name,)) if found else expected
    videos.append(VideoInput(video, label_map[name], name))
  return InputList(videos, label_map, dataset='ucf101', split=split, split_id=split_id)


# ---------------------------------------------------------------------------------------------------- HMDB51


def read_hmdb51(path: str, *, data_root: str | None, split: str | None, split_id: int) -> InputList:
  """Reads the `<class>_test_split<N>.txt` files (`<video>.avi 0|1|2`; 1 = train, 2 = test, 0 = neither) of the
  `testTrainMulti_7030_splits` folder (`path` is that folder or one of its files)."""
  folder = path.rstrip('/') if files.isdir(path) else os.path.dirname(path)
  m = _HMDB_LIST.match(os.path.basename(path))
  if m:
    split_id = split_id or int(m.group(2))
  if split not in ('train', 'test'):
    raise _split_error(f'HMDB51 ({path})', split, ('train', 'test'))
  split_id = split_id or 1
  split_files = {}
  for name in _listdir(folder):
    fm = _HMDB_LIST.match(name)
    if fm and int(fm.group(2)) == split_id:
      split_files[fm.group(1)] = os.path.join(folder, name)
  if not split_files:
    raise DatasetError(f'{folder} has no <class>_test_split{split_id}.txt file')
  label_map = {name: i for i, name in enumerate(sorted(split_files))}
  marker = '1' if split == 'train' else '2'
  root = _root(data_root, os.path.dirname(folder) or '.')
  index = _index_by_stem(root)
  videos = []
  for name, list_file in sorted(split_files.items()):
    for n, line in enumerate(files.read_text(list_file).splitlines()):
      parts = line.split()
      if not parts:
        continue
      if len(parts) != 2 or parts[1] not in ('0', '1', '2'):
        raise DatasetError(f'{list_file} line {n + 1}: expected "<video>.avi 0|1|2", got {line!r}')
      expected = _below(root, f'{list_file} line {n + 1}', name, parts[0])
      if parts[1] != marker:
        continue
      found = index.get(os.path.splitext(parts[0])[0])
      video = _pick(found, (name,)) if found else expected
      videos.append(VideoInput(video, label_map[name], name))
  return InputList(videos, label_map, dataset='hmdb51', split=split, split_id=split_id)


def read(spec: str, fmt: str, *, data_root: str | None, label_map_path: str | None, split: str | None,
         split_id: int) -> InputList:
  """Dispatches one `--input` of an official format (`fmt` in `OFFICIAL`)."""
  if split_id not in (0, 1, 2, 3):
    raise DatasetError(f'--split_id={split_id} must be 1, 2 or 3 (UCF101 and HMDB51 have three splits)')
  if fmt == 'ssv2':
    return read_ssv2(spec, data_root=data_root, label_map_path=label_map_path, split=split)
  if fmt == 'k400':
    return read_k400(spec, data_root=data_root, label_map_path=label_map_path, split=split)
  if label_map_path:
    raise DatasetError(f'--label_map is not used with --format={fmt}: its class list is the dataset\'s own')
  if fmt == 'ucf101':
    return read_ucf101(spec, data_root=data_root, split=split, split_id=split_id)
  return read_hmdb51(spec, data_root=data_root, split=split, split_id=split_id)
