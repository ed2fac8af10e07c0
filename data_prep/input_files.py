"""The vocabulary of a job's inputs, shared by every input reader (`inputs`, `datasets`, `tfds_io`): one input video,
a listed set with its class list, file access for local paths and `tf.io.gfile` URLs alike, and label maps."""
from __future__ import annotations

import codecs
import dataclasses
import json
import os

from m3video_jax import cli

VIDEO_EXTENSIONS = ('.mp4', '.avi', '.mkv', '.webm', '.mov', '.m4v', '.mpg', '.mpeg', '.flv', '.wmv', '.3gp', '.ogv',
                    '.ts', '.mts', '.y4m')


@dataclasses.dataclass(frozen=True)
class VideoInput:
  """One input video. `label` is -1 and `label_name` '' when unlabelled."""
  path: str
  label: int = -1
  label_name: str = ''


@dataclasses.dataclass
class InputList:
  """The videos of a job and the class list their labels index.

  `dataset`/`split`/`split_id` are set by the official-format readers (`data_prep.datasets`) and by `--split`.
  """
  videos: list[VideoInput]
  label_map: dict[str, int]  # class name -> index; empty when the labels carry no names
  dataset: str = ''
  split: str = ''
  split_id: int = 0


class InputFileError(cli.UserError, ValueError):
  """An input or annotation file a user can fix (not UTF-8 text, an entry that is malformed or names a path outside
  `--data_root`); the message names the file and line. A `ValueError` too, as the readers' other refusals are."""


def is_remote(path: str) -> bool:
  return '://' in path


def gfile():
  import tensorflow as tf  # Only for remote inputs.
  return tf.io.gfile


def read_text(path: str, errors: str = 'strict') -> str:
  """The text of a list, annotation or label-map file: every reader reads its files here, the one way. UTF-8 with or
  without a byte-order mark (`utf-8-sig`: Excel's "CSV UTF-8" writes one, which would otherwise become part of the
  first header name or entry and silently change what the file says).

  Args:
    path: local path or `tf.io.gfile` URL.
    errors: 'strict', or 'replace' for a reader that only looks (format detection).

  Raises:
    InputFileError: naming the file and line of the first byte that is not UTF-8.
  """
  if is_remote(path):
    with gfile().GFile(path, 'rb') as f:
      data = f.read()
  else:
    with open(path, 'rb') as f:
      data = f.read()
  body = data[len(codecs.BOM_UTF8):] if data.startswith(codecs.BOM_UTF8) else data  # As `utf-8-sig` decodes.
  try:
    return body.decode('utf-8', errors)
  except UnicodeDecodeError as e:
    line = body.count(b'\n', 0, e.start) + 1
    raise InputFileError(f'{path} line {line}: byte 0x{body[e.start]:02x} is not UTF-8 text; save the file as UTF-8 '
                         '(or remove the byte)') from None


def canonical(path: str) -> str:
  """The spelling of a local path used everywhere (absolute, normalised, symlinks kept); URLs unchanged."""
  return path if is_remote(path) else os.path.normpath(os.path.abspath(path))


def has_video_extension(path: str) -> bool:
  return path.lower().endswith(VIDEO_EXTENSIONS)


def label_map_from_json(data, source: str) -> dict[str, int]:
  """A label map from parsed JSON: `{name: index}` (indices may be digit strings, as in SSV2's labels file) or a list
  of names (index = position).

  Raises:
    ValueError: naming `source` when it is neither, or two classes share an index, or an index is negative.
  """
  if isinstance(data, list):
    data = {str(name): i for i, name in enumerate(data)}
  if not isinstance(data, dict) or not all(isinstance(v, int) or (isinstance(v, str) and v.strip().isdigit())
                                           for v in data.values()):
    raise ValueError(f'label map {source} must be a JSON object {{name: index}} or a list of names')
  label_map = {str(k): int(v) for k, v in data.items()}
  values = list(label_map.values())
  dup = sorted({v for v in values if values.count(v) > 1})
  if dup or min(values, default=0) < 0:
    raise ValueError(f'label map {source}: every class needs its own index >= 0 '
                     + (f'(repeated: {dup[:5]})' if dup else f'(got {min(values)})'))
  return label_map


def load_label_map(path: str) -> dict[str, int]:
  """Reads a JSON label map (`label_map_from_json`)."""
  try:
    data = json.loads(read_text(path))
  except InputFileError:
    raise
  except OSError as e:
    raise ValueError(f'--label_map={path} cannot be read: {e.strerror or e}') from None
  except ValueError as e:
    raise ValueError(f'--label_map={path} is not valid JSON: {e}') from None
  return label_map_from_json(data, path)


def walk(root: str) -> list[str]:
  out = []
  if is_remote(root):
    for dirpath, _, files in gfile().walk(root):
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


def isdir(path: str) -> bool:
  return gfile().isdir(path) if is_remote(path) else os.path.isdir(path)


def exists(path: str) -> bool:
  return gfile().exists(path) if is_remote(path) else os.path.exists(path)
