r"""The newcomer demo: synthetic data -> train -> evaluate -> export -> render.

  python -m deeplab2_kmax.tools.demo --output_dir=demo_output

Runs the whole library on a laptop CPU in minutes, with the same code path as
the paper models (Sec. 4.1):
  1. builds the synthetic panoptic dataset (`data/build_synthetic_data`)
     into OUTPUT/data;
  2. trains the small kMaX-DeepLab of configs/synthetic/ into OUTPUT/model,
     continuing for a few hundred steps from the checkpoint shipped in
     configs/synthetic/checkpoint/ (a second run resumes from the last
     checkpoint in OUTPUT/model);
  3. evaluates PQ / AP / mIoU on the held-out split;
  4. exports a SavedModel to OUTPUT/saved_model;
  5. runs the SavedModel on a few validation images and writes, per image,
     OUTPUT/render/NAME.png (image | ground truth | prediction) and
     OUTPUT/render/NAME_clusters.png (the pixel-to-cluster assignment of every
     kMaX layer, paper Fig. 4: one colour per cluster centre, one panel per
     decoder layer).

With --from_scratch, step 2 starts without the checkpoint: the encoder is
pretrained on the training images (`trainer/pretrain_encoder.py`, the
paper's ImageNet step, 2000 steps) into OUTPUT/pretrained_encoder, then the
whole model trains for the config's 8000 steps (74 minutes on 2 CPU cores).
This is the command that made the shipped checkpoint (docs/demo.md).
"""

import json
import os
import sys
import time
from typing import Dict
from typing import List
from typing import Optional

from absl import app
from absl import flags
from absl import logging
import numpy as np

from deeplab2_kmax import config_loader
from deeplab2_kmax import visualization
from deeplab2_kmax.data import build_synthetic_data
from deeplab2_kmax.data import dataset_registry
from deeplab2_kmax.data import input_pipeline
from deeplab2_kmax.data import tfrecord
from deeplab2_kmax.trainer import console

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
DEFAULT_CONFIG = os.path.join(_REPO_ROOT, "configs", "synthetic",
                              "kmax_tiny_plain_os8.textproto")
# DEFAULT_CONFIG trained for 6000 steps from a pretrained encoder (how:
# docs/demo.md).
DEFAULT_CHECKPOINT = os.path.join(_REPO_ROOT, "configs", "synthetic",
                                  "checkpoint", "kmax_demo")
# Continuing from DEFAULT_CHECKPOINT: a short schedule that warms up again to
# a third of the config's rate (500 steps: PQ 66.1 -> 67.2, docs/demo.md).
CONTINUE_STEPS = 500
CONTINUE_LEARNING_RATE = 3e-4
CONTINUE_WARMUP_STEPS = 50
# Pretraining steps of the encoder with --from_scratch.
PRETRAIN_STEPS = 2000

FLAGS = flags.FLAGS


def _define_flags() -> None:
  """CLI flags; defined only when run as a program (modules share names)."""
  flags.DEFINE_string("output_dir", "demo_output",
                      "Where data, model, SavedModel and PNGs go.")
  flags.DEFINE_string("config_file", DEFAULT_CONFIG,
                      "Experiment textproto (${DATA_DIR} is set).")
  flags.DEFINE_integer("num_train", 2000, "Synthetic train images.",
                       lower_bound=1)
  flags.DEFINE_integer("num_val", 200, "Synthetic val images.", lower_bound=1)
  flags.DEFINE_integer("seed", 0, "Dataset seed.")
  flags.DEFINE_integer("num_render", 4,
                       "Validation images to render.", lower_bound=0)
  flags.DEFINE_integer(
      "training_steps", None, "Override trainer_options.solver_options."
      "training_number_of_steps (default: the config's with --from_scratch, "
      f"else {CONTINUE_STEPS}).", lower_bound=1)
  flags.DEFINE_bool(
      "from_scratch", False,
      "Pretrain the encoder and train the whole schedule instead of "
      "continuing from the shipped checkpoint (about an hour on 2 cores).")
  flags.DEFINE_string(
      "initial_checkpoint", DEFAULT_CHECKPOINT,
      "The checkpoint the demo continues from (without --from_scratch).")
  flags.DEFINE_integer("pretrain_steps", PRETRAIN_STEPS,
                       "Encoder pretraining steps with --from_scratch.",
                       lower_bound=0)
  flags.DEFINE_enum(
      "cross_attention", None, ["kmeans", "softmax"],
      "Override the transformer decoder's cross-attention (for the ablation).")
  flags.DEFINE_integer(
      "random_seed", None, "Override the experiment's random_seed.")
  flags.DEFINE_bool("skip_export", False,
                    "Stop after evaluation (used by ablations).")


class DemoError(RuntimeError):
  """A demo step failed; the message names the step and the path."""


def prepare_data(data_dir: str, num_train: int, num_val: int, seed: int):
  """Builds the synthetic dataset unless a complete copy is already there."""
  marker = os.path.join(data_dir, "demo_dataset.json")
  wanted = {"num_train": num_train, "num_val": num_val, "seed": seed}
  if os.path.exists(marker):
    with open(marker) as f:
      if json.load(f) == wanted:
        logging.info("Reusing the synthetic dataset in %s", data_dir)
        return
    raise DemoError(
        f"{data_dir} holds a synthetic dataset built with other settings "
        f"({marker}); choose another --output_dir or delete it")
  if os.path.isdir(data_dir) and os.listdir(data_dir):
    raise DemoError(f"{data_dir} exists and is not a demo dataset; choose "
                    "another --output_dir")
  logging.info("Building the synthetic dataset in %s", data_dir)
  build_synthetic_data.build(data_dir, num_train=num_train, num_val=num_val,
                             seed=seed)
  with open(marker, "w") as f:
    json.dump(wanted, f)


def _check_checkpoint(path: str) -> None:
  if not os.path.exists(path + ".index"):
    raise DemoError(f"--initial_checkpoint: no checkpoint at {path} "
                    "(.index missing)")


def load_demo_config(config_file: str, data_dir: str,
                     training_steps: Optional[int] = None,
                     cross_attention: Optional[str] = None,
                     random_seed: Optional[int] = None,
                     initial_checkpoint: Optional[str] = None,
                     pretrained_encoder: str = ""):
  """The demo experiment config with the data folder and overrides filled.

  With `initial_checkpoint` the model starts from it and trains a short
  schedule (CONTINUE_*; `training_steps` still overrides its length);
  `pretrained_encoder` fills ${PRETRAINED_ENCODER}.
  """
  config = config_loader.load_config(
      config_file, {"DATA_DIR": data_dir,
                    "PRETRAINED_ENCODER": pretrained_encoder})
  solver = config.trainer_options.solver_options
  if initial_checkpoint:
    _check_checkpoint(initial_checkpoint)
    config.model_options.initial_checkpoint = initial_checkpoint
    config.model_options.backbone.pretrained_weights = ""
    solver.training_number_of_steps = CONTINUE_STEPS
    solver.base_learning_rate = CONTINUE_LEARNING_RATE
    solver.warmup_steps = CONTINUE_WARMUP_STEPS
  if training_steps is not None:
    config.trainer_options.solver_options.training_number_of_steps = (
        training_steps)
  if cross_attention is not None:
    config.model_options.max_deeplab.transformer_decoder.cross_attention = (
        cross_attention)
  if random_seed is not None:
    config.random_seed = random_seed
  config_loader.validate(config, config_file)
  return config


def validation_examples(config, count: int) -> List[Dict[str, np.ndarray]]:
  """The first `count` validation images and panoptic labels, as stored."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  files = input_pipeline.list_files(
      list(config.eval_dataset_options.file_pattern))
  examples = []
  for record in tf.data.TFRecordDataset(files).take(count):
    example = tfrecord.decode_example(record)
    examples.append({"name": example["name"].numpy().decode(),
                     "image": example["image"].numpy(),
                     "panoptic": example["label"].numpy()})
  return examples


def render_examples(saved_model_dir: str, examples, info, render_dir: str,
                    num_centres: int) -> List[str]:
  """Runs the SavedModel on each example; writes the two PNGs per image."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  os.makedirs(render_dir, exist_ok=True)
  model = tf.saved_model.load(saved_model_dir)
  serve = model.signatures["serving_default"]
  written = []
  for example in examples:
    image = example["image"]
    outputs = serve(image=tf.constant(image))
    predicted = outputs["panoptic_pred"][0].numpy()
    panels = [image]
    for panoptic in (example["panoptic"], predicted):
      colored = visualization.colorize_panoptic(
          panoptic, info.panoptic_label_divisor, info.colormap,
          info.ignore_label)
      panels.append(visualization.overlay(
          image, colored,
          boundaries=visualization.segment_boundaries(panoptic)))
    path = os.path.join(render_dir, example["name"] + ".png")
    visualization.save_png(visualization.hstack_panels(panels), path)
    written.append(path)
    if "cluster_assignments" in outputs:
      # [L, h, w]: the argmax over centres that each kMaX layer used.
      assignments = outputs["cluster_assignments"][0].numpy()
      palette = visualization.cluster_palette(num_centres)
      strip = visualization.hstack_panels(
          [image] + [visualization.resize_nearest(palette[a], image.shape[:2])
                     for a in assignments])
      path = os.path.join(render_dir, example["name"] + "_clusters.png")
      visualization.save_png(strip, path)
      written.append(path)
  return written


def run_demo(output_dir: str, config_file: str = DEFAULT_CONFIG,
             num_train: int = 2000, num_val: int = 200, seed: int = 0,
             num_render: int = 4, training_steps: Optional[int] = None,
             cross_attention: Optional[str] = None,
             random_seed: Optional[int] = None,
             skip_export: bool = False,
             data_dir: Optional[str] = None,
             initial_checkpoint: Optional[str] = DEFAULT_CHECKPOINT,
             pretrain_steps: int = 0) -> Dict[str, object]:
  """Runs the five demo steps; returns the metrics and the output paths.

  `initial_checkpoint`: continue from it (None: train from scratch, after
  `pretrain_steps` of encoder pretraining when positive).
  """
  # Imported here so that `--help` and flag errors stay instant.
  from deeplab2_kmax.trainer import export_lib  # pylint: disable=g-import-not-at-top
  from deeplab2_kmax.trainer import train_lib  # pylint: disable=g-import-not-at-top

  start = time.time()
  output_dir = os.path.abspath(output_dir)
  data_dir = os.path.abspath(data_dir or os.path.join(output_dir, "data"))
  model_dir = os.path.join(output_dir, "model")
  saved_model_dir = os.path.join(output_dir, "saved_model")
  render_dir = os.path.join(output_dir, "render")

  if initial_checkpoint:
    _check_checkpoint(initial_checkpoint)  # Before minutes of data building.
  prepare_data(data_dir, num_train, num_val, seed)
  pretrained_encoder = ""
  if not initial_checkpoint and pretrain_steps > 0:
    pretrained_encoder = pretrain_encoder_once(config_file, data_dir,
                                               output_dir, pretrain_steps)
  config = load_demo_config(config_file, data_dir, training_steps,
                            cross_attention, random_seed, initial_checkpoint,
                            pretrained_encoder)
  info = dataset_registry.get(config.eval_dataset_options.dataset)

  metrics = train_lib.run_experiment(config, model_dir, mode="train_and_eval")
  result = {"metrics": metrics, "model_dir": model_dir,
            "seconds": time.time() - start}
  if skip_export:
    return result

  checkpoint = train_lib.latest_checkpoint(model_dir)
  if os.path.isdir(saved_model_dir) and os.listdir(saved_model_dir):
    # Never overwrite: keep the previous export beside the new one.
    saved_model_dir = os.path.join(
        output_dir, "saved_model_" + os.path.basename(checkpoint))
  if not (os.path.isdir(saved_model_dir) and os.listdir(saved_model_dir)):
    export_lib.export(config, checkpoint, saved_model_dir)
  result["saved_model"] = saved_model_dir
  result["renders"] = render_examples(
      saved_model_dir, validation_examples(config, num_render), info,
      render_dir,
      config.model_options.max_deeplab.transformer_decoder.num_mask_slots)
  result["seconds"] = time.time() - start
  return result


def pretrain_encoder_once(config_file: str, data_dir: str, output_dir: str,
                          steps: int) -> str:
  """Pretrains the config's encoder into OUTPUT/pretrained_encoder (once)."""
  from deeplab2_kmax.trainer import pretrain_encoder  # pylint: disable=g-import-not-at-top

  path = os.path.join(output_dir, "pretrained_encoder", "encoder")
  if os.path.exists(path + ".index"):
    logging.info("Reusing the pretrained encoder %s", path)
    return path
  config = load_demo_config(config_file, data_dir)
  pretrain_encoder.pretrain(config, path,
                            pretrain_encoder.PretrainOptions(steps=steps))
  return path


def _summary(result: Dict[str, object]) -> str:
  """The closing report; its last line is the one-line summary."""
  metrics = result["metrics"]
  lines = [""]
  if "saved_model" in result:
    lines.append(f"SavedModel: {result['saved_model']}")
  lines.append(f"Checkpoints and TensorBoard logs: {result['model_dir']}")
  scores = ", ".join(
      f"{label} {100 * metrics[key]:.1f}"
      for key, label in (("PQ", "PQ"), ("PQ_Th", "PQ^Th"), ("PQ_St", "PQ^St"),
                         ("AP_Mask", "AP"), ("mIoU", "mIoU"))
      if key in metrics)
  summary = [f"kMaX-DeepLab demo: {scores}",
             f"{result['seconds'] / 60:.1f} min"]
  if result.get("renders"):
    summary.append(f"renders: {os.path.dirname(result['renders'][0])} "
                   f"({len(result['renders'])} PNGs)")
  lines.append(" | ".join(summary))
  return "\n".join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  console.quiet_library_logs()
  try:
    result = run_demo(
        FLAGS.output_dir, FLAGS.config_file, FLAGS.num_train, FLAGS.num_val,
        FLAGS.seed, FLAGS.num_render, FLAGS.training_steps,
        FLAGS.cross_attention, FLAGS.random_seed, FLAGS.skip_export,
        initial_checkpoint=(None if FLAGS.from_scratch
                            else FLAGS.initial_checkpoint),
        pretrain_steps=FLAGS.pretrain_steps if FLAGS.from_scratch else 0)
  except (DemoError, config_loader.ConfigError) as e:
    print(f"ERROR: {e}", file=sys.stderr)
    sys.exit(1)
  print(_summary(result))


if __name__ == "__main__":
  # Before absl's app starts TensorFlow's devices: no CUDA error line on a
  # machine without a GPU.
  console.init_devices()
  _define_flags()
  app.run(main)
