"""Process-tree helpers for the tests that kill jobs (Linux: read from /proc)."""
import os


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
