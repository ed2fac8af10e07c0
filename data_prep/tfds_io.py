"""TensorFlow Datasets on both sides of data prep: installed TFDS video datasets as inputs, and the prepared shards
described as a TFDS dataset directory.

Input: `--input=tfds:<name>[/<config>]:<split>` (e.g. `tfds:ucf101/ucf101_1_256:train`) reads the videos of a TFDS
dataset that is already prepared in TFDS's data directory (`$TFDS_DATA_DIR`, default `~/tensorflow_datasets`; nothing
is downloaded). The launcher reads the split once for the labels (without decoding the videos); each video is then
read by its position (`<split>[i:i+1]`) where it is processed. Its first `Video` feature gives the frames and its
first `ClassLabel` the label and the class list.

Output: `write_metadata` writes `dataset_info.json` and `features.json` for the shards already written (what
`tfds.folder_dataset.write_metadata` writes, from the manifests' record counts), so `tfds.builder_from_directory(dir).as_dataset(split=...)` reads them: `frames` decode to
uint8 `[N, H, W, 3]`; the trajectory and HOG fields are the stored bytes (`m3video_jax.data.schema.decode` turns a
whole record into arrays).

Only these two features import `tensorflow-datasets`.
"""
from __future__ import annotations

import functools
import os
import re
from typing import Any

from data_prep.input_files import InputList, VideoInput
from m3video_jax.data import schema

PREFIX = 'tfds:'
_SPEC = re.compile(r'^tfds:([A-Za-z0-9_]+(?:/[A-Za-z0-9_.\-]+)?):([A-Za-z0-9_]+)$')
_PATH = re.compile(r'^(tfds:.+:[A-Za-z0-9_]+)\[(\d+)\]$')


def _tfds():
  try:
    import tensorflow_datasets as tfds
  except ImportError:
    raise ValueError('tfds: inputs and TFDS metadata need tensorflow-datasets (a dependency: pip install -e .)') \
        from None
  return tfds


def parse_spec(spec: str, split: str | None = None) -> tuple[str, str]:
  """`tfds:<name>[/<config>]:<split>` -> (name, split); `split` (from `--split`) must agree when given."""
  m = _SPEC.match(spec)
  if not m:
    raise ValueError(f'--input={spec!r}: expected tfds:<name>[/<config>]:<split>, e.g. tfds:ucf101/ucf101_1_256:train')
  if split and split != m.group(2):
    raise ValueError(f'--input={spec!r} names split {m.group(2)!r}, --split={split!r}')
  return m.group(1), m.group(2)


@functools.lru_cache(maxsize=8)
def _builder(name: str):
  tfds = _tfds()
  data_dir = os.environ.get('TFDS_DATA_DIR') or None
  try:
    return tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # TFDS raises several types for an unknown or unprepared dataset.
    # Its first line says what is wrong; for an unknown name the rest is TFDS's whole catalogue (hundreds of lines).
    first = (str(e).strip().splitlines() or [''])[0]
    raise ValueError(f'tfds:{name}: TFDS cannot open this dataset ({type(e).__name__}: {first}); check the name '
                     '(tfds.list_builders() lists them) and that it is prepared in '
                     f'{data_dir or "~/tensorflow_datasets"} ($TFDS_DATA_DIR)') from None


def _keys(name: str) -> tuple[str, str | None, Any]:
  """(video feature key, class-label key or None, class-label feature) of a builder."""
  tfds = _tfds()
  features = _builder(name).info.features
  video = [k for k, f in features.items() if isinstance(f, tfds.features.Video)]
  if not video:
    raise ValueError(f'tfds:{name} has no Video feature (its features: {sorted(features)}); it is not a video dataset')
  labels = [k for k, f in features.items() if isinstance(f, tfds.features.ClassLabel)]
  return video[0], (labels[0] if labels else None), (features[labels[0]] if labels else None)


def list_videos(spec: str, *, split: str | None = None) -> InputList:
  """The examples of a TFDS split as inputs `tfds:<name>:<split>[i]`, labelled by its `ClassLabel` feature."""
  name, split = parse_spec(spec, split)
  tfds = _tfds()
  builder = _builder(name)
  video_key, label_key, label_feature = _keys(name)
  try:
    ds = builder.as_dataset(split=split, shuffle_files=False,
                            decoders={video_key: tfds.decode.SkipDecoding()})
  except Exception as e:  # Not prepared in the data dir, unknown split, ...
    raise ValueError(f'--input={spec}: TFDS cannot read split {split!r} ({type(e).__name__}: {e}); prepare it '
                     'with TFDS first (tfds build / tfds.load(download=True)), under $TFDS_DATA_DIR') from None
  names = list(label_feature.names) if label_feature is not None else []
  videos = []
  for i, example in enumerate(tfds.as_numpy(ds)):
    path = f'{PREFIX}{name}:{split}[{i}]'
    if label_key is None:
      videos.append(VideoInput(path))
      continue
    label = int(example[label_key])
    if not 0 <= label < len(names):
      raise ValueError(f'{path}: label {label} is outside the {len(names)} classes of tfds:{name}')
    videos.append(VideoInput(path, label, names[label]))
  return InputList(videos, {n: i for i, n in enumerate(names)}, dataset=name.split('/')[0], split=split)


def is_tfds_path(path: str) -> bool:
  return path.startswith(PREFIX)


def read_frames(path: str):
  """The uint8 RGB frames `[N, H, W, 3]` of input `tfds:<name>:<split>[i]` (its label was read when listing)."""
  m = _PATH.match(path)
  if not m:
    raise ValueError(f'{path} is not a TFDS input path tfds:<name>:<split>[<index>]')
  name, split = parse_spec(m.group(1))
  index = int(m.group(2))
  tfds = _tfds()
  video_key, _, _ = _keys(name)
  ds = _builder(name).as_dataset(split=f'{split}[{index}:{index + 1}]', shuffle_files=False)
  examples = list(tfds.as_numpy(ds.take(index + 2)))
  # A reader that ignores the slice (TFDS's mock data) yields the whole split: then the example is at `index`.
  example = examples[0] if len(examples) == 1 else examples[index]
  return example[video_key]


# ---------------------------------------------------------------------------------------------------- metadata


def features(label_names: list[str] | None):
  """The TFDS features of a `schema` record (same keys and dtypes as `schema.tf_feature_spec`)."""
  tfds = _tfds()
  import tensorflow as tf

  f = tfds.features
  spec: dict[str, Any] = {}
  for key in schema._INT_SCALARS:  # pylint: disable=protected-access
    spec[key] = f.Scalar(tf.int64)
  if label_names:
    spec[schema.LABEL] = f.ClassLabel(names=label_names)
  for key in schema._BYTES_SCALARS:  # pylint: disable=protected-access
    spec[key] = f.Text()
  spec[schema.FPS] = f.Scalar(tf.float32)
  spec[schema.FRAMES] = f.Video(shape=(None, None, None, 3), encoding_format='jpeg')
  for key in (schema.TRAJ_DISP, schema.TRAJ_INSIDE, schema.HOG_MAP):
    spec[key] = f.Sequence(f.Tensor(shape=(), dtype=tf.string))
  spec[schema.HOG_SCALE] = f.Sequence(f.Scalar(tf.float32))
  return f.FeaturesDict(spec)


def write_metadata(dataset_dir: str, splits: dict[str, dict[str, Any]], label_names: list[str] | None,
                   template: str, description: str = '') -> None:
  """Describes the shards below `dataset_dir` as a TFDS dataset (`dataset_info.json`, `features.json`).

  Args:
    dataset_dir: the directory `tfds.builder_from_directory` is given.
    splits: `{split: manifest}` of every split written so far (their `shards` lists give the record counts).
    label_names: class names in index order (a `ClassLabel` label), or None for a plain int64 label.
    template: the shards' file names relative to `dataset_dir`, in TFDS's template syntax (`{SPLIT}`,
      `{SHARD_X_OF_Y}`).
    description: shown in the dataset info.
  """
  tfds = _tfds()
  from tensorflow_datasets.core import dataset_info as info_lib
  from tensorflow_datasets.core import file_adapters

  name = re.sub(r'[^a-z0-9_]', '_', os.path.basename(dataset_dir.rstrip('/')).lower()) or 'm3video'
  files = tfds.core.ShardedFileTemplate(data_dir=dataset_dir, template=template, dataset_name=name,
                                        filetype_suffix='tfrecord')
  infos = [tfds.core.SplitInfo(name=split, shard_lengths=[s['records'] for s in manifest['shards']],
                               num_bytes=sum(s['bytes'] for s in manifest['shards']),
                               filename_template=files.replace(split=split))
           for split, manifest in sorted(splits.items())]
  # What `tfds.folder_dataset.write_metadata` does, without its search for the shards (it looks only in
  # `dataset_dir` itself, not in the split folders).
  info = info_lib.DatasetInfo(
      builder=info_lib.DatasetIdentity(name=name, version=tfds.core.Version('1.0.0'), data_dir=dataset_dir,
                                       module_name=''),
      features=features(label_names),
      description=description or 'Videos with motion targets written by data_prep.extract (m3video_jax).')
  info.set_file_format(file_adapters.FileFormat.TFRECORD)
  info.set_splits(tfds.core.SplitDict(infos))
  info.write_to_directory(dataset_dir)
