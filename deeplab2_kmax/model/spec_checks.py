"""Checks shared by the model specs (no TensorFlow).

Each component of the model has a frozen dataclass, its spec, beside its
layer: the one place where its hyperparameters' defaults and checks are
written. A spec checks itself when it is created and raises `SpecError`,
which names every bad field; `deeplab2_kmax/model_options.py` turns those
field names into textproto paths for `check_config`.
"""

import dataclasses
from typing import Any
from typing import Iterable
from typing import List
from typing import Mapping
from typing import Tuple

Problem = Tuple[str, str]  # (spec field, message)


class SpecError(ValueError):
  """A spec with bad fields; `problems` holds (field, message) pairs."""

  def __init__(self, spec_name: str, problems: List[Problem]):
    self.spec_name = spec_name
    self.problems = list(problems)
    details = "; ".join(f"{field}: {message}" for field, message in problems)
    super().__init__(f"{spec_name}: {details}.")


class Checks:
  """Collects a spec's problems; `raise_if_any` raises them together."""

  def __init__(self, spec):
    self._spec = spec
    self.problems: List[Problem] = []

  def require(self, condition: bool, field: str, message: str):
    if not condition:
      self.problems.append((field, message))

  def one_of(self, field: str, allowed: Iterable[Any]):
    value = getattr(self._spec, field)
    allowed = tuple(allowed)
    self.require(value in allowed, field,
                 f"{value!r} is not one of {', '.join(map(repr, allowed))}")

  def positive(self, field: str):
    value = getattr(self._spec, field)
    self.require(value > 0, field, f"{value} must be > 0")

  def keep_probability(self, field: str):
    value = getattr(self._spec, field)
    self.require(0.0 < value <= 1.0, field, f"{value} is not in (0, 1]")

  def raise_if_any(self):
    if self.problems:
      raise SpecError(type(self._spec).__name__, self.problems)


def field_names(spec_class) -> Tuple[str, ...]:
  return tuple(f.name for f in dataclasses.fields(spec_class))


def split(fields: Mapping[str, Any], *spec_classes) -> List[dict]:
  """`fields` divided among `spec_classes` by field name.

  Raises:
    TypeError: a name is a field of none of them.
  """
  parts = [{k: v for k, v in fields.items()
            if k in field_names(spec_class)} for spec_class in spec_classes]
  unknown = set(fields) - {k for part in parts for k in part}
  if unknown:
    raise TypeError(f"unexpected keyword arguments {sorted(unknown)}; fields "
                    f"of {[c.__name__ for c in spec_classes]} are accepted")
  return parts


def resolve(spec_class, spec, fields: Mapping[str, Any]):
  """`spec` with `fields` replaced, or a new `spec_class(**fields)`.

  Lets a layer take its spec, its spec's fields by keyword, or both.
  """
  if spec is None:
    return spec_class(**fields)
  return dataclasses.replace(spec, **fields) if fields else spec
