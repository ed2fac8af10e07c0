"""Lists the input videos of a job: a CSV/list file, a directory of class folders, or a glob (local or `tf.io.gfile`).

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
import dataclasses
import glob as glob_lib
import io
import json
import os
from collections.abc import Sequence

VIDEO_EXTENSIONS = ('.mp4', '.avi', '.mkv', '.webm', '.mov', '.m4v', '.mpg', '.mpeg', '.flv', '.wmv', '.3gp', '.ogv',
                    '.ts', '.mts', '.y4m')
LIST_EXTENSIONS = ('.csv', '.txt', '.lst', '.list', '.tsv')


@dataclasses.dataclass(frozen=True)
class VideoInput:
  """One input video. `label` is -1 and `label_name` '' when unlabelled."""
  path: str
  label: int = -1
  label_name: str = ''


@dataclasses.dataclass
class InputList:
  videos: list[VideoInput]
  label_map: dict[str, int]  # class name -> index; empty when the labels carry no names


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


def _is_remote(path: str) -> bool:
  return '://' in path


def _gfile():
  import tensorflow as tf  # Only for remote inputs.
  return tf.io.gfile


def _read_text(path: str) -> str:
  if _is_remote(path):
    with _gfile().GFile(path, 'r') as f:
      return f.read()
  with open(path, encoding='utf-8') as f:
    return f.read()


def canonical(path: str) -> str:
  """The spelling of a local path used everywhere (absolute, normalised, symlinks kept); URLs unchanged."""
  return path if _is_remote(path) else os.path.normpath(os.path.abspath(path))


def _real(path: str) -> str:
  """The file a path names (symlinks resolved): the de-duplication key."""
  return path if _is_remote(path) else os.path.realpath(path)


def _join(root: str, path: str) -> str:
  if _is_remote(path) or os.path.isabs(path) or not root:
    return canonical(path)
  return root.rstrip('/') + '/' + path if _is_remote(root) else canonical(os.path.join(root, path))


def has_video_extension(path: str) -> bool:
  return path.lower().endswith(VIDEO_EXTENSIONS)


def load_label_map(path: str) -> dict[str, int]:
  """Reads a JSON `{class name: index}` map (or a JSON list of names, index = position)."""
  data = json.loads(_read_text(path))
  if isinstance(data, list):
    data = {str(name): i for i, name in enumerate(data)}
  if not isinstance(data, dict) or not all(isinstance(v, int) for v in data.values()):
    raise ValueError(f'label map {path} must be a JSON object {{name: int}} or a list of names')
  return {str(k): int(v) for k, v in data.items()}


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
                   label_map: dict[str, int] | None = None) -> InputList:
  """Parses a CSV/list file (see the module docstring)."""
  root = data_root if data_root is not None else os.path.dirname(path)
  rows = []
  for n, raw in enumerate(_read_text(path).splitlines()):
    line = raw.strip()
    if not line or line.startswith('#'):
      continue
    video, label = _split_line(line)
    if n == 0 and video.lower() in ('path', 'video', 'filename', 'file') and label.lower() in ('label', 'class', ''):
      continue  # header
    rows.append((_join(root, video), label))
  label_map = _resolve_label_map({lab for _, lab in rows if lab and not _is_int(lab)}, label_map, path,
                                 'class names')
  index_to_name = {v: k for k, v in label_map.items()}
  videos = []
  for video, lab in rows:
    if not lab:
      videos.append(VideoInput(video))
    elif _is_int(lab):
      videos.append(VideoInput(video, int(lab), index_to_name.get(int(lab), '')))
    else:
      videos.append(VideoInput(video, label_map[lab], lab))
  return InputList(videos, dict(label_map))


def _is_int(text: str) -> bool:
  try:
    int(text)
    return True
  except ValueError:
    return False


def _walk(root: str) -> list[str]:
  out = []
  if _is_remote(root):
    for dirpath, _, files in _gfile().walk(root):
      out += [dirpath.rstrip('/') + '/' + f for f in files]
  else:
    seen_dirs = set()
    for dirpath, dirnames, files in os.walk(root, followlinks=True):
      real = os.path.realpath(dirpath)
      if real in seen_dirs:  # A symlink back into a directory already walked (a loop, or a second link to it).
        dirnames[:] = []
        continue
      seen_dirs.add(real)
      dirnames.sort()  # Deterministic: which spelling of a linked directory is walked first does not depend on the OS.
      out += [os.path.join(dirpath, f) for f in files]
  return out


def read_directory(root: str, label_map: dict[str, int] | None = None) -> InputList:
  """Lists the video files below `root`; the first sub-folder level names the class."""
  videos_by_class: list[tuple[str, str]] = []
  root_clean = root.rstrip('/') if _is_remote(root) else canonical(root)
  for path in _walk(root_clean):
    if not has_video_extension(path):
      continue
    rel = path[len(root_clean):].lstrip('/')
    parts = rel.split('/')
    videos_by_class.append((path, parts[0] if len(parts) > 1 else ''))
  label_map = _resolve_label_map({c for _, c in videos_by_class if c}, label_map, root, 'class folders')
  videos = [VideoInput(p, label_map[c], c) if c else VideoInput(p) for p, c in videos_by_class]
  return InputList(videos, dict(label_map))


def read_glob(pattern: str) -> InputList:
  if _is_remote(pattern):
    paths = _gfile().glob(pattern)
  else:
    paths = [canonical(p) for p in glob_lib.glob(pattern, recursive=True) if os.path.isfile(p)]
  return InputList([VideoInput(p) for p in paths if has_video_extension(p)], {})


def list_inputs(spec: str | Sequence[str], *, data_root: str | None = None,
                label_map_path: str | None = None) -> InputList:
  """Lists the videos of `spec` (a list file, a directory, a glob, or a sequence of those), sorted by path, deduplicated.

  Local paths are canonical (`canonical`); one entry per real file (symlinks resolved).

  Raises:
    ValueError: if `spec` matches nothing of the three kinds, or the same path appears with two different labels.
  """
  specs = [spec] if isinstance(spec, str) else list(spec)
  label_map = load_label_map(label_map_path) if label_map_path else None
  videos: list[VideoInput] = []
  merged_map: dict[str, int] = dict(label_map or {})
  for s in specs:
    if any(ch in s for ch in '*?['):
      found = read_glob(s)
    elif _isdir(s):
      found = read_directory(s, label_map)
    elif s.lower().endswith(LIST_EXTENSIONS):
      if not _exists(s):
        raise ValueError(f'--input list file {s} does not exist')
      found = read_list_file(s, data_root, label_map)
    elif has_video_extension(s):
      found = InputList([VideoInput(canonical(s))], {})
    else:
      raise ValueError(f'--input={s!r} is not a directory, a glob, a list file ({", ".join(LIST_EXTENSIONS)}) '
                       'or a video file')
    for name, idx in found.label_map.items():
      if merged_map.setdefault(name, idx) != idx:
        raise ValueError(f'class {name!r} has index {merged_map[name]} in one input and {idx} in another; '
                         'pass --label_map to fix the mapping')
    videos += found.videos
  by_file: dict[str, VideoInput] = {}
  for v in sorted(videos, key=lambda v: v.path):
    old = by_file.setdefault(_real(v.path), v)
    if old.label != v.label:
      what = v.path if old.path == v.path else f'{old.path} and {v.path} (the same file)'
      raise ValueError(f'{what} is listed with labels {old.label} and {v.label}; give each video one label')
  return InputList(sorted(by_file.values(), key=lambda v: v.path), merged_map)


def _isdir(path: str) -> bool:
  return _gfile().isdir(path) if _is_remote(path) else os.path.isdir(path)


def _exists(path: str) -> bool:
  return _gfile().exists(path) if _is_remote(path) else os.path.exists(path)
