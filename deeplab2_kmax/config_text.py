"""The text layer of experiment configs: placeholders, --define, overrides.

Every command-line tool that reads a config shares these steps (before the
config is validated by `config_loader`):
1. `--define NAME=VALUE` items are parsed once, here (`parse_defines`); a
   malformed item is an error, never dropped.
2. `${NAME}` placeholders are filled from those values, then from the
   environment (`substitute_placeholders`).
3. `--config_override` texts (textproto fragments of `ExperimentOptions`,
   the convention of Model Garden's `--params_override`) are merged over the
   file (`apply_overrides`): a field they set replaces the file's value, a
   repeated field they set replaces the whole list, a message they open is
   merged field by field.
4. Placeholders still unresolved in file-path fields are listed by
   `unresolved_placeholders` (notes for `check_config`, errors under
   `--strict` and for training).
"""

import os
import re
from typing import Dict
from typing import Mapping
from typing import Optional
from typing import Sequence

from google.protobuf import descriptor
from google.protobuf import message as message_lib
from google.protobuf import text_format

from deeplab2_kmax.protos import config_pb2

PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class ConfigError(ValueError):
  """A config that cannot be parsed or is not valid; names file and field."""


def parse_defines(defines: Sequence[str]) -> Dict[str, str]:
  """`["NAME=VALUE", ...]` as a dict; a malformed item raises ConfigError."""
  values = {}
  for define in defines:
    name, sep, value = define.partition("=")
    if not sep or not PLACEHOLDER.fullmatch("${" + name + "}"):
      raise ConfigError(
          f"--define {define!r}: expected NAME=VALUE with NAME a letter or _ "
          "followed by letters, digits or _")
    values[name] = value
  return values


def substitute_placeholders(text: str,
                            values: Optional[Mapping[str, str]] = None,
                            environ: Optional[Mapping[str, str]] = None) -> str:
  """Replaces `${NAME}` by values[NAME], else environ[NAME], else leaves it."""
  values = values or {}
  environ = os.environ if environ is None else environ

  def replace(match):
    name = match.group(1)
    if name in values:
      return str(values[name])
    if name in environ:
      return environ[name]
    return match.group(0)

  return PLACEHOLDER.sub(replace, text)


def _replace_fields(target: message_lib.Message,
                    source: message_lib.Message) -> None:
  """Sets each field set in `source` on `target`; lists are replaced."""
  for field, value in source.ListFields():
    if field.is_repeated:
      target.ClearField(field.name)
      getattr(target, field.name).extend(value)
    elif field.type == descriptor.FieldDescriptor.TYPE_MESSAGE:
      _replace_fields(getattr(target, field.name), value)
    else:
      setattr(target, field.name, value)


def apply_overrides(config: config_pb2.ExperimentOptions,
                    overrides: Sequence[str],
                    values: Optional[Mapping[str, str]] = None) -> None:
  """Merges each `--config_override` text over `config`, in order.

  Placeholders in the overrides are filled like the file's. A text that does
  not parse raises ConfigError naming the override and the parser's message.
  """
  for number, text in enumerate(overrides, start=1):
    override = config_pb2.ExperimentOptions()
    try:
      text_format.Parse(substitute_placeholders(text, values), override)
    except text_format.ParseError as e:
      raise ConfigError(
          f"--config_override #{number} ({text!r}): cannot parse: {e}"
      ) from None
    _replace_fields(config, override)


def unresolved_placeholders(
    config: config_pb2.ExperimentOptions) -> Dict[str, str]:
  """Returns {field: value} for file-path fields still holding `${VAR}`."""
  paths = {
      "model_options.initial_checkpoint":
          [config.model_options.initial_checkpoint],
      "model_options.backbone.pretrained_weights":
          [config.model_options.backbone.pretrained_weights],
      "train_dataset_options.file_pattern":
          list(config.train_dataset_options.file_pattern),
      "eval_dataset_options.file_pattern":
          list(config.eval_dataset_options.file_pattern),
      "evaluator_options.override_save_dir":
          [config.evaluator_options.override_save_dir],
  }
  found = {}
  for field, field_values in paths.items():
    for value in field_values:
      if PLACEHOLDER.search(value):
        found[field] = value
  return found


def describe_unresolved(path: str, missing: Mapping[str, str]) -> str:
  """The error for unresolved placeholders (training, `--strict`)."""
  return (f"{path}: unresolved placeholders "
          + ", ".join(f"{field}: {value}"
                      for field, value in sorted(missing.items()))
          + " (pass --define NAME=VALUE or set the environment variable)")
