"""Loads and validates experiment configs.

  python -m deeplab2_kmax.tools.check_config configs/coco/kmax_r50_os32.textproto ...

Exits 0 only if every file parses and validates. `${VAR}` placeholders still
unresolved in file paths are listed as notes, not errors (a config can be
checked before its data exists). Placeholders are filled from the
environment, and from `--define NAME=VALUE` flags.
"""

import sys
from typing import Dict
from typing import List
from typing import Sequence

from absl import app
from absl import flags

from deeplab2_kmax import config_loader

FLAGS = flags.FLAGS


def _define_flags() -> None:
  """CLI flags; defined only when run as a program (modules share names)."""
  flags.DEFINE_multi_string(
      "define", [], "NAME=VALUE to fill ${NAME} placeholders (repeatable).")


def parse_defines(defines: Sequence[str]) -> Dict[str, str]:
  values = {}
  for define in defines:
    name, sep, value = define.partition("=")
    if not sep or not name:
      raise config_loader.ConfigError(
          f"--define {define!r}: expected NAME=VALUE")
    values[name] = value
  return values


def check_files(paths: Sequence[str], values: Dict[str, str]) -> List[str]:
  """Returns one error message per invalid file; prints a line per file."""
  errors = []
  for path in paths:
    try:
      config = config_loader.load_config(path, values)
    except config_loader.ConfigError as e:
      errors.append(str(e))
      print(f"INVALID {e}", file=sys.stderr)
      continue
    notes = config_loader.unresolved_placeholders(config)
    suffix = ""
    if notes:
      suffix = " (unresolved: " + ", ".join(
          f"{field}={value}" for field, value in sorted(notes.items())) + ")"
    print(f"OK {path}{suffix}")
  return errors


def main(argv):
  paths = argv[1:]
  if not paths:
    raise app.UsageError("Give one or more config files.")
  try:
    values = parse_defines(FLAGS.define)
  except config_loader.ConfigError as e:
    print(f"ERROR {e}", file=sys.stderr)
    sys.exit(2)
  errors = check_files(paths, values)
  if errors:
    print(f"{len(errors)} of {len(paths)} config(s) invalid.", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  _define_flags()
  app.run(main)
