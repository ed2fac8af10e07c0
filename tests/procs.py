"""Helpers for the tests that start processes: process trees for the tests that kill jobs (Linux: read from /proc),
the XLA flags of a child JAX process."""
import os


def xla_flags(devices: int) -> str:
  """The session's XLA flags (tests/conftest.py) with `devices` simulated CPU devices (the last of a repeated flag
  wins), for a child process's `XLA_FLAGS`."""
  return os.environ.get('XLA_FLAGS', '') + f' --xla_force_host_platform_device_count={devices}'


def alive(pid: int) -> bool:
  """Whether `pid` exists and is not a zombie."""
  try:
    with open(f'/proc/{pid}/stat') as f:
      stat = f.read()
  except OSError:
    return False
  return stat[stat.rindex(')') + 2] != 'Z'


def descendants(pid: int) -> list[int]:
  """Pids of every living descendant of `pid`."""
  children: dict[int, list[int]] = {}
  for entry in os.listdir('/proc'):
    if not entry.isdigit():
      continue
    try:
      with open(f'/proc/{entry}/stat') as f:
        stat = f.read()
    except OSError:
      continue
    fields = stat[stat.rindex(')') + 2:].split()
    if fields[0] != 'Z':
      children.setdefault(int(fields[1]), []).append(int(entry))
  out, todo = [], [pid]
  while todo:
    for child in children.get(todo.pop(), []):
      out.append(child)
      todo.append(child)
  return out
