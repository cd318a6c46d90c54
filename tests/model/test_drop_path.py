"""Stochastic depth: identity at inference, per-sample drop and rescale."""

import numpy as np
import pytest
import tensorflow as tf

from deeplab2_kmax.model.layers import drop_path


def test_identity_at_inference():
  layer = drop_path.DropPath(0.3)
  x = tf.random.normal([4, 3, 3, 2])
  np.testing.assert_array_equal(layer(x, training=False).numpy(), x.numpy())


def test_training_drops_whole_samples_and_rescales():
  tf.random.set_seed(0)
  layer = drop_path.DropPath(0.5)
  x = tf.ones([2000, 3, 2, 2])
  y = layer(x, training=True).numpy()
  per_sample = y.reshape(2000, -1)
  # Each sample is entirely dropped (0) or kept and scaled by 1 / 0.5.
  assert np.all((per_sample == 0.0) | (per_sample == 2.0))
  assert np.all(per_sample.min(1) == per_sample.max(1))
  kept = (per_sample[:, 0] > 0).mean()
  assert abs(kept - 0.5) < 0.05  # ~7 standard deviations.
  assert abs(y.mean() - 1.0) < 0.1  # Expectation preserved.


def test_keep_prob_one_is_identity_in_training():
  x = tf.random.normal([3, 4])
  np.testing.assert_array_equal(
      drop_path.DropPath(1.0)(x, training=True).numpy(), x.numpy())


def test_schedules():
  assert drop_path.stage_keep_prob(0.8, "constant", 1, 4) == 0.8
  assert drop_path.stage_keep_prob(0.8, "linear", 0, 4) == 1.0
  assert drop_path.stage_keep_prob(0.8, "linear", 3, 4) == pytest.approx(0.85)
  assert drop_path.stage_keep_prob(0.8, "linear", 4, 4) == pytest.approx(0.8)
  with pytest.raises(ValueError, match="schedule"):
    drop_path.stage_keep_prob(0.8, "cosine", 1, 4)
  with pytest.raises(ValueError, match="keep_prob"):
    drop_path.DropPath(0.0)
