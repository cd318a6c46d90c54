"""Which config fields the library reads: a static scan of its source.

`config_fields` walks every field of every message reachable from
`ExperimentOptions` (through the descriptors). `scan` parses the library's
Python files (not tests, not the generated protos, not `config_loader`, whose
reads are validation, not use) and collects the field reads it can see:

* typed reads: `X.field`, `X.HasField("field")`, `getattr(X, "field")`
  where the message type of `X` is known. Types are followed, inside each
  function, from `config` (an `ExperimentOptions`) through attribute chains,
  assignments (`solver = config.trainer_options.solver_options`), `a if c
  else b`, `list(...)` / `tuple(...)`, `for` loops and comprehensions over
  repeated fields, and `self.x = ...` within a class; a variable named like a
  message field (`loss_options`, `solver_options`), or listed in `HINTS`,
  has that field's type;
* untyped reads: `.field` on anything else, or the string "field" anywhere;
* path reads: the textproto paths `model_options.FIELD_PATHS` reads the
  model's fields from (each resolved through the descriptors, so a wrong
  path fails the scan), counted as typed reads.

`is_read` takes a typed read as proof. An untyped read is enough only for a
field whose name no other walked message uses; a field sharing its name
(`jit_compile` of the trainer, the evaluator and the export options) needs a
typed read of its own message.
"""

import ast
import dataclasses
import pathlib
from typing import Dict
from typing import Iterator
from typing import Optional
from typing import Set
from typing import Tuple

from deeplab2_kmax.protos import config_pb2

LIBRARY = ("deeplab2_kmax", "trainer", "evaluation")
NOT_SCANNED = ("deeplab2_kmax/config_loader.py",)
# Parameter names whose message type the scan cannot see from a call site.
HINTS = {"config": "ExperimentOptions", "solver": "SolverOptions"}
_WRAPPERS = ("list", "tuple", "iter", "sorted", "reversed")

Field = Tuple[str, str]  # (message name, field name)


def config_fields() -> Dict[Field, object]:
  """{(message name, field name): FieldDescriptor} for every reachable field."""
  fields, seen = {}, set()

  def walk(descriptor):
    if descriptor.full_name in seen:
      return
    seen.add(descriptor.full_name)
    for field in descriptor.fields:
      fields[(descriptor.name, field.name)] = field
      if field.message_type is not None:
        walk(field.message_type)

  walk(config_pb2.ExperimentOptions.DESCRIPTOR)
  return fields


@dataclasses.dataclass
class Reads:
  typed: Set[Field] = dataclasses.field(default_factory=set)
  untyped: Set[str] = dataclasses.field(default_factory=set)


# A type is a message descriptor, or ("repeated", descriptor).
class _Scanner(ast.NodeVisitor):
  """Collects field reads of one module."""

  def __init__(self, messages, reads: Reads, field_names: Set[str]):
    self._messages = messages  # name -> descriptor
    self._by_field = {}  # field name -> its message type (first found)
    for descriptor in messages.values():
      for field in descriptor.fields:
        if field.message_type is not None:
          self._by_field.setdefault(field.name, field.message_type)
    self._reads = reads
    self._field_names = field_names
    self._scopes = [{}]
    self._class_attrs = [{}]

  # Types.
  def _lookup(self, name: str):
    for scope in reversed(self._scopes):
      if name in scope:
        return scope[name]
    if name in HINTS:
      return self._messages[HINTS[name]]
    return self._by_field.get(name)

  def _type(self, node):
    if isinstance(node, ast.Name):
      return self._lookup(node.id)
    if isinstance(node, ast.Attribute):
      if isinstance(node.value, ast.Name) and node.value.id == "self":
        return self._class_attrs[-1].get(node.attr)
      base = self._type(node.value)
      if base is None or isinstance(base, tuple):
        return None
      field = base.fields_by_name.get(node.attr)
      if field is None or field.message_type is None:
        return None
      if field.is_repeated:
        return ("repeated", field.message_type)
      return field.message_type
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and (
        node.func.id in _WRAPPERS and node.args):
      return self._type(node.args[0])
    if isinstance(node, ast.IfExp):
      body, orelse = self._type(node.body), self._type(node.orelse)
      return body if body == orelse else None
    if isinstance(node, ast.BoolOp):
      types = {self._type(value) for value in node.values} - {None}
      return types.pop() if len(types) == 1 else None
    if isinstance(node, ast.Subscript):
      base = self._type(node.value)
      return base[1] if isinstance(base, tuple) else None
    return None

  def _bind(self, target, value_type, scope=None):
    scope = self._scopes[-1] if scope is None else scope
    if isinstance(target, ast.Name):
      scope[target.id] = value_type
    elif (isinstance(target, ast.Attribute) and
          isinstance(target.value, ast.Name) and target.value.id == "self"):
      self._class_attrs[-1][target.attr] = value_type

  # Reads.
  def _typed(self, receiver, name: str) -> bool:
    descriptor = self._type(receiver)
    if descriptor is not None and not isinstance(descriptor, tuple) and (
        name in descriptor.fields_by_name):
      self._reads.typed.add((descriptor.name, name))
      return True
    return False

  def visit_Attribute(self, node):
    if isinstance(node.ctx, ast.Load) and node.attr in self._field_names:
      if not self._typed(node.value, node.attr):
        self._reads.untyped.add(node.attr)
    self.generic_visit(node)

  def visit_Call(self, node):
    func = node.func
    strings = [a.value for a in node.args
               if isinstance(a, ast.Constant) and isinstance(a.value, str)]
    if isinstance(func, ast.Attribute) and func.attr in (
        "HasField", "ClearField", "WhichOneof") and strings:
      self._typed(func.value, strings[0])
    elif isinstance(func, ast.Name) and func.id == "getattr" and (
        len(node.args) >= 2 and strings):
      self._typed(node.args[0], strings[0])
    self.generic_visit(node)

  def visit_Constant(self, node):
    if isinstance(node.value, str) and node.value in self._field_names:
      self._reads.untyped.add(node.value)

  # Scopes.
  def visit_ClassDef(self, node):
    self._class_attrs.append({})
    # Twice: methods may use attributes that a later method assigns.
    for _ in range(2):
      for statement in node.body:
        self.visit(statement)
    self._class_attrs.pop()

  def _visit_function(self, node):
    self._scopes.append({})
    for statement in (node.body if isinstance(node.body, list)
                      else [node.body]):
      self.visit(statement)
    self._scopes.pop()

  visit_FunctionDef = visit_AsyncFunctionDef = _visit_function
  visit_Lambda = _visit_function

  def visit_Assign(self, node):
    self.visit(node.value)
    value_type = self._type(node.value)
    for target in node.targets:
      self._bind(target, value_type)
      self.visit(target)

  def visit_For(self, node):
    self.visit(node.iter)
    iter_type = self._type(node.iter)
    self._bind(node.target, iter_type[1] if isinstance(iter_type, tuple)
               else None)
    for statement in node.body + node.orelse:
      self.visit(statement)

  def _visit_comprehension(self, node):
    self._scopes.append({})
    for generator in node.generators:
      self.visit(generator.iter)
      iter_type = self._type(generator.iter)
      self._bind(generator.target, iter_type[1]
                 if isinstance(iter_type, tuple) else None)
      for condition in generator.ifs:
        self.visit(condition)
    for part in ("elt", "key", "value"):
      if getattr(node, part, None) is not None:
        self.visit(getattr(node, part))
    self._scopes.pop()

  visit_ListComp = visit_SetComp = visit_GeneratorExp = _visit_comprehension
  visit_DictComp = _visit_comprehension


def library_files(repo: pathlib.Path) -> Iterator[pathlib.Path]:
  for folder in LIBRARY:
    for path in sorted((repo / folder).rglob("*.py")):
      relative = path.relative_to(repo).as_posix()
      if relative not in NOT_SCANNED and not path.name.endswith("_pb2.py"):
        yield path


def scan(repo: pathlib.Path, fields: Optional[Dict[Field, object]] = None
         ) -> Reads:
  """Field reads in the library code under `repo`."""
  fields = config_fields() if fields is None else fields
  messages = {}
  for (message, _), field in fields.items():
    messages.setdefault(message, field.containing_type)
  names = {name for _, name in fields}
  reads = Reads()
  for path in library_files(repo):
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    _Scanner(messages, reads, names).visit(tree)
  reads.typed |= path_reads()
  return reads


def path_reads() -> Set[Field]:
  """The fields on the paths `model_options` reads the model's specs from.

  Raises:
    KeyError: a path names no field.
  """
  from deeplab2_kmax import model_options  # pylint: disable=g-import-not-at-top
  reads = set()
  for paths in model_options.FIELD_PATHS.values():
    for path in paths.values():
      descriptor = config_pb2.ExperimentOptions.DESCRIPTOR
      for name in path.lstrip("*").split("."):
        field = descriptor.fields_by_name[name]
        reads.add((descriptor.name, name))
        descriptor = field.message_type
  return reads


def is_read(field: Field, reads: Reads, fields: Dict[Field, object]) -> bool:
  """A typed read, or an untyped one of a name no other message uses."""
  if field in reads.typed:
    return True
  shared = sum(1 for _, name in fields if name == field[1]) > 1
  return not shared and field[1] in reads.untyped
