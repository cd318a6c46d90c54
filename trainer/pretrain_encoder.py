r"""Pretrains a config's pixel encoder by naming the things in its images.

  python -m deeplab2_kmax.trainer.pretrain_encoder --config_file=F \
      --output=DIR/encoder [--steps=1000] [--define NAME=VALUE ...]

The paper starts every kMaX-DeepLab from an ImageNet-pretrained backbone and
trains it at a tenth of the learning rate (`backbone_learning_rate_multiplier:
0.1`). Where no such checkpoint fits (the synthetic demo's small plain
encoder), this stands in for it on the experiment's own training data: a
linear classifier reads the encoder's endpoints, each averaged inside every
ground-truth thing mask, and the encoder and the classifier learn the things'
classes together. Same input pipeline (augmentation included) and input
normalisation as the experiment's training; Adam with cosine decay.

The result is a `tf.train.Checkpoint(encoder=...)`, which is what
`model_options.backbone.pretrained_weights` reads (docs/demo.md shows why the
demo needs it: its kMaX losses leave the pixel features blind to shape for
thousands of steps, while this loss teaches shape in hundreds).
"""

import dataclasses
import os
import sys
import time
from typing import Dict
from typing import Sequence

from absl import app
from absl import flags
from absl import logging
import tensorflow as tf
import tf_keras

from deeplab2_kmax import builders
from deeplab2_kmax import common
from deeplab2_kmax import config_loader
from deeplab2_kmax import config_text

FLAGS = flags.FLAGS

DEFAULT_ENDPOINTS = ("res2", "res3", "res4", "res5")


@dataclasses.dataclass(frozen=True)
class PretrainOptions:
  """How long and how fast the encoder is pretrained."""
  steps: int = 1000
  learning_rate: float = 1e-3
  endpoints: Sequence[str] = DEFAULT_ENDPOINTS
  log_every: int = 100
  # Held-out batches (the experiment's eval split) scored at the end.
  eval_batches: int = 25
  seed: int = 0


class PretrainError(ValueError):
  """The config or the output cannot be pretrained from / written to."""


def pooled_segment_features(endpoints: Dict[str, tf.Tensor],
                            thing_ids: tf.Tensor, max_things: int,
                            names: Sequence[str]) -> tf.Tensor:
  """[B, K, sum of C]: each endpoint averaged inside each thing's mask.

  `thing_ids` [B, H, W] holds 0..K-1 per thing pixel and -1 elsewhere; the
  masks are area-resized to each endpoint's resolution, so a thing smaller
  than one feature cell still gets its share of that cell.
  """
  masks = tf.one_hot(thing_ids, max_things, dtype=tf.float32)
  pooled = []
  for name in names:
    feature = tf.cast(endpoints[name], tf.float32)
    resized = tf.image.resize(masks, feature.shape[1:3], method="area")
    total = tf.einsum("bhwk,bhwc->bkc", resized, feature)
    area = tf.reduce_sum(resized, [1, 2])[..., None]
    pooled.append(total / tf.maximum(area, 1e-6))
  return tf.concat(pooled, -1)


class EncoderPretrainer:
  """The config's encoder, a linear classifier and their training step."""

  def __init__(self, config, options: PretrainOptions):
    self._options = options
    self._max_things = config.train_dataset_options.max_thing_id
    info = builders.dataset_info(config)
    # The encoder is taken from the full model so that its variables carry
    # the names the experiment's restore expects.
    self.encoder = builders.build_model(config).encoder
    self.head = tf_keras.layers.Dense(info.num_classes, name="segment_class")
    schedule = tf_keras.optimizers.schedules.CosineDecay(
        options.learning_rate, max(options.steps, 1))
    self.optimizer = tf_keras.optimizers.Adam(schedule)
    self._step = tf.function(self._train_step)
    self._predict_fn = tf.function(self._predict)

  def logits(self, images, thing_ids, training: bool):
    normalised = tf.cast(images, tf.float32) / 127.5 - 1.0
    endpoints = self.encoder(normalised, training=training)
    missing = [n for n in self._options.endpoints if n not in endpoints]
    if missing:
      raise PretrainError(
          f"endpoints {missing} are not among the encoder's "
          f"{sorted(endpoints)}")
    return self.head(pooled_segment_features(
        endpoints, thing_ids, self._max_things, self._options.endpoints))

  def _train_step(self, images, thing_ids, thing_classes):
    valid = thing_classes >= 0
    labels = tf.maximum(thing_classes, 0)
    weights = tf.cast(valid, tf.float32)
    with tf.GradientTape() as tape:
      logits = self.logits(images, thing_ids, training=True)
      losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
      count = tf.maximum(tf.reduce_sum(weights), 1.0)
      loss = tf.reduce_sum(losses * weights) / count
    variables = (self.encoder.trainable_variables +
                 self.head.trainable_variables)
    self.optimizer.apply_gradients(
        zip(tape.gradient(loss, variables), variables))
    right = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32),
                             labels), tf.float32)
    return loss, tf.reduce_sum(right * weights), tf.reduce_sum(weights)

  def _predict(self, images, thing_ids):
    return tf.argmax(self.logits(images, thing_ids, training=False), -1,
                     output_type=tf.int32)

  def accuracy(self, dataset) -> float:
    """Thing classification accuracy over `dataset` (inference mode)."""
    right = total = 0.0
    for batch in dataset:
      classes = batch[common.GT_THING_ID_CLASS_KEY].numpy()
      predicted = self._predict_fn(
          batch[common.IMAGE], batch[common.GT_THING_ID_MASK_KEY]).numpy()
      valid = classes >= 0
      right += float(((predicted == classes) & valid).sum())
      total += float(valid.sum())
    return right / max(total, 1.0)

  def train_step(self, batch):
    return self._step(batch[common.IMAGE], batch[common.GT_THING_ID_MASK_KEY],
                      batch[common.GT_THING_ID_CLASS_KEY])


def pretrain(config, output: str, options: PretrainOptions = PretrainOptions()
             ) -> Dict[str, float]:
  """Pretrains `config`'s encoder; writes it to `output` (a checkpoint prefix).

  Returns the last logged loss and training accuracy (things classified
  right in the last `log_every` steps), the images per second and the path.
  An existing checkpoint at `output` is never overwritten.
  """
  if tf.io.gfile.exists(output + ".index"):
    raise PretrainError(f"--output: {output} already holds a checkpoint; "
                        "choose another path or delete it")
  if options.steps < 1:
    raise PretrainError(f"steps must be positive, got {options.steps}")
  tf.random.set_seed(options.seed)
  pretrainer = EncoderPretrainer(config, options)
  dataset = builders.build_dataset(config, training=True, seed=options.seed)
  batch_size = config.train_dataset_options.batch_size
  result = {}
  # Sums stay tensors between log lines: no host sync per step.
  loss_sum = right = total = 0.0
  window_start = time.time()
  window_steps = 0
  for step, batch in enumerate(dataset.take(options.steps), start=1):
    loss, step_right, step_total = pretrainer.train_step(batch)
    loss_sum += loss
    right += step_right
    total += step_total
    window_steps += 1
    if step % options.log_every == 0 or step == options.steps:
      loss_sum, right, total = float(loss_sum), float(right), float(total)
      elapsed = time.time() - window_start
      result = {"step": step, "loss": loss_sum / window_steps,
                "accuracy": right / max(total, 1.0),
                "images_per_second": window_steps * batch_size / elapsed}
      logging.info(
          "pretrain step %d/%d: loss %.3f, thing accuracy %.3f, %.1f "
          "images/s", step, options.steps, result["loss"],
          result["accuracy"], result["images_per_second"])
      loss_sum = right = total = 0.0
      window_start = time.time()
      window_steps = 0
  if options.eval_batches:
    held_out = builders.build_dataset(config, training=False)
    result["eval_accuracy"] = pretrainer.accuracy(
        held_out.take(options.eval_batches))
    logging.info("pretrain: thing accuracy %.3f on %d held-out batches",
                 result["eval_accuracy"], options.eval_batches)
  tf.io.gfile.makedirs(os.path.dirname(output) or ".")
  result["path"] = tf.train.Checkpoint(encoder=pretrainer.encoder).write(
      output)
  logging.info("Pretrained encoder written to %s", result["path"])
  return result


def _define_flags() -> None:
  """CLI flags; defined only when run as a program (modules share names)."""
  flags.DEFINE_string("config_file", None, "Experiment textproto.")
  flags.DEFINE_string("output", None,
                      "Checkpoint prefix to write (backbone.pretrained_"
                      "weights reads it); never overwritten.")
  flags.DEFINE_integer("steps", PretrainOptions.steps, "Training steps.",
                       lower_bound=1)
  flags.DEFINE_float("learning_rate", PretrainOptions.learning_rate,
                     "Adam's initial learning rate (cosine decay to 0).")
  flags.DEFINE_list("endpoints", list(DEFAULT_ENDPOINTS),
                    "Encoder endpoints the classifier reads.")
  flags.DEFINE_multi_string(
      "define", [], "NAME=VALUE to fill ${NAME} in the config.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not FLAGS.config_file or not FLAGS.output:
    raise app.UsageError("--config_file and --output are required.")
  from deeplab2_kmax.trainer import console  # pylint: disable=g-import-not-at-top
  console.init_devices()
  console.quiet_library_logs()
  try:
    config = config_loader.load_config(
        FLAGS.config_file, config_loader.parse_defines(FLAGS.define))
    missing = {field: value for field, value in
               config_loader.unresolved_placeholders(config).items()
               if field.startswith("train_dataset_options")}
    if missing:
      raise config_loader.ConfigError(
          config_text.describe_unresolved(FLAGS.config_file, missing))
    pretrain(config, FLAGS.output, PretrainOptions(
        steps=FLAGS.steps, learning_rate=FLAGS.learning_rate,
        endpoints=tuple(FLAGS.endpoints)))
  except (config_loader.ConfigError, PretrainError) as e:
    print(f"ERROR: {e}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  _define_flags()
  app.run(main)
