"""Optimisation (SPEC §6): AdamW, linear warm-up then poly decay, backbone LR.

Uses the Model Garden's `LinearWarmup` schedule over Keras' polynomial
decay. The backbone learning-rate multiplier is realised with a second
AdamW whose schedule is scaled (Adam is invariant to gradient scaling, so
scaling gradients would not work). Weight decay (decoupled, AdamW) skips
normalisation parameters and biases.
"""

from typing import List
from typing import Tuple

from official.modeling.optimization import lr_schedule
import tensorflow as tf
import tf_keras

_NO_DECAY = ["gamma", "beta", "bias"]


class _Scaled(tf_keras.optimizers.schedules.LearningRateSchedule):
  """`schedule(step) * factor`."""

  def __init__(self, schedule, factor: float):
    self._schedule = schedule
    self._factor = factor

  def __call__(self, step):
    return self._schedule(step) * self._factor

  def get_config(self):
    return {"factor": self._factor}


def learning_rate_schedule(solver):
  """Linear warm-up from 0, then polynomial decay to the end value."""
  if solver.learning_policy != "poly":
    raise ValueError(f"learning_policy {solver.learning_policy!r} is not "
                     "supported (use 'poly').")
  decay = tf_keras.optimizers.schedules.PolynomialDecay(
      initial_learning_rate=solver.base_learning_rate,
      # LinearWarmup hands the global step (not step - warmup) to the decay.
      decay_steps=max(solver.training_number_of_steps, 1),
      end_learning_rate=solver.poly_end_learning_rate,
      power=solver.poly_learning_power)
  if solver.warmup_steps <= 0:
    return decay
  return lr_schedule.LinearWarmup(decay, warmup_steps=solver.warmup_steps,
                                  warmup_learning_rate=0.0)


def _adamw(schedule, solver):
  if solver.optimizer != "adamw":
    raise ValueError(f"optimizer {solver.optimizer!r} is not supported "
                     "(use 'adamw').")
  optimizer = tf_keras.optimizers.AdamW(
      learning_rate=schedule, weight_decay=solver.adamw_weight_decay,
      beta_1=solver.adamw_beta_1, beta_2=solver.adamw_beta_2,
      epsilon=solver.adamw_epsilon)
  optimizer.exclude_from_weight_decay(var_names=_NO_DECAY)
  return optimizer


def build_optimizers(solver) -> Tuple[tf_keras.optimizers.Optimizer,
                                      tf_keras.optimizers.Optimizer]:
  """(optimizer for everything but the backbone, backbone optimizer)."""
  schedule = learning_rate_schedule(solver)
  backbone_schedule = _Scaled(schedule,
                              solver.backbone_learning_rate_multiplier)
  return _adamw(schedule, solver), _adamw(backbone_schedule, solver)


def split_variables(model) -> Tuple[List[tf.Variable], List[tf.Variable]]:
  """(non-backbone trainable variables, backbone trainable variables)."""
  backbone_ids = {id(v) for v in model.encoder.trainable_variables}
  rest = [v for v in model.trainable_variables if id(v) not in backbone_ids]
  return rest, list(model.encoder.trainable_variables)
