"""Optimisation (paper Sec. 4.1): AdamW, warm-up then poly decay, backbone LR.

As DeepLab2's trainer:
* the learning rate rises linearly to the full base rate,
  `step / warmup_steps * base_learning_rate` for step < warmup_steps, then
  follows the polynomial decay of the global step (not of step - warm-up);
* the backbone learning-rate multiplier is realised with a second AdamW whose
  schedule is scaled (Adam is invariant to gradient scaling, so scaling
  gradients would not work); its weight decay scales with it;
* decoupled weight decay (times the current learning rate) applies only to
  variables named like convolution / dense kernels, i.e. matching
  `DECAYED_VARIABLE_PATTERN`: kernels, depthwise and axial-attention qkv
  kernels. Batch / layer norms, biases, cluster centres, relative position
  embeddings and ConvNeXt layer scales are not decayed.
"""

import re
from typing import List
from typing import Tuple

import tensorflow as tf
import tf_keras

# DeepLab2's `include_in_weight_decay` pattern (everything else excluded).
DECAYED_VARIABLE_PATTERN = r".*(kernel|weight):0$"
# Its complement, in the form tf_keras' `exclude_from_weight_decay` takes
# (a pattern searched in the variable name).
_NOT_DECAYED = r"^(?!" + DECAYED_VARIABLE_PATTERN + ")"


def is_weight_decayed(variable_name: str) -> bool:
  """Whether AdamW decays the variable called `variable_name`."""
  return re.search(DECAYED_VARIABLE_PATTERN, variable_name) is not None


class _Scaled(tf_keras.optimizers.schedules.LearningRateSchedule):
  """`schedule(step) * factor`."""

  def __init__(self, schedule, factor: float):
    self._schedule = schedule
    self._factor = factor

  def __call__(self, step):
    return self._schedule(step) * self._factor

  def get_config(self):
    return {"factor": self._factor}


class _LinearWarmup(tf_keras.optimizers.schedules.LearningRateSchedule):
  """`step / warmup_steps * peak` before `warmup_steps`, then `decay(step)`."""

  def __init__(self, decay, peak: float, warmup_steps: int):
    self._decay = decay
    self._peak = peak
    self._warmup_steps = warmup_steps

  def __call__(self, step):
    step = tf.cast(step, tf.float32)
    warmup_steps = tf.cast(self._warmup_steps, tf.float32)
    return tf.where(step < warmup_steps, self._peak * step / warmup_steps,
                    self._decay(step))

  def get_config(self):
    return {"peak": self._peak, "warmup_steps": self._warmup_steps}


def learning_rate_schedule(solver):
  """Linear warm-up from 0 to the base rate, then polynomial decay."""
  if solver.learning_policy != "poly":
    raise ValueError(f"learning_policy {solver.learning_policy!r} is not "
                     "supported (use 'poly').")
  decay = tf_keras.optimizers.schedules.PolynomialDecay(
      initial_learning_rate=solver.base_learning_rate,
      decay_steps=max(solver.training_number_of_steps, 1),
      end_learning_rate=solver.poly_end_learning_rate,
      power=solver.poly_learning_power)
  if solver.warmup_steps <= 0:
    return decay
  return _LinearWarmup(decay, solver.base_learning_rate, solver.warmup_steps)


def _adamw(schedule, solver):
  if solver.optimizer != "adamw":
    raise ValueError(f"optimizer {solver.optimizer!r} is not supported "
                     "(use 'adamw').")
  optimizer = tf_keras.optimizers.AdamW(
      learning_rate=schedule, weight_decay=solver.adamw_weight_decay,
      beta_1=solver.adamw_beta_1, beta_2=solver.adamw_beta_2,
      epsilon=solver.adamw_epsilon)
  optimizer.exclude_from_weight_decay(var_names=[_NOT_DECAYED])
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
