"""The files data prep writes beside its shards, and their readers: one contract for `data_prep` (which writes them:
`data_prep/extract.py`, `data_prep/shards.py`) and the input pipeline, the demo and classification (which read them).

A data prep output directory (docs/data_prep.md, "Outputs"):
  <prefix>-NNNNN-of-MMMMM.tfrecord   the shards; their records are `schema.py`'s
  manifest.json                      `MANIFEST`: the job's shards, record counts, config, code and schema version,
                                     storage figures (the keys the readers use are `MANIFEST_*` below)
  failures.jsonl                     `FAILURES`: one JSON line per input that failed (path, reason, message, shard)
  label_map.json                     `LABEL_MAP`: class name -> index (when the inputs have class names); a dataset's
                                     (all its splits) sits in the dataset directory and in each split's directory
  _work/                             data prep's resume state (`data_prep/shards.py`; nobody else reads it)

A folder without a manifest is valid (copied shards): readers then judge the shards by their first records. Only the
standard library here: local files are read directly, URLs (`gs://...`) through `tf.io.gfile`, imported then.
"""
from __future__ import annotations

import json
import os
from typing import Any

from m3video_jax import cli

MANIFEST = 'manifest.json'
FAILURES = 'failures.jsonl'
LABEL_MAP = 'label_map.json'
# Manifest keys the readers use (the writer, `data_prep.extract.write_manifest`, uses the same names).
MANIFEST_SHARDS = 'shards'  # [{MANIFEST_FILE: name in the folder, 'records': n, 'bytes': size}, ...]
MANIFEST_FILE = 'file'
MANIFEST_CONFIG = 'config'  # The PrepConfig as JSON (`data_prep.options.PrepConfig.to_json`).
MANIFEST_SCHEMA_VERSION = 'schema_version'


class UnreadableManifestError(cli.UserError, ValueError):
  """A manifest that cannot be parsed or lacks what its readers need; the message names it and how to rewrite it."""


def gfile():
  import tensorflow as tf  # gfile handles local paths and gs:// alike.

  return tf.io.gfile


def join(*parts: str) -> str:
  """`os.path.join` that also works for URLs (`gs://bucket/dir`)."""
  if '://' in parts[0]:
    return '/'.join([parts[0].rstrip('/')] + [p.strip('/') for p in parts[1:]])
  return os.path.join(*parts)


def _exists(path: str) -> bool:
  return gfile().exists(path) if '://' in path else os.path.exists(path)


def _open(path: str):
  return gfile().GFile(path) if '://' in path else open(path, encoding='utf-8')


def has_manifest(folder: str) -> bool:
  """Whether a finished data prep job wrote `folder` (its manifest is the last file a job writes)."""
  return _exists(join(folder, MANIFEST))


def unreadable(path: str, e: Exception) -> UnreadableManifestError:
  """The error for the manifest at `path`, which `e` says is unusable."""
  return UnreadableManifestError(f'{path} is not a readable data_prep manifest ({type(e).__name__}: {e}); re-run the '
                                 'data_prep command that wrote it (it resumes and rewrites the manifest)')


def read_manifest(folder: str) -> tuple[str, dict[str, Any]] | None:
  """`(path, parsed manifest)` of the manifest in `folder`; None when there is none.

  Raises:
    UnreadableManifestError: naming the manifest when it is not a JSON object.
  """
  path = join(folder, MANIFEST)
  if not _exists(path):
    return None
  try:
    with _open(path) as f:
      manifest = json.load(f)
  except ValueError as e:
    raise unreadable(path, e) from e
  if not isinstance(manifest, dict):
    raise unreadable(path, TypeError(f'a JSON {type(manifest).__name__}, not an object'))
  return path, manifest


def shard_entries(folder: str, path: str, manifest: dict[str, Any]) -> dict[str, dict[str, int]]:
  """`{shard path: {'records': n, 'bytes': size}}` of the shards a manifest (read from `path` in `folder`) lists.

  Raises:
    UnreadableManifestError: naming the manifest when an entry lacks a field.
  """
  try:
    return {join(folder, e[MANIFEST_FILE]): {'records': int(e['records']), 'bytes': int(e['bytes'])}
            for e in manifest.get(MANIFEST_SHARDS, [])}
  except (ValueError, KeyError, TypeError, AttributeError) as e:
    raise unreadable(path, e) from e


def prep_config(path: str, manifest: dict[str, Any]) -> dict[str, Any]:
  """The data prep settings a manifest records (`PrepConfig.to_json`), with its schema version when it has one.

  Raises:
    UnreadableManifestError: naming the manifest when the config is not an object.
  """
  config = manifest.get(MANIFEST_CONFIG) or {}
  if not isinstance(config, dict):
    raise unreadable(path, TypeError(f'its {MANIFEST_CONFIG!r} is a {type(config).__name__}, not an object'))
  if MANIFEST_SCHEMA_VERSION in manifest:
    config = {**config, MANIFEST_SCHEMA_VERSION: manifest[MANIFEST_SCHEMA_VERSION]}
  return config


def read_label_map(folder: str) -> tuple[str, dict[str, int]] | None:
  """`(path, {class name: index})` of the label map in `folder`; None when there is none."""
  path = join(folder, LABEL_MAP)
  if not _exists(path):
    return None
  with _open(path) as f:
    return path, json.load(f)


def num_classes(label_map: dict[str, int] | None) -> int:
  """Classes of a label map: its largest index + 1 (0 for none)."""
  return max((int(v) for v in (label_map or {}).values()), default=-1) + 1
