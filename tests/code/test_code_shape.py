"""The library's shape limits: short functions, small constructors, no stray citations.

Read with `ast`, not by running anything: every function in the library
packages is at most 80 lines, every `__init__` takes at most 12 parameters
(besides `self`), and docstrings cite the paper or DeepLab2, never a design
file that is not part of the repository.
"""

import ast
import pathlib
import re

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
LIBRARY_PACKAGES = ("deeplab2_kmax", "trainer", "evaluation")
MAX_FUNCTION_LINES = 80
MAX_CONSTRUCTOR_PARAMETERS = 12


def _library_files():
  for package in LIBRARY_PACKAGES:
    for path in sorted((REPO_ROOT / package).rglob("*.py")):
      if not path.name.endswith("_pb2.py"):
        yield path


def _functions(path):
  tree = ast.parse(path.read_text(), filename=str(path))
  for node in ast.walk(tree):
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
      yield node


def _parameter_count(function) -> int:
  args = function.args
  names = [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs]
  if names and names[0] in ("self", "cls"):
    names = names[1:]
  return len(names) + bool(args.vararg) + bool(args.kwarg)


def _where(path, node) -> str:
  return f"{path.relative_to(REPO_ROOT)}:{node.lineno} {node.name}"


def test_the_checks_see_the_library():
  files = list(_library_files())
  assert len(files) > 50, files
  assert any(f.name == "kmax_deeplab.py" for f in files)


def test_no_function_is_longer_than_the_limit():
  too_long = [
      f"{_where(path, node)} ({node.end_lineno - node.lineno + 1} lines)"
      for path in _library_files() for node in _functions(path)
      if node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
  assert not too_long, "\n".join(too_long)


def test_no_constructor_takes_too_many_parameters():
  too_many = [
      f"{_where(path, node)} ({_parameter_count(node)} parameters)"
      for path in _library_files() for node in _functions(path)
      if node.name == "__init__"
      and _parameter_count(node) > MAX_CONSTRUCTOR_PARAMETERS]
  assert not too_many, "\n".join(too_many)


@pytest.mark.parametrize("source, expected", [
    ("def f(a, b, *c, d=1, **e):\n  pass\n", 5),
    ("class A:\n  def __init__(self, x, *, y):\n    pass\n", 2),
])
def test_parameter_count_counts_every_kind(tmp_path, source, expected):
  path = tmp_path / "m.py"
  path.write_text(source)
  (function,) = list(_functions(path))
  assert _parameter_count(function) == expected


def test_docstrings_do_not_cite_files_outside_the_repository():
  pattern = re.compile(r"\bSPEC\b")
  citing = [
      f"{path.relative_to(REPO_ROOT)}:{number}"
      for path in _library_files()
      for number, line in enumerate(path.read_text().splitlines(), 1)
      if pattern.search(line)]
  assert not citing, "\n".join(citing)
