"""Output locations given on a command line: checked before any work, with one-line errors naming the flag."""
from __future__ import annotations

import os


class UnusableOutputError(ValueError):
  """An output directory that is a file, cannot be created or is not writable; the message names the flag."""


def writable_dir(path: str, flag: str) -> str:
  """Creates the local directory `path` if needed and checks it by writing a probe file (`os.access` says yes to root
  on a read-only mount). URLs (`gs://...`) are returned unchecked.

  Returns:
    `path`.

  Raises:
    UnusableOutputError: `'{flag}={path} is a file, not a directory'`, `... cannot be created: <why>` or
      `... is not writable: <why>`.
  """
  if '://' in path:
    return path
  if os.path.exists(path) and not os.path.isdir(path):
    raise UnusableOutputError(f'{flag}={path} is a file, not a directory')
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise UnusableOutputError(f'{flag}={path} cannot be created: {e.strerror}') from None
  probe = os.path.join(path, f'.write-test-{os.getpid()}')
  try:
    with open(probe, 'wb'):
      pass
    os.remove(probe)
  except OSError as e:
    raise UnusableOutputError(f'{flag}={path} is not writable: {e.strerror}') from None
  return path
