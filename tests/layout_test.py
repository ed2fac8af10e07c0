"""The layout rules of docs/design.md §7, checked on the source: dependency direction, no import cycles, one switch
on `config.task`, one normalisation of the model input."""
import ast
import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ('m3video_jax', 'data_prep')


def modules() -> dict[str, str]:
  """`{dotted module name: path}` of every module of the two packages."""
  out = {}
  for package in PACKAGES:
    for root, _, files in os.walk(os.path.join(REPO, package)):
      for name in files:
        if name.endswith('.py'):
          path = os.path.join(root, name)
          dotted = os.path.relpath(path, REPO)[:-3].replace(os.sep, '.')
          out[dotted[:-len('.__init__')] if dotted.endswith('.__init__') else dotted] = path
  return out


def imports_of(path: str, known: set[str]) -> set[str]:
  """The package modules `path` imports anywhere (top level or inside functions)."""
  out = set()
  for node in ast.walk(ast.parse(open(path, encoding='utf-8').read())):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      # `from a.b import c`: the module a.b.c if there is one, else (a name defined in a.b) a.b.
      names = [f'{node.module}.{a.name}' if f'{node.module}.{a.name}' in known else node.module for a in node.names]
    else:
      continue
    for name in names:
      while name and name not in known:
        name = name.rpartition('.')[0]
      if name and name not in PACKAGES:
        out.add(name)
  return out


def graph() -> dict[str, set[str]]:
  mods = modules()
  return {m: imports_of(p, set(mods)) - {m} for m, p in mods.items()}


CONTRACT = ('m3video_jax.data.schema', 'm3video_jax.data.prep_outputs', 'm3video_jax.cli')


def test_data_prep_uses_only_the_contract_and_the_cli_of_the_package():
  bad = {m: sorted(d for d in deps if d.startswith('m3video_jax') and d not in CONTRACT)
         for m, deps in graph().items() if m.startswith('data_prep')}
  assert not {m: d for m, d in bad.items() if d}, bad
  # And the leaves it uses import nothing else of the package but the CLI convention.
  g = graph()
  assert g['m3video_jax.data.schema'] == set() and g['m3video_jax.cli'] == set()
  assert g['m3video_jax.data.prep_outputs'] == {'m3video_jax.cli'}


def test_the_files_beside_the_shards_are_named_in_one_module():
  """`manifest.json`, `failures.jsonl` and `label_map.json` are spelled only in `data/prep_outputs.py` (code; the
  docstrings and messages may name them)."""
  hits = []
  for m, path in modules().items():
    if m == 'm3video_jax.data.prep_outputs':
      continue
    tree = ast.parse(open(path, encoding='utf-8').read())
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)) and n.body
                  and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    for n in ast.walk(tree):
      if (isinstance(n, ast.Constant) and n.value in ('manifest.json', 'failures.jsonl', 'label_map.json')
          and id(n) not in docstrings):
        hits.append(f'{m}:{n.lineno}')
  assert not hits, hits


def test_the_package_reaches_data_prep_only_to_read_videos_for_features():
  users = {m: sorted(d for d in deps if d.startswith('data_prep'))
           for m, deps in graph().items() if m.startswith('m3video_jax')}
  expected = {'m3video_jax.interop.features': ['data_prep.inputs', 'data_prep.video_io']}
  assert {m: d for m, d in users.items() if d} == expected


def test_no_import_cycles():
  g = graph()
  cycles = []

  def visit(node, stack, done):
    if node in stack:
      cycles.append(stack[stack.index(node):] + [node])
      return
    if node in done:
      return
    for dep in sorted(g.get(node, ())):
      visit(dep, stack + [node], done)
    done.add(node)

  done: set[str] = set()
  for m in sorted(g):
    visit(m, [], done)
  assert not cycles, cycles[:5]


def test_only_the_task_registry_reads_config_task():
  """`get_task` is the switch: no `config.task` comparison or lookup anywhere else in the package."""
  pattern = re.compile(r"\b(config|c|cfg|self\.config)\.task\b\s*(==|!=|in\b)|\[(config|c)\.task\]|get\('task'\)")
  hits = []
  for m, path in modules().items():
    for n, line in enumerate(open(path, encoding='utf-8'), 1):
      if pattern.search(line) and m != 'm3video_jax.tasks':
        hits.append(f'{m}:{n}: {line.strip()}')
  assert not hits, hits


def test_video_is_normalised_in_one_function():
  """The ImageNet statistics are defined once, and `(x / 255 - mean) / std` is written once
  (`schema.normalize_video`)."""
  stats, formulas = [], []
  for m, path in modules().items():
    text = open(path, encoding='utf-8').read()
    if '0.485, 0.456, 0.406' in text:
      stats.append(m)
    if re.search(r'/ 255\.0?\)? *- *(tf\.constant\(|jnp\.asarray\(|np\.asarray\()?mean', text) or \
        re.search(r'255\.0\)\)? *- *.*mean.*\) */ *.*std', text):
      formulas.append(m)
  assert stats == ['m3video_jax.data.schema'], stats
  assert formulas in ([], ['m3video_jax.data.schema']), formulas


def test_config_building_blocks_import_only_the_leaves():
  """`config_lib` (and so every `configs/*.py`) imports no module that imports JAX: the target defaults live there, and
  `targets` imports `config_lib`, not the other way round."""
  assert graph()['m3video_jax.config_lib'] <= {'m3video_jax.cli', 'm3video_jax.data.schema'}


def test_schema_is_the_storage_contract_only():
  """Output-directory checks are the CLI convention's (`cli.writable_dir`); `schema.py` touches no file system."""
  tree = ast.parse(open(modules()['m3video_jax.data.schema'], encoding='utf-8').read())
  imported = {a.name.split('.')[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
  assert not imported & {'os', 'shutil', 'pathlib', 'tempfile'}, imported
  defined = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
  assert not defined & {'writable_dir', 'UnusableOutputError'}, defined


def test_only_sharding_reaches_into_jax_private_modules():
  """The coordination service (process-0 barrier, verdicts to the other processes) is reached in one place."""
  hits = [m for m, path in modules().items() if 'jax._src' in open(path, encoding='utf-8').read()]
  assert hits == ['m3video_jax.sharding'], hits


def test_config_checks_raise_the_one_config_error():
  """No config check raises a plain ValueError: `targets` checks through `cli.check_config` like every task."""
  text = open(modules()['m3video_jax.targets'], encoding='utf-8').read()
  validate = text[text.index('def validate('):]
  validate = validate[:validate.index('\ndef ')]
  assert 'raise ValueError' not in validate and '_check(' in validate
