r"""Exports a SavedModel for TF Serving (SPEC §8); see `export_lib`.

  python -m deeplab2_kmax.trainer.export_model --config_file=F \
      --checkpoint_path=C --output_path=O [--define NAME=VALUE ...]
"""

import os
import sys

from absl import app
from absl import flags

from deeplab2_kmax import config_loader
from deeplab2_kmax.trainer import export_lib

FLAGS = flags.FLAGS


def _define_flags() -> None:
  """CLI flags; defined only when run as a program (modules share names)."""
  flags.DEFINE_string("config_file", None, "Experiment textproto.")
  flags.DEFINE_string("checkpoint_path", None,
                      "Checkpoint prefix (e.g. model_dir/ckpt-N).")
  flags.DEFINE_string("output_path", None, "SavedModel directory.")
  flags.DEFINE_multi_string("define", [], "NAME=VALUE placeholders.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not (FLAGS.config_file and FLAGS.checkpoint_path and FLAGS.output_path):
    raise app.UsageError(
        "--config_file, --checkpoint_path and --output_path are required.")
  values = dict(os.environ)
  values.update(d.split("=", 1) for d in FLAGS.define if "=" in d)
  try:
    config = config_loader.load_config(FLAGS.config_file, values,
                                       validate_config=False)
    path = export_lib.export(config, FLAGS.checkpoint_path, FLAGS.output_path)
  except (config_loader.ConfigError, export_lib.ExportError) as e:
    print(f"ERROR: {e}", file=sys.stderr)
    sys.exit(1)
  print(f"Wrote SavedModel to {path}")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
