"""Stochastic depth ("drop path") for residual branches.

Huang et al., "Deep Networks with Stochastic Depth", ECCV 2016; used by the
kMaX-DeepLab backbones and transformer decoder (kMaX-DeepLab paper §4.1).
During training each sample's residual branch is kept with probability
`keep_prob` and rescaled by `1 / keep_prob`; at inference it is the identity.
"""

import tensorflow as tf
import tf_keras


def stage_keep_prob(final_keep_prob: float, schedule: str, stage: int,
                    num_stages: int) -> float:
  """Keep probability of `stage` under a 'constant' or 'linear' schedule.

  'linear' goes from 1.0 at stage 0 (the stem) to `final_keep_prob` at
  `num_stages`, as DeepLab2 schedules its ResNet backbones.
  """
  if schedule == "constant":
    return final_keep_prob
  if schedule == "linear":
    return 1.0 - (1.0 - final_keep_prob) * stage / num_stages
  raise ValueError(f"Unknown drop path schedule {schedule!r}; expected "
                   "'constant' or 'linear'.")


def drop_path_mask(inputs: tf.Tensor, keep_prob: float) -> tf.Tensor:
  """A [batch, 1, ..., 1] mask: 1/keep_prob with prob. keep_prob, else 0."""
  shape = tf.concat(
      [tf.shape(inputs)[:1], tf.ones([inputs.shape.rank - 1], tf.int32)], 0)
  keep = tf.floor(keep_prob + tf.random.uniform(shape, dtype=inputs.dtype))
  return keep / keep_prob


class DropPath(tf_keras.layers.Layer):
  """Drops the whole input per sample during training (stochastic depth)."""

  def __init__(self, keep_prob: float = 1.0, name: str = "drop_path"):
    super().__init__(name=name)
    if not 0.0 < keep_prob <= 1.0:
      raise ValueError(f"{name}: keep_prob must be in (0, 1], got {keep_prob}.")
    self._keep_prob = keep_prob

  @property
  def keep_prob(self) -> float:
    return self._keep_prob

  def sample_mask(self, inputs, training=False):
    """The mask `call` draws for a tensor shaped like `inputs`, or None.

    A recomputed block draws it once and applies it in both passes.
    """
    if not training or self._keep_prob == 1.0:
      return None
    return drop_path_mask(inputs, self._keep_prob)

  def call(self, inputs, training=False):
    if not training or self._keep_prob == 1.0:
      return inputs
    return inputs * drop_path_mask(inputs, self._keep_prob)
