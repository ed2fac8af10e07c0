"""Lists the input videos of a job: a CSV/list file, a directory of class folders, or a glob (local or `tf.io.gfile`);
the official annotation files of SSV2, Kinetics, UCF101 and HMDB51 are read by `data_prep.datasets` and TFDS video
datasets (`tfds:<name>[/<config>]:<split>`) by `data_prep.tfds_io`.

* CSV / list file (`.csv`, `.txt`, `.lst`): one video per line, `path,label` or `path label` (the reference's list
  files), label optional, a `path,label` header line is skipped. A label is an integer class index or a class name.
  Class names become indices in sorted order (or by `label_map`). Relative paths are resolved against `data_root`
  (default: the list file's folder).
* Directory: every video file below it; a video in sub-folder `<class>/...` gets label `<class>` (classes sorted by
  name); videos directly in the directory are unlabelled (-1).
* Glob (`*`, `?`, `[`): the matching video files, unlabelled.

Local paths are made canonical (absolute, normalised: `videos/x.mp4`, `./videos/x.mp4` and `/abs/videos/x.mp4` are one
input with one id), directories are walked following symlinks but entering each real directory once (a link loop such
as `B/loop -> ..` adds nothing), and two paths that resolve to the same real file are one input (the first in sorted
order is kept). Remote URLs are used as given.
"""
from __future__ import annotations

import csv
import glob as glob_lib
import io
import os
from collections.abc import Sequence

from data_prep import datasets
# VideoInput, InputList, canonical and load_label_map are used from here too.
from data_prep.input_files import (InputList, VideoInput, canonical, exists, gfile, has_video_extension, isdir,
                                   is_remote, load_label_map, read_text, walk)

LIST_EXTENSIONS = ('.csv', '.txt', '.lst', '.list', '.tsv')


def _resolve_label_map(names: set[str], label_map: dict[str, int] | None, source: str,
                       what: str) -> dict[str, int]:
  """Sorted class names -> indices, or a given map checked to cover every name.

  Raises:
    ValueError: naming `source` and the names missing from `label_map`.
  """
  if label_map is None:
    return {name: i for i, name in enumerate(sorted(names))}
  unknown = sorted(name for name in names if name not in label_map)
  if unknown:
    raise ValueError(f'{source}: {what} {unknown[:5]} are not in the label map (known: {sorted(label_map)[:10]})')
  return label_map


def _real(path: str) -> str:
  """The file a path names (symlinks resolved): the de-duplication key."""
  return path if is_remote(path) else os.path.realpath(path)


def _join(root: str, path: str) -> str:
  if is_remote(path) or os.path.isabs(path) or not root:
    return canonical(path)
  return root.rstrip('/') + '/' + path if is_remote(root) else canonical(os.path.join(root, path))


def _split_line(line: str) -> tuple[str, str]:
  """-> (path, label text or '')."""
  if ',' in line:
    row = next(csv.reader(io.StringIO(line)))
    if len(row) > 2:
      raise ValueError(f'list line {line!r} has {len(row)} comma-separated fields; expected "path,label" or "path"')
    return row[0].strip(), (row[1].strip() if len(row) > 1 else '')
  parts = line.rsplit(None, 1)
  if len(parts) == 2 and not has_video_extension(parts[1]):
    return parts[0].strip(), parts[1].strip()
  return line.strip(), ''


def read_list_file(path: str, data_root: str | None = None,
                   label_map: dict[str, int] | None = None, *, labels: bool = True) -> InputList:
  """Parses a CSV/list file (see the module docstring); with `labels=False` its labels are not read (every video
  unlabelled), so labels that would be refused (two for one video, indices mixed with names) do not matter."""
  root = data_root if data_root is not None else os.path.dirname(path)
  rows = []
  for n, raw in enumerate(read_text(path).splitlines()):
    line = raw.strip()
    if not line or line.startswith('#'):
      continue
    video, label = _split_line(line)
    if n == 0 and video.lower() in ('path', 'video', 'filename', 'file') and label.lower() in ('label', 'class', ''):
      continue  # header
    rows.append((_join(root, video), label if labels else ''))
  label_map = _resolve_label_map({lab for _, lab in rows if lab and not _is_int(lab)}, label_map, path,
                                 'class names')
  index_to_name = {v: k for k, v in label_map.items()}
  videos = []
  for video, lab in rows:
    if not lab:
      videos.append(VideoInput(video))
    elif _is_int(lab):
      index = int(lab)
      if index < -1 or (label_map and index not in index_to_name):
        raise ValueError(f'{path}: {video} has label {index}; expected -1 (unlabelled) or '
                         + (f'one of the {len(label_map)} class indices of the label map' if label_map else
                            'a class index >= 0'))
      videos.append(VideoInput(video, index, index_to_name.get(index, '')))
    else:
      videos.append(VideoInput(video, label_map[lab], lab))
  return InputList(videos, dict(label_map))


def _is_int(text: str) -> bool:
  try:
    int(text)
    return True
  except ValueError:
    return False


def read_directory(root: str, label_map: dict[str, int] | None = None) -> InputList:
  """Lists the video files below `root`; the first sub-folder level names the class."""
  videos_by_class: list[tuple[str, str]] = []
  root_clean = root.rstrip('/') if is_remote(root) else canonical(root)
  for path in walk(root_clean):
    if not has_video_extension(path):
      continue
    rel = path[len(root_clean):].lstrip('/')
    parts = rel.split('/')
    videos_by_class.append((path, parts[0] if len(parts) > 1 else ''))
  label_map = _resolve_label_map({c for _, c in videos_by_class if c}, label_map, root, 'class folders')
  videos = [VideoInput(p, label_map[c], c) if c else VideoInput(p) for p, c in videos_by_class]
  return InputList(videos, dict(label_map))


def read_glob(pattern: str) -> InputList:
  if is_remote(pattern):
    paths = gfile().glob(pattern)
  else:
    paths = [canonical(p) for p in glob_lib.glob(pattern, recursive=True) if os.path.isfile(p)]
  return InputList([VideoInput(p) for p in paths if has_video_extension(p)], {})


def list_inputs(spec: str | Sequence[str], *, data_root: str | None = None, label_map_path: str | None = None,
                fmt: str = 'auto', split: str | None = None, split_id: int = 0,
                default_label_map: dict[str, int] | None = None, labels: bool = True) -> InputList:
  """Lists the videos of `spec` (list files, directories, globs, videos, official annotation files of
  `data_prep.datasets` or `tfds:` inputs, or a sequence of those), sorted by path, deduplicated.

  Local paths are canonical (`canonical`); one entry per real file (symlinks resolved).

  Args:
    spec: one `--input` value or several.
    data_root: base of relative paths in list files and of the videos of annotation files.
    label_map_path: JSON class list (`load_label_map`) to index class names by.
    fmt: one of `datasets.FORMATS`; 'auto' detects each input's format (`datasets.detect`).
    split, split_id: the split to read from an official annotation file or TFDS dataset.
    default_label_map: the map to use when `label_map_path` is not given and the inputs carry class names (the map
      of a split already written to the same dataset directory).
    labels: False = list files are read without their labels (for readers that need only the videos).

  Raises:
    ValueError: if a spec matches nothing, a label is out of range, or the same path appears with two labels.
  """
  if fmt not in datasets.FORMATS:
    raise ValueError(f'--format={fmt!r} is not one of {datasets.FORMATS}')
  specs = [spec] if isinstance(spec, str) else list(spec)
  label_map = load_label_map(label_map_path) if label_map_path else default_label_map
  videos: list[VideoInput] = []
  merged_map: dict[str, int] = dict(label_map or {})
  kinds: set[tuple[str, str, int]] = set()
  for s in specs:
    kind = datasets.detect(s) if fmt == 'auto' else fmt
    if kind == 'tfds':
      from data_prep import tfds_io
      found = tfds_io.list_videos(s, split=split)
    elif kind in datasets.OFFICIAL:
      found = datasets.read(s, kind, data_root=data_root, label_map_path=label_map_path, split=split,
                            split_id=split_id)
    elif any(ch in s for ch in '*?['):
      found = read_glob(s)
    elif isdir(s):
      found = read_directory(s, label_map)
    elif s.lower().endswith(LIST_EXTENSIONS):
      if not exists(s):
        raise ValueError(f'--input list file {s} does not exist')
      found = read_list_file(s, data_root, label_map, labels=labels)
    elif has_video_extension(s):
      found = InputList([VideoInput(canonical(s))], {})
    else:
      raise ValueError(f'--input={s!r} is not a directory, a glob, a list file ({", ".join(LIST_EXTENSIONS)}), a '
                       'video file, an official annotation file (--format) or tfds:<name>[/<config>]:<split>')
    kinds.add((found.dataset, found.split or (split or ''), found.split_id))
    for name, idx in found.label_map.items():
      if merged_map.setdefault(name, idx) != idx:
        raise ValueError(f'class {name!r} has index {merged_map[name]} in one input and {idx} in another; '
                         'pass --label_map to fix the mapping')
    videos += found.videos
  if len(kinds) > 1:
    raise ValueError(f'the --input values are of different datasets or splits {sorted(kinds)}; prepare each split '
                     'with its own command')
  by_file: dict[str, VideoInput] = {}
  for v in sorted(videos, key=lambda v: v.path):
    old = by_file.setdefault(_real(v.path), v)
    if old.label != v.label:
      what = v.path if old.path == v.path else f'{old.path} and {v.path} (the same file)'
      raise ValueError(f'{what} is listed with labels {old.label} and {v.label}; give each video one label')
  dataset, found_split, found_split_id = kinds.pop() if kinds else ('', split or '', 0)
  return InputList(sorted(by_file.values(), key=lambda v: v.path), merged_map, dataset=dataset,
                   split=found_split, split_id=found_split_id)
