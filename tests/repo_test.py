"""The repository stands on its own: no text points outside it, and every `docs/design.md §N` citation names a section
that exists."""
import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKIP_DIRS = {'.git', '.venv', '__pycache__', 'm3video_jax.egg-info'}
TEXT = ('.py', '.md', '.txt', '.sh', '.ini', '.cfg', '.toml', '.json', '.yaml', '.yml')
OUTSIDE = re.compile(r'DESIGN §|REFERENCE_NOTES|STYLE\.md|FINDINGS\.md|\.\./shared|shared/(docs|paper)')


def text_files():
  for root, dirs, files in os.walk(REPO):
    dirs[:] = [d for d in dirs if d not in SKIP_DIRS]
    for name in files:
      if name.endswith(TEXT) or os.path.join(root, name).endswith(os.path.join('.ci', 'run')):
        yield os.path.join(root, name)


def test_nothing_cites_documents_outside_the_repository():
  me = os.path.abspath(__file__)
  found = [f'{os.path.relpath(path, REPO)}:{n}: {line.strip()}'
           for path in text_files() if path != me
           for n, line in enumerate(open(path, encoding='utf-8', errors='replace'), 1) if OUTSIDE.search(line)]
  assert not found, '\n'.join(found)


def test_design_citations_name_existing_sections():
  design = open(os.path.join(REPO, 'docs', 'design.md'), encoding='utf-8').read()
  sections = set(re.findall(r'^#{2,3} (\d+(?:\.\d+)?)\.? ', design, flags=re.M))
  assert {'1', '2', '3', '3.1', '3.5', '4', '5', '6'} <= sections, sections
  cited = {(os.path.relpath(path, REPO), m) for path in text_files()
           for m in re.findall(r'docs/design\.md §(\d+(?:\.\d+)?)', open(path, encoding='utf-8', errors='replace').read())}
  assert len(cited) >= 20
  missing = sorted(c for c in cited if c[1] not in sections)
  assert not missing, missing


def test_module_map_names_every_module_and_doc():
  """docs/design.md §7's map of the tree names every module and doc, and nothing that does not exist."""
  design = open(os.path.join(REPO, 'docs', 'design.md'), encoding='utf-8').read()
  block = design[design.index('## 7. Code layout'):]
  block = block[block.index('```') + 3:]
  block = block[:block.index('```')]
  listed, current = {}, None
  for line in block.splitlines():
    if line and not line.startswith(' '):
      current = line.split()[0]
      listed[current] = line[len(current):]
    elif current:
      listed[current] += line
  # Every folder of the real tree that holds modules (or docs) has a line, and that line names each of its files.
  folders = sorted({os.path.relpath(root, REPO) + '/' for root, _, files in os.walk(REPO)
                    if any(f.endswith('.py') and f != '__init__.py' for f in files)
                    and not os.path.relpath(root, REPO).startswith(('.', 'tests', 'build'))
                    and 'egg-info' not in root and '__pycache__' not in root})
  assert {'data_prep/', 'm3video_jax/', 'm3video_jax/data/', 'm3video_jax/models/', 'm3video_jax/interop/',
          'configs/', 'bench/', 'experiments/'} <= set(folders), folders
  missing, stale = [], []
  for folder, ext in [(f, '.py') for f in folders] + [('docs/', '.md')]:
    assert folder in listed, f'docs/design.md §7 has no line for {folder}'
    names = set(re.findall(r'(?<![\w/])[\w.]+' + re.escape(ext), listed[folder]))  # Not paths into other folders.
    present = {n for n in os.listdir(os.path.join(REPO, folder)) if n.endswith(ext) and n != '__init__.py'}
    missing += [folder + n for n in sorted(present - names)]
    stale += [folder + n for n in sorted(names - present)]
  assert not stale, f'docs/design.md §7 names files that do not exist: {stale}'
  assert not missing, f'docs/design.md §7 omits {missing}'
