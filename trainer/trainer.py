"""The training loop body (Orbit `StandardTrainer`).

With `save_prediction_images_steps` N > 0, every N steps the step's own
predictions on its first images are written to the train summaries (image
`predictions`: image | ground-truth semantic | predicted semantic | cluster
assignment, `visualization.training_panels`); no extra forward pass.

Non-finite guard. Every step checks, in the graph and on every replica, the
total loss, the gradients and the inputs of the Hungarian matching cost (the
final mask and class logits: the cost is finite exactly when they are); the
flags are summed over replicas, so all replicas take the same decision. A
non-finite step applies no update (the optimiser step sits in a `tf.cond` in
cross-replica context) and is recorded in variables the host reads in
`train_loop_end`, which Orbit calls before it saves a checkpoint: the run
stops there with `NonFiniteLossError` naming the step and the quantities,
and nothing is saved. The steps left in that loop apply nothing either. With
`trainer_options.max_skipped_non_finite_steps` N > 0 the first N such steps
are skipped instead (no update, counted in the train summary
`skipped_non_finite_steps`); the next one stops the run. Non-finite logits
are zeroed before the loss so that the matchers never see them (SciPy would
raise, the in-graph Hungarian would loop on NaN).
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
from deeplab2_kmax.losses import matching
from deeplab2_kmax.losses import max_deeplab_loss
from deeplab2_kmax.trainer import checkpoint_guard
from deeplab2_kmax.trainer import console
from deeplab2_kmax.trainer import optimization

_GT_KEYS = (common.GT_SEMANTIC_KEY, common.GT_THING_ID_MASK_KEY,
            common.GT_THING_ID_CLASS_KEY, common.SEMANTIC_LOSS_WEIGHT_KEY)
# What a prediction-image summary renders, and how many images.
_IMAGE_KEYS = (common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY,
               common.PRED_TRANSFORMER_CLASS_LOGITS_KEY)
MAX_SUMMARY_IMAGES = 3
# The checked quantities, in the order of the per-step flags (bit i of the
# recorded kind is quantity i).
QUANTITIES = ("loss", "gradients", "matching cost")
SKIPPED_SUMMARY = "skipped_non_finite_steps"
_GRADIENTS_BIT = 2 ** QUANTITIES.index("gradients")
# Dynamic loss scaling (mixed_float16), as Keras' LossScaleOptimizer: start
# at 2^15, halve on an overflow (the step is not applied), double after this
# many steps without one.
INITIAL_LOSS_SCALE = 2.0 ** 15
LOSS_SCALE_GROWTH_STEPS = 2000

# The library's error for NaN/Inf in training (defined with the checkpoint
# guard so that the host matcher can raise it too).
NonFiniteLossError = checkpoint_guard.NonFiniteLossError


def _all_finite(tensors) -> tf.Tensor:
  return tf.reduce_all(tf.stack(
      [tf.reduce_all(tf.math.is_finite(t)) for t in tensors if t is not None]))


def _divide(gradient, scale):
  """gradient / scale, for dense and sparse (gather) gradients."""
  if gradient is None:
    return None
  if isinstance(gradient, tf.IndexedSlices):
    return tf.IndexedSlices(gradient.values / scale, gradient.indices,
                            gradient.dense_shape)
  return gradient / scale


def _add_gradients(a, b):
  """a + b; sparse gradients (gathers) are concatenated, as one batch's are."""
  if a is None:
    return None
  if isinstance(a, tf.IndexedSlices):
    return tf.IndexedSlices(tf.concat([a.values, b.values], axis=0),
                            tf.concat([a.indices, b.indices], axis=0),
                            a.dense_shape)
  return a + b


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
    self._accumulation_steps = max(
        config.trainer_options.gradient_accumulation_steps, 1)
    self._total_steps = solver.training_number_of_steps
    with strategy.scope():
      self.optimizer, self.backbone_optimizer = (
          optimization.build_optimizers(solver))
      self._loss_metrics: Dict[str, object] = {}
      # First non-finite step that stopped the run (0: none), its quantities
      # (bit mask over QUANTITIES) and the steps skipped so far in this run.
      self._stop_step, self._stop_kind, self._skipped = (
          tf.Variable(0, dtype=dtype, trainable=False, name=name,
                      aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
          for dtype, name in ((tf.int64, "non_finite_step"),
                              (tf.int32, "non_finite_kind"),
                              (tf.int64, "skipped_non_finite_steps")))
    self._max_skipped = (
        config.trainer_options.max_skipped_non_finite_steps)
    self._loss_scale = None
    if config.trainer_options.mixed_precision == "mixed_float16":
      with strategy.scope():
        self._loss_scale, self._good_steps = (
            tf.Variable(value, dtype=dtype, trainable=False, name=name,
                        aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
            for value, dtype, name in (
                (INITIAL_LOSS_SCALE, tf.float32, "loss_scale"),
                (0, tf.int64, "loss_scale_good_steps")))
    self._rest_vars, self._backbone_vars = optimization.split_variables(model)
    with strategy.scope():
      # Slots made now, not in the first step: otherwise the step is traced
      # twice (once creating them), about 9 s of every start on a laptop.
      self.optimizer.build(self._rest_vars)
      if self._backbone_vars:
        self.backbone_optimizer.build(self._backbone_vars)
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
    self._skipped_logged = 0
    self._loop_start = None
    self._loop_start_step = 0
    self._clock = console.StepClock()
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

  def _losses_and_gradients(self, batch, clip: bool = True):
    """Forward, loss, gradients and non-finite flags (one replica).

    XLA-compiled with trainer jit_compile. The flags [3] are 1.0 where the
    loss, the gradients or the matching-cost inputs hold a NaN/Inf. The loss
    is divided by the effective global batch, so the gradients of the
    micro-batches of one step add up to the step's gradient.
    """
    y_true = {k: batch[k] for k in _GT_KEYS}
    with tf.GradientTape() as tape:
      outputs = self._model(batch[common.IMAGE], training=True)
      outputs = tf.nest.map_structure(lambda x: tf.cast(x, tf.float32),
                                      outputs)
      cost_finite = _all_finite([outputs[key] for key in _IMAGE_KEYS])
      # Identity unless non-finite: then the step is not applied anyway,
      # and the matchers get a finite cost.
      outputs.update({key: tf.where(tf.math.is_finite(outputs[key]),
                                    outputs[key], 0.0)
                      for key in _IMAGE_KEYS})
      losses = self._loss(y_true, outputs)
      total = tf.nn.compute_average_loss(
          losses[max_deeplab_loss.TOTAL], global_batch_size=self._batch_size)
      scaled = total if self._loss_scale is None else total * self._loss_scale
    gradients = tape.gradient(scaled, self._rest_vars + self._backbone_vars)
    if self._loss_scale is not None:
      gradients = [_divide(g, self._loss_scale) for g in gradients]
    # Checked before clipping, which would turn an Inf norm into NaNs.
    flags = tf.cast(tf.logical_not(tf.stack(
        [_all_finite([total]), _all_finite(gradients), cost_finite])),
                    tf.float32)
    if clip:
      gradients = self._clip(gradients)
    return losses, gradients, {key: outputs[key] for key in _IMAGE_KEYS}, flags

  def _clip(self, gradients):
    if not self._solver.use_gradient_clipping:
      return gradients
    return tf.clip_by_global_norm(gradients, self._solver.clip_gradient_norm)[0]

  def _accumulate(self, batches):
    """`_losses_and_gradients` over the step's micro-batches (one replica).

    Micro-batches run one after another (each forward waits for the previous
    gradients), so activations of one micro-batch are alive at a time. The
    gradients are summed, then clipped; the per-image losses are
    concatenated; a flag raised by any micro-batch is raised. Predictions
    are the first micro-batch's.
    """
    if len(batches) == 1:
      return self._compute(batches[0])
    summed, losses, flags, predictions = None, [], [], None
    for batch in batches:
      if summed is not None:
        with tf.control_dependencies([g for g in summed if g is not None]):
          batch = tf.nest.map_structure(tf.identity, batch)
      step_losses, gradients, step_predictions, step_flags = self._compute(
          batch, clip=False)
      summed = gradients if summed is None else [
          _add_gradients(a, b) for a, b in zip(summed, gradients)]
      losses.append(step_losses)
      flags.append(step_flags)
      if predictions is None:
        predictions = step_predictions
    losses = {name: tf.concat([step[name] for step in losses], axis=0)
              for name in losses[0]}
    return (losses, self._clip(summed), predictions,
            tf.reduce_max(tf.stack(flags), axis=0))

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

  def _apply(self, losses, gradients):
    """One replica's optimiser steps and loss-metric updates."""
    split = len(self._rest_vars)
    self.optimizer.apply_gradients(zip(gradients[:split], self._rest_vars))
    if self._backbone_vars:
      self.backbone_optimizer.apply_gradients(
          zip(gradients[split:], self._backbone_vars))
    for name, value in losses.items():
      self._loss_metrics[name].update_state(value)

  def _guarded_apply(self, losses, gradients, flags) -> tf.Tensor:
    """Applies the step unless a replica flagged a non-finite value.

    Cross-replica context: the `tf.cond` sits outside `strategy.run` (as
    Keras' loss-scale optimiser does), since a cond inside a replica
    function cannot host the optimiser's cross-replica merge. Returns
    whether the step was applied.
    """
    non_finite = self._strategy.reduce(tf.distribute.ReduceOp.SUM, flags,
                                       axis=None) > 0
    kind = tf.reduce_sum(tf.where(non_finite, 2 ** tf.range(len(QUANTITIES)),
                                  0))
    stopped = self._stop_step > 0
    overflow = tf.constant(False)
    if self._loss_scale is not None:
      # float16: non-finite gradients alone are an overflow of the scaled
      # loss, answered by a smaller scale, unless the scale is already 1.
      overflow = tf.logical_and(tf.equal(kind, _GRADIENTS_BIT),
                                self._loss_scale > 1.0)
      kind = tf.where(overflow, 0, kind)
      self._update_loss_scale(overflow, stopped)
    bad = tf.logical_and(kind > 0, tf.logical_not(stopped))
    over_budget = tf.logical_and(bad, self._skipped >= self._max_skipped)
    self._skipped.assign_add(tf.cast(
        tf.logical_and(bad, tf.logical_not(over_budget)), tf.int64))
    self._stop_step.assign(tf.where(over_budget, self._global_step + 1,
                                    self._stop_step))
    self._stop_kind.assign(tf.where(over_budget, kind, self._stop_kind))

    def apply():
      self._strategy.run(self._apply, args=(losses, gradients))
      return tf.constant(True)

    go = tf.logical_and(kind == 0, tf.logical_not(stopped))
    return tf.cond(tf.logical_and(go, tf.logical_not(overflow)),
                   apply, lambda: tf.constant(False))

  def _update_loss_scale(self, overflow, stopped):
    """Dynamic loss scaling: halve on overflow, double after a good run."""
    good = self._good_steps + 1
    grow = tf.logical_and(tf.logical_not(overflow),
                          good >= LOSS_SCALE_GROWTH_STEPS)
    scale = tf.where(overflow, tf.maximum(self._loss_scale / 2.0, 1.0),
                     tf.where(grow, self._loss_scale * 2.0, self._loss_scale))
    keep = lambda new, old: tf.where(stopped, old, new)  # pylint: disable=g-long-lambda
    self._loss_scale.assign(keep(scale, self._loss_scale))
    self._good_steps.assign(keep(
        tf.where(tf.logical_or(overflow, grow), tf.zeros_like(good), good),
        self._good_steps))

  def train_step(self, iterator):
    def step_fn(batches):
      losses, gradients, predictions, flags = self._accumulate(batches)
      images = {key: batches[0][key] for key in (common.IMAGE,
                                                 common.GT_SEMANTIC_KEY)}
      return losses, gradients, flags, (images, predictions)

    batches = tuple(next(iterator) for _ in range(self._accumulation_steps))
    losses, gradients, flags, outputs = self._strategy.run(
        step_fn, args=(batches,))
    applied = self._guarded_apply(losses, gradients, flags)
    # After the step's checks: a failed step leaves the global step as is.
    with tf.control_dependencies([applied]):
      self._global_step.assign_add(1)
    if self._image_steps > 0:
      batch, predictions = tf.nest.map_structure(
          lambda x: self._strategy.experimental_local_results(x)[0], outputs)
      tf.cond(self._global_step % self._image_steps == 0,
              lambda: self._write_images(batch, predictions),
              lambda: tf.constant(False))

  def train(self, num_steps):
    """Orbit's loop; the host matcher's non-finite error becomes ours."""
    try:
      return super().train(num_steps)
    except tf.errors.OpError as e:
      if matching.NON_FINITE_COST not in (e.message or ""):
        raise
      step = int(self._global_step.numpy()) + 1
      detail = e.message[e.message.index(matching.NON_FINITE_COST):]
      raise NonFiniteLossError(
          f"Non-finite matching cost at step {step} ({detail.splitlines()[0]})"
          f"; the step was not applied and nothing is saved. "
          f"{self._advice()}") from None

  def _advice(self) -> str:
    latest = tf.train.latest_checkpoint(self._model_dir)
    return (f"The last good checkpoint in {self._model_dir} ({latest}) is "
            "kept; lower the learning rate or enable gradient clipping and "
            "resume.")

  def _check_non_finite(self):
    """Raises for a step that stopped the run; logs newly skipped steps."""
    stop_step = int(self._stop_step.numpy())
    skipped = int(self._skipped.numpy())
    if stop_step:
      kind = int(self._stop_kind.numpy())
      names = " and ".join(q for i, q in enumerate(QUANTITIES)
                           if kind & (1 << i))
      raise NonFiniteLossError(
          f"Non-finite {names} at step {stop_step}; the step was not applied "
          f"and nothing is saved ({skipped} earlier non-finite steps skipped, "
          f"trainer_options.max_skipped_non_finite_steps "
          f"{self._max_skipped}). {self._advice()}")
    if skipped > self._skipped_logged:
      logging.warning("Skipped %d non-finite steps so far (no update "
                      "applied; at most %d allowed).", skipped,
                      self._max_skipped)
      self._skipped_logged = skipped
    return skipped

  def train_loop_end(self):
    skipped = self._check_non_finite()
    step = int(self._global_step.numpy())
    results = {name: metric.result() for name, metric in
               self._loss_metrics.items()}
    total = float(results[max_deeplab_loss.TOTAL])
    if not math.isfinite(total):
      raise NonFiniteLossError(
          f"Non-finite loss (loop mean {total}) at step {step}; nothing is "
          f"saved. {self._advice()}")
    elapsed = max(time.time() - self._loop_start, 1e-9)
    steps = max(step - self._loop_start_step, 1)
    images_per_second = steps * self._batch_size / elapsed
    self._clock.loop_end(step)
    learning_rate = float(self._learning_rate(step))
    # One line per loop; every loss term goes to TensorBoard (the results).
    logging.info("step %d/%d  loss %.4f  lr %.2e  %.1f images/s  "
                 "%.3f s/step  ETA %s", step, self._total_steps, total,
                 learning_rate, images_per_second, elapsed / steps,
                 self._clock.eta(self._total_steps - step))
    results.update({"learning_rate": learning_rate,
                    "images_per_second": images_per_second,
                    "step_time": elapsed / steps,
                    SKIPPED_SUMMARY: skipped})
    if self._loss_scale is not None:
      results["loss_scale"] = float(self._loss_scale.numpy())
    return results
