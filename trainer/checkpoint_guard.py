"""Non-finite values never reach a checkpoint.

`NonFiniteLossError` is the one error the library raises when training
produces NaN or Inf (in the loss, the gradients, the matching cost or the
weights); `trainer.NonFiniteLossError` is the same class. It lives here, the
lowest trainer module (TensorFlow only), so that the host Hungarian matcher
(`losses/matching.py`) can raise it without importing the trainer.

`GuardedCheckpointManager` is a `tf.train.CheckpointManager` that checks the
model weights before every save and refuses to write non-finite ones, so the
newest checkpoint in `model_dir` is always one a restart can resume from.
"""

from typing import List

import tensorflow as tf


class NonFiniteLossError(FloatingPointError):
  """Training produced NaN/Inf; the last good checkpoint is left untouched."""


def _all_finite(variables) -> tf.Tensor:
  checks = [tf.reduce_all(tf.math.is_finite(v)) for v in variables]
  return tf.reduce_all(tf.stack(checks)) if checks else tf.constant(True)


def non_finite_names(variables) -> List[str]:
  """Names of the variables holding a NaN or Inf (eager, on the host)."""
  return [v.name for v in variables
          if not bool(tf.reduce_all(tf.math.is_finite(v)))]


class GuardedCheckpointManager(tf.train.CheckpointManager):
  """A CheckpointManager that refuses to save non-finite model weights.

  The check is one compiled reduction over the model's floating-point
  variables per save call (Orbit calls `save` once per training loop); the
  names of the offending variables are only looked up when it fails.
  """

  def __init__(self, checkpoint, directory, model, **kwargs):
    """Like `tf.train.CheckpointManager`; `model`'s weights are checked."""
    super().__init__(checkpoint, directory, **kwargs)
    self._model = model
    self._step = kwargs.get("step_counter")
    self._check = None

  def _float_variables(self):
    return [v for v in self._model.variables if v.dtype.is_floating]

  def assert_finite(self):
    """Raises NonFiniteLossError when a model weight is NaN or Inf."""
    variables = self._float_variables()
    if self._check is None:
      self._check = tf.function(lambda: _all_finite(self._float_variables()))
    if bool(self._check()):
      return
    names = non_finite_names(variables)
    step = ("" if self._step is None
            else f" at step {int(self._step.numpy())}")
    shown = ", ".join(names[:5]) + (
        f" and {len(names) - 5} more" if len(names) > 5 else "")
    raise NonFiniteLossError(
        f"Refusing to save a checkpoint{step}: non-finite weights in "
        f"{len(names)} variable(s) ({shown}). The last good checkpoint "
        f"{self.latest_checkpoint} in {self.directory} is kept.")

  def save(self, checkpoint_number=None, check_interval=True, options=None):
    """Saves like `tf.train.CheckpointManager.save` once weights are finite."""
    self.assert_finite()
    return super().save(checkpoint_number=checkpoint_number,
                         check_interval=check_interval, options=options)
