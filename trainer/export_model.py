r"""Exports a SavedModel (DeepLab2's signature), an ONNX or a TFLite model.

  python -m deeplab2_kmax.trainer.export_model --config_file=F \
      --checkpoint_path=C --output_path=O [--format=saved_model|onnx|tflite] \
      [--define NAME=VALUE ...]

saved_model (the default): `export_lib`, any image size in one graph.
onnx, tflite: `export_formats`, a folder with the model at the export crop
and `export.json`; `export_formats.ExportedModel` runs it on any image.
"""

import sys

from absl import app
from absl import flags

from deeplab2_kmax import config_loader
from deeplab2_kmax.trainer import export_formats
from deeplab2_kmax.trainer import export_lib

FLAGS = flags.FLAGS


def _define_flags() -> None:
  """CLI flags; defined only when run as a program (modules share names)."""
  flags.DEFINE_string("config_file", None, "Experiment textproto.")
  flags.DEFINE_string("checkpoint_path", None,
                      "Checkpoint prefix (e.g. model_dir/ckpt-N).")
  flags.DEFINE_string("output_path", None, "Output directory.")
  flags.DEFINE_enum("format", "saved_model", export_formats.FORMATS,
                    "saved_model: any image size; onnx / tflite: the network "
                    "and merging at the export crop (export_formats).")
  flags.DEFINE_multi_string("define", [], "NAME=VALUE placeholders.")
  flags.DEFINE_multi_string(
      "config_override", [],
      "A textproto fragment merged over the config, as train's flag.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not (FLAGS.config_file and FLAGS.checkpoint_path and FLAGS.output_path):
    raise app.UsageError(
        "--config_file, --checkpoint_path and --output_path are required.")
  try:
    config = config_loader.load_config(
        FLAGS.config_file, config_loader.parse_defines(FLAGS.define),
        validate_config=False, overrides=FLAGS.config_override)
    path = export_formats.export(config, FLAGS.checkpoint_path,
                                 FLAGS.output_path, FLAGS.format)
  except (config_loader.ConfigError, export_lib.ExportError) as e:
    print(f"ERROR: {e}", file=sys.stderr)
    sys.exit(1)
  kind = {"saved_model": "SavedModel", "onnx": "ONNX model",
          "tflite": "TFLite model"}[FLAGS.format]
  print(f"Wrote {kind} to {path}")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
