"""The house's layers (docs/architecture.md, .importlinter): nothing imports upward, no package
has an import circle, and project imports sit at module top except the listed lazy ones."""

import ast
import os
import subprocess
import sys

from conftest import REPO

PACKAGES = ('analysis', 'attacks', 'compress', 'configs', 'data', 'gan', 'kernels', 'models',
            'report', 'store', 'sweeps', 'train', 'errors', 'util', 'lifecycle')
# Module-level functions allowed to import project modules inside them, with the reason.
LAZY = {
    # Mode modules are imported by main.py before flags are parsed: JAX, TensorFlow and the
    # libraries behind a mode load only when that mode runs.
    'analysis/modes.py', 'compress/modes.py', 'data/modes.py', 'gan/modes.py',
    'sweeps/modes.py', 'train/modes.py', 'main.py',
}


def test_import_linter_contracts_are_kept():
  lint = os.path.join(os.path.dirname(sys.executable), 'lint-imports')
  proc = subprocess.run([lint, '--no-cache'], cwd=REPO, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stdout[-3000:]
  assert 'Contracts: 2 kept, 0 broken.' in proc.stdout


def _project_imports(tree, inside_functions: bool):
  nodes = []
  for fn in ast.walk(tree):
    if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) == inside_functions:
      body = ast.walk(fn) if inside_functions else [fn]
      for node in body:
        if isinstance(node, ast.Import):
          names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
          names = [node.module or '']
        else:
          continue
        nodes += [(node.lineno, n) for n in names if n.split('.')[0] in PACKAGES]
  return nodes


def _sources():
  for top in PACKAGES + ('main',):
    path = os.path.join(REPO, top)
    if os.path.isfile(path + '.py'):
      yield f'{top}.py'
    for d, _, files in os.walk(path):
      for f in files:
        if f.endswith('.py'):
          yield os.path.relpath(os.path.join(d, f), REPO)


def test_project_imports_are_at_module_top_except_the_lazy_ones():
  inner = {}
  for rel in _sources():
    if rel in LAZY:
      continue
    with open(os.path.join(REPO, rel)) as f:
      found = _project_imports(ast.parse(f.read()), inside_functions=True)
    if found:
      inner[rel] = found
  assert not inner, inner


def test_errors_and_util_sit_below_every_package():
  for rel, allowed in (('errors.py', set()), ('util.py', {'errors'}),
                       ('lifecycle.py', {'errors'})):
    with open(os.path.join(REPO, rel)) as f:
      tree = ast.parse(f.read())
    names = {n.split('.')[0] for _, n in _project_imports(tree, inside_functions=False)}
    assert names <= allowed, (rel, names)
