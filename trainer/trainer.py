"""The training loop body (Orbit `StandardTrainer`).

With `save_prediction_images_steps` N > 0, every N steps the step's own
predictions on its first images are written to the train summaries (image
`predictions`: image | ground-truth semantic | predicted semantic | cluster
assignment, `visualization.training_panels`); no extra forward pass.
"""

import math
import time
from typing import Dict

from absl import logging
import orbit
import tensorflow as tf
import tf_keras

from deeplab2_kmax import builders
from deeplab2_kmax import common
from deeplab2_kmax import visualization
from deeplab2_kmax.losses import max_deeplab_loss
from deeplab2_kmax.trainer import optimization

_GT_KEYS = (common.GT_SEMANTIC_KEY, common.GT_THING_ID_MASK_KEY,
            common.GT_THING_ID_CLASS_KEY, common.SEMANTIC_LOSS_WEIGHT_KEY)
# What a prediction-image summary renders, and how many images.
_IMAGE_KEYS = (common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY,
               common.PRED_TRANSFORMER_CLASS_LOGITS_KEY)
MAX_SUMMARY_IMAGES = 3


class NonFiniteLossError(FloatingPointError):
  """Training produced NaN/Inf; the last good checkpoint is left untouched."""


class KMaXTrainer(orbit.StandardTrainer):
  """One optimisation step per batch; metrics per `steps_per_loop` steps."""

  def __init__(self, config, model, loss, dataset, strategy, global_step,
               model_dir: str):
    self._config = config
    self._model = model
    self._loss = loss
    self._strategy = strategy
    self._global_step = global_step
    self._model_dir = model_dir
    solver = config.trainer_options.solver_options
    self._solver = solver
    self._batch_size = config.train_dataset_options.batch_size
    self._total_steps = solver.training_number_of_steps
    with strategy.scope():
      self.optimizer, self.backbone_optimizer = (
          optimization.build_optimizers(solver))
      self._loss_metrics: Dict[str, object] = {}
    self._rest_vars, self._backbone_vars = optimization.split_variables(model)
    self._learning_rate = optimization.learning_rate_schedule(solver)
    self._image_steps = config.trainer_options.save_prediction_images_steps
    if self._image_steps > 0:
      info = builders.dataset_info(config)
      things, stuff = builders.class_ids(info)
      self._render = lambda *maps: visualization.training_panels(  # pylint: disable=g-long-lambda
          *maps, list(things) + list(stuff), info.ignore_label,
          info.colormap)
    self._compute = self._losses_and_gradients
    if config.trainer_options.jit_compile:
      self._compute = tf.function(self._losses_and_gradients,
                                  jit_compile=True)
    self._loop_start = None
    self._loop_start_step = 0
    self._run_start = time.time()
    self._run_start_step = None
    super().__init__(
        dataset, options=orbit.StandardTrainerOptions(
            use_tf_function=True, use_tf_while_loop=False))

  def create_metrics(self, names):
    """Creates the loss metrics before tracing (variables in strategy scope)."""
    with self._strategy.scope():
      for name in names:
        self._loss_metrics[name] = tf_keras.metrics.Mean(name)

  def train_loop_begin(self):
    for metric in self._loss_metrics.values():
      metric.reset_state()
    self._loop_start = time.time()
    self._loop_start_step = int(self._global_step.numpy())
    if self._run_start_step is None:
      self._run_start_step = self._loop_start_step

  def _losses_and_gradients(self, batch):
    """Forward, loss and gradients; XLA-compiled with trainer jit_compile."""
    y_true = {k: batch[k] for k in _GT_KEYS}
    with tf.GradientTape() as tape:
      outputs = self._model(batch[common.IMAGE], training=True)
      outputs = tf.nest.map_structure(lambda x: tf.cast(x, tf.float32),
                                      outputs)
      losses = self._loss(y_true, outputs)
      total = tf.nn.compute_average_loss(
          losses[max_deeplab_loss.TOTAL], global_batch_size=self._batch_size)
    gradients = tape.gradient(total, self._rest_vars + self._backbone_vars)
    if self._solver.use_gradient_clipping:
      gradients, _ = tf.clip_by_global_norm(gradients,
                                            self._solver.clip_gradient_norm)
    return losses, gradients, {key: outputs[key] for key in _IMAGE_KEYS}

  def _write_images(self, batch, predictions):
    """The `predictions` image summary of the batch's first images."""
    count = MAX_SUMMARY_IMAGES
    maps = [batch[common.IMAGE][:count], batch[common.GT_SEMANTIC_KEY][:count]]
    maps += [predictions[key][:count] for key in _IMAGE_KEYS]
    panels = tf.numpy_function(self._render, maps, tf.uint8)
    # Orbit records summaries every save_summaries_steps; these have their
    # own interval. No name scope: the tag is not prefixed with "cond/".
    with tf.summary.record_if(True), (
        tf.compat.v1.get_default_graph().name_scope(None)):
      return tf.summary.image("predictions", panels, step=self._global_step,
                              max_outputs=count)

  def train_step(self, iterator):
    def step_fn(batch):
      losses, gradients, predictions = self._compute(batch)
      split = len(self._rest_vars)
      self.optimizer.apply_gradients(
          zip(gradients[:split], self._rest_vars))
      if self._backbone_vars:
        self.backbone_optimizer.apply_gradients(
            zip(gradients[split:], self._backbone_vars))
      for name, value in losses.items():
        self._loss_metrics[name].update_state(value)
      return {key: batch[key] for key in (common.IMAGE,
                                          common.GT_SEMANTIC_KEY)}, predictions

    outputs = self._strategy.run(step_fn, args=(next(iterator),))
    self._global_step.assign_add(1)
    if self._image_steps > 0:
      batch, predictions = tf.nest.map_structure(
          lambda x: self._strategy.experimental_local_results(x)[0], outputs)
      tf.cond(self._global_step % self._image_steps == 0,
              lambda: self._write_images(batch, predictions),
              lambda: tf.constant(False))

  def train_loop_end(self):
    step = int(self._global_step.numpy())
    results = {name: metric.result() for name, metric in
               self._loss_metrics.items()}
    total = float(results[max_deeplab_loss.TOTAL])
    if not math.isfinite(total):
      raise NonFiniteLossError(
          f"Training loss became {total} at step {step}; stopping without "
          f"saving. The last good checkpoint in {self._model_dir} is kept; "
          "lower the learning rate or enable gradient clipping and resume.")
    elapsed = max(time.time() - self._loop_start, 1e-9)
    steps = max(step - self._loop_start_step, 1)
    images_per_second = steps * self._batch_size / elapsed
    run_rate = (step - self._run_start_step) / max(
        time.time() - self._run_start, 1e-9)
    eta = (self._total_steps - step) / max(run_rate, 1e-9)
    learning_rate = float(self._learning_rate(step))
    logging.info("step %d/%d  loss %.4f  lr %.2e  %.1f images/s  "
                 "%.3f s/step  ETA %dm%02ds", step, self._total_steps, total,
                 learning_rate, images_per_second, elapsed / steps,
                 eta // 60, eta % 60)
    results.update({"learning_rate": learning_rate,
                    "images_per_second": images_per_second,
                    "step_time": elapsed / steps})
    return results
