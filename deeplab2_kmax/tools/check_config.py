"""Loads and validates experiment configs.

  python -m deeplab2_kmax.tools.check_config configs/coco/kmax_r50_os32.textproto ...

Exits 0 only if every file parses and validates. `${VAR}` placeholders still
unresolved in file paths are listed as notes, not errors (a config can be
checked before its data exists); with `--strict` they are errors, as they are
for training. Placeholders are filled from `--define NAME=VALUE` flags, then
from the environment; `--config_override` fragments are merged over each file
as the trainer merges them.

`--check_data` also reads and decodes every record of the train and eval
files (a config whose data cannot be found or read is then invalid); the
error names the file, the record and its byte offset.
"""

import sys
from typing import Dict
from typing import List
from typing import Sequence

from absl import app
from absl import flags

from deeplab2_kmax import config_loader
from deeplab2_kmax import config_text
from deeplab2_kmax.data import input_pipeline

FLAGS = flags.FLAGS


def _define_flags() -> None:
  """CLI flags; defined only when run as a program (modules share names)."""
  flags.DEFINE_multi_string(
      "define", [], "NAME=VALUE to fill ${NAME} placeholders (repeatable).")
  flags.DEFINE_multi_string(
      "config_override", [],
      "A textproto fragment merged over each file, as train's flag.")
  flags.DEFINE_bool(
      "strict", False,
      "Unresolved ${NAME} placeholders in file paths are errors, not notes.")
  flags.DEFINE_bool(
      "check_data", False,
      "Also read every record of the train and eval files (full check).")


def check_data(config) -> Dict[str, int]:
  """Records per dataset field; raises ConfigError naming a bad file."""
  counts = {}
  for field in ("train_dataset_options", "eval_dataset_options"):
    patterns = list(getattr(config, field).file_pattern)
    if not patterns:
      continue
    try:
      counts[field] = input_pipeline.validate_records(patterns)
    except (ValueError, OSError) as e:
      raise config_loader.ConfigError(f"{field}.file_pattern: {e}") from None
  return counts


def check_files(paths: Sequence[str], values: Dict[str, str],
                with_data: bool = False, strict: bool = False,
                overrides: Sequence[str] = ()) -> List[str]:
  """Returns one error message per invalid file; prints a line per file.

  With `with_data`, every record of the config's datasets is read too; with
  `strict`, unresolved placeholders in file paths are errors.
  """
  errors = []
  for path in paths:
    try:
      config = config_loader.load_config(path, values, overrides=overrides)
      notes = config_loader.unresolved_placeholders(config)
      if strict and notes:
        raise config_loader.ConfigError(
            config_text.describe_unresolved(path, notes))
      counts = check_data(config) if with_data else {}
    except config_loader.ConfigError as e:
      errors.append(str(e))
      print(f"INVALID {e}", file=sys.stderr)
      continue
    suffix = ""
    if notes:
      suffix = " (unresolved: " + ", ".join(
          f"{field}={value}" for field, value in sorted(notes.items())) + ")"
    if counts:
      suffix += " (records: " + ", ".join(
          f"{field}={count}" for field, count in counts.items()) + ")"
    print(f"OK {path}{suffix}")
  return errors


def main(argv):
  paths = argv[1:]
  if not paths:
    raise app.UsageError("Give one or more config files.")
  try:
    values = config_loader.parse_defines(FLAGS.define)
  except config_loader.ConfigError as e:
    print(f"ERROR {e}", file=sys.stderr)
    sys.exit(2)
  errors = check_files(paths, values, with_data=FLAGS.check_data,
                       strict=FLAGS.strict, overrides=FLAGS.config_override)
  if errors:
    print(f"{len(errors)} of {len(paths)} config(s) invalid.", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  _define_flags()
  app.run(main)
