r"""Trains and/or evaluates kMaX-DeepLab from a textproto config.

  python -m deeplab2_kmax.trainer.train --config_file=F --model_dir=D \
      --mode={train,eval,train_and_eval,continuous_eval} [--num_gpus=K] \
      [--master=TPU_ADDRESS] [--tpu=NAME] [--define NAME=VALUE ...] \
      [--config_override='trainer_options { steps_per_loop: 10 }' ...]

`${NAME}` placeholders in the config are filled from --define, then from the
environment; `--config_override` textproto fragments replace the file's
values for the fields they set (validated like the file). Re-running the
same command resumes from the last checkpoint.
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging

from deeplab2_kmax import config_loader
from deeplab2_kmax import config_text

FLAGS = flags.FLAGS


def _define_flags() -> None:
  """CLI flags; defined only when run as a program (modules share names)."""
  flags.DEFINE_string("config_file", None, "Experiment textproto.")
  flags.DEFINE_string("model_dir", None,
                      "Checkpoints and summaries go here.")
  flags.DEFINE_enum("mode", "train_and_eval",
                    ["train", "eval", "train_and_eval",
                     "continuous_eval"], "What to run.")
  flags.DEFINE_integer(
      "num_gpus", 0, "GPUs for MirroredStrategy (-1: every visible device).")
  flags.DEFINE_string("master", None, "TPU address (grpc://...).")
  flags.DEFINE_string("tpu", None, "TPU name.")
  flags.DEFINE_multi_string(
      "define", [], "NAME=VALUE to fill ${NAME} in the config.")
  flags.DEFINE_multi_string(
      "config_override", [],
      "A textproto fragment of ExperimentOptions merged over the file "
      "(repeatable; a repeated field it sets replaces the file's list).")
  flags.DEFINE_float(
      "lock_max_age_hours", 24.0,
      "A model_dir lock whose holder has not refreshed it for this long is "
      "taken over (a dead holder on this host is detected at once).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not FLAGS.config_file or not FLAGS.model_dir:
    raise app.UsageError("--config_file and --model_dir are required.")
  # TensorFlow's C++ INFO lines (CPU features, oneDNN, ...) stay out of the
  # way unless asked for; set before TensorFlow is imported.
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
  from deeplab2_kmax.trainer import console  # pylint: disable=g-import-not-at-top
  console.init_devices()
  console.quiet_library_logs()
  # Imported late so flag errors stay fast.
  from deeplab2_kmax.trainer import distribution  # pylint: disable=g-import-not-at-top
  from deeplab2_kmax.trainer import train_lib  # pylint: disable=g-import-not-at-top
  from deeplab2_kmax.trainer import trainer as trainer_lib  # pylint: disable=g-import-not-at-top
  try:
    config = config_loader.load_config(
        FLAGS.config_file, config_loader.parse_defines(FLAGS.define),
        overrides=FLAGS.config_override)
    missing = config_loader.unresolved_placeholders(config)
    if missing:
      raise config_loader.ConfigError(
          config_text.describe_unresolved(FLAGS.config_file, missing))
    strategy = distribution.get_strategy(FLAGS.num_gpus, FLAGS.master,
                                         FLAGS.tpu)
    metrics = train_lib.run_experiment(
        config, FLAGS.model_dir, FLAGS.mode, strategy,
        lock_max_age_s=FLAGS.lock_max_age_hours * 3600)
  except (config_loader.ConfigError, train_lib.ExperimentError,
          trainer_lib.NonFiniteLossError) as e:
    # Once, on stderr (absl's handler would print it a second time).
    print(f"ERROR: {e}", file=sys.stderr)
    sys.exit(1)
  for name, value in sorted(metrics.items()):
    logging.info("eval/%s = %.4f", name, value)


if __name__ == "__main__":
  _define_flags()
  app.run(main)
