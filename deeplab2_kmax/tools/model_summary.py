r"""Parameters and FLOPs of a config's model (paper Tables 1 and 2).

  python -m deeplab2_kmax.tools.model_summary --config_file=CONFIG \
      [--crop_size=H,W] [--define NAME=VALUE ...]

Prints a per-part table (trainable parameters) and, as its LAST line, one
JSON object with `params_total`, `params_without_aux_semantic` (the paper's
count: without the training-only semantic branch) and `flops_multiply_adds`
(one inference forward pass at the crop size, semantic branch excluded,
post-processing excluded). FLOPs come from TensorFlow's profiler on the
frozen graph (float ops / 2), the method of reference/deeplab2_anchors.md.
"""

import json
import sys
from typing import Dict
from typing import Sequence

from absl import app
from absl import flags

from deeplab2_kmax import config_loader

FLAGS = flags.FLAGS


def _define_flags() -> None:
  """CLI flags; defined only when run as a program (modules share names)."""
  flags.DEFINE_string("config_file", None, "Experiment textproto.")
  flags.DEFINE_list(
      "crop_size", None, "H,W (default: the config's eval crop).")
  flags.DEFINE_multi_string("define", [], "NAME=VALUE placeholders.")


def count_float_ops(model, crop_size: Sequence[int],
                    include_semantic: bool = False) -> int:
  """Float operations of one batch-1 inference pass (TF profiler)."""
  height, width = (int(v) for v in crop_size)
  return count_function_float_ops(
      lambda x: model(x, training=False, return_semantic=include_semantic),
      [1, height, width, 3])


def count_function_float_ops(fn, input_shape: Sequence[int]) -> int:
  """Float operations of `fn(x)` for one float32 `x` of `input_shape`."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tensorflow.python.framework import convert_to_constants  # pylint: disable=g-import-not-at-top

  concrete = tf.function(fn).get_concrete_function(
      tf.TensorSpec(input_shape, tf.float32))
  frozen = convert_to_constants.convert_variables_to_constants_v2(concrete)
  options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
  options["output"] = "none"
  profile = tf.compat.v1.profiler.profile(graph=frozen.graph, options=options)
  return int(profile.total_float_ops)


def count_multiply_adds(model, crop_size: Sequence[int]) -> int:
  return count_float_ops(model, crop_size) // 2


def summarize(config, crop_size: Sequence[int]) -> Dict[str, object]:
  from deeplab2_kmax import builders  # pylint: disable=g-import-not-at-top

  model = builders.build_model(config, crop_size=crop_size)
  parts = model.parameter_groups()
  total = sum(parts.values())
  return {
      "parts": parts,
      "params_total": total,
      "params_without_aux_semantic": total - parts["semantic_branch"],
      "flops_multiply_adds": count_multiply_adds(model, crop_size),
      "crop_size": list(crop_size),
  }


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not FLAGS.config_file:
    raise app.UsageError("--config_file is required.")
  try:
    config = config_loader.load_config(
        FLAGS.config_file, config_loader.parse_defines(FLAGS.define),
        validate_config=False)
    if FLAGS.crop_size:
      if len(FLAGS.crop_size) != 2:
        raise ValueError("expected H,W")
      crop = tuple(int(v) for v in FLAGS.crop_size)
    else:
      crop = tuple(config.eval_dataset_options.crop_size)
  except (config_loader.ConfigError, ValueError) as e:
    print(f"ERROR: --crop_size / --config_file: {e}", file=sys.stderr)
    sys.exit(1)
  summary = summarize(config, crop)
  print(f"{'part':24s} {'parameters':>14s}")
  for part, count in summary["parts"].items():
    print(f"{part:24s} {count:14,d}")
  print(f"{'total':24s} {summary['params_total']:14,d}")
  print(f"{'without aux semantic':24s} "
        f"{summary['params_without_aux_semantic']:14,d}")
  print(f"multiply-adds at {crop[0]}x{crop[1]}: "
        f"{summary['flops_multiply_adds'] / 1e9:.1f} G")
  del summary["parts"]
  print(json.dumps(summary))


if __name__ == "__main__":
  _define_flags()
  app.run(main)
