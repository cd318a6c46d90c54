"""The training loop body (Orbit `StandardTrainer`)."""

import math
import time
from typing import Dict

from absl import logging
import orbit
import tensorflow as tf
import tf_keras

from deeplab2_kmax import common
from deeplab2_kmax.losses import max_deeplab_loss
from deeplab2_kmax.trainer import optimization

_GT_KEYS = (common.GT_SEMANTIC_KEY, common.GT_THING_ID_MASK_KEY,
            common.GT_THING_ID_CLASS_KEY, common.SEMANTIC_LOSS_WEIGHT_KEY)


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
    return losses, gradients

  def train_step(self, iterator):
    def step_fn(batch):
      losses, gradients = self._compute(batch)
      split = len(self._rest_vars)
      self.optimizer.apply_gradients(
          zip(gradients[:split], self._rest_vars))
      if self._backbone_vars:
        self.backbone_optimizer.apply_gradients(
            zip(gradients[split:], self._backbone_vars))
      for name, value in losses.items():
        self._loss_metrics[name].update_state(value)

    self._strategy.run(step_fn, args=(next(iterator),))
    self._global_step.assign_add(1)

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
