"""Mixed precision builds, trains and matches float32 within its rounding.

mixed_float16 steps also scale the loss dynamically (checked below).

bfloat16 keeps 8 significant bits (relative rounding 2^-9 per value); the
forward pass rounds activations at every layer, so losses and gradients move
by a few parts in a thousand per layer, not by parts in a million. The
tolerances below (2 % on each loss term, cosine > 0.99 between the gradient
vectors) are that error over the tiny model's depth with margin; a real bug
(a float32 path missed, a wrong cast) moves them by far more.

The Hungarian matching is a discrete choice: on a randomly initialised model
several slots are nearly equal, and a rounding difference can swap two of
them, which moves the auxiliary layers' terms by tens of percent (measured:
0.80 vs 0.46 for one image's first-layer mask-id cross-entropy). The
bfloat16 step therefore reuses the float32 step's matching, so the test
compares arithmetic, not a tie-break.
"""

import os
import sys

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from deeplab2_kmax import builders
from deeplab2_kmax.losses import matching
from deeplab2_kmax.trainer import trainer as trainer_lib

sys.path.insert(0, os.path.dirname(__file__))
import trainer_test_utils as utils  # noqa: E402


def _config(data_dir, policy):
  config = utils.tiny_config(data_dir)
  config.model_options.max_deeplab.instance_discrimination_sample_k = 0
  config.model_options.max_deeplab.semantic_sample_k = 0
  config.trainer_options.mixed_precision = policy
  return config


def _step(config, checkpoint, batch, policy):
  """Losses and gradients of one step of a model built under `policy`."""
  previous = tf_keras.mixed_precision.global_policy()
  tf_keras.mixed_precision.set_global_policy(policy)
  try:
    model = builders.build_model(config)
    model(batch["image"], training=False, return_semantic=True)
  finally:
    tf_keras.mixed_precision.set_global_policy(previous)
  if checkpoint is not None:  # The float32 model's weights, by object path.
    tf.train.Checkpoint(model=model).read(checkpoint).assert_consumed()
  for layer in model.submodules:
    if isinstance(layer, tf_keras.layers.BatchNormalization):
      layer.trainable = False
  trainer = trainer_lib.KMaXTrainer(
      config, model, builders.build_loss(config),
      builders.build_dataset(config, training=True, seed=0),
      tf.distribute.get_strategy(), tf.Variable(0, dtype=tf.int64),
      "/nonexistent")
  if policy == "mixed_float16" and not tf.config.list_physical_devices("GPU"):
    # TensorFlow's CPU kernels have no float16 backprop of dilated
    # convolutions: the forward pass and the loss only.
    outputs = tf.nest.map_structure(
        lambda x: tf.cast(x, tf.float32),
        model(batch["image"], training=True))
    losses = trainer._loss(  # pylint: disable=protected-access
        {k: batch[k] for k in trainer_lib._GT_KEYS}, outputs)  # pylint: disable=protected-access
    return model, losses, None, None, trainer
  losses, gradients, _, flags = trainer._accumulate((batch,))  # pylint: disable=protected-access
  return model, losses, gradients, flags, trainer


_STEPS = {}


def _steps(tmp_path_factory, policy):
  """float32 and `policy` steps on the same weights, batch and matching."""
  if policy not in _STEPS:
    _STEPS[policy] = _compare(tmp_path_factory, policy)
  return _STEPS[policy]


@pytest.fixture(scope="module", params=["mixed_bfloat16", "mixed_float16"])
def steps(tmp_path_factory, request):
  return _steps(tmp_path_factory, request.param)


def _compare(tmp_path_factory, policy):
  data_dir = utils.tiny_data(str(tmp_path_factory.mktemp("data")))
  config = _config(data_dir, "float32")
  batch = next(iter(builders.build_dataset(config, training=True, seed=0)))
  tf_keras.utils.set_random_seed(0)
  original = matching.match
  permutations = []
  try:
    matching.match = lambda *args: permutations.append(original(*args)) or (
        permutations[-1])
    model, losses, gradients, flags, _ = _step(config, None, batch,
                                               "float32")
    checkpoint = tf.train.Checkpoint(model=model).write(
        str(tmp_path_factory.mktemp("ckpt") / "float32"))
    matching.match = lambda *unused: permutations[0]
    mixed = _step(_config(data_dir, policy), checkpoint, batch, policy)
  finally:
    matching.match = original
  assert len(permutations) == 1
  return (model, losses, gradients, flags), mixed, policy


def test_variables_stay_float32_and_compute_is_reduced(steps):
  _, (model, _, gradients, flags, _), policy = steps
  assert {v.dtype for v in model.variables} == {tf.float32}
  assert model.encoder.compute_dtype == policy[len("mixed_"):]
  if gradients is None:
    pytest.skip("no float16 gradients on this CPU")
  assert all(g is None or g.dtype == tf.float32 for g in gradients)
  assert not np.any(flags.numpy())


def test_losses_and_gradients_match_float32_within_bfloat16_error(steps):
  (_, losses, gradients, _), (_, mixed_losses, mixed_gradients, _, _), _ = (
      steps)
  for name, value in losses.items():
    np.testing.assert_allclose(mixed_losses[name].numpy(), value.numpy(),
                               rtol=2e-2, atol=1e-3, err_msg=name)
  if mixed_gradients is None:
    pytest.skip("no float16 gradients on this CPU (losses compared)")
  flat = lambda grads: np.concatenate([  # pylint: disable=g-long-lambda
      tf.reshape(tf.convert_to_tensor(g), [-1]).numpy()
      for g in grads if g is not None])
  a, b = flat(gradients), flat(mixed_gradients)
  cosine = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
  assert cosine > 0.99


def test_float16_loss_scale_halves_on_overflow_and_grows_back(
    tmp_path_factory, monkeypatch):
  (_, losses, _, _), (model, _, _, _, trainer), _ = _steps(
      tmp_path_factory, "mixed_float16")
  # The scaling logic does not look at the gradients' values.
  gradients = [tf.zeros_like(v) for v in trainer._rest_vars +  # pylint: disable=protected-access
               trainer._backbone_vars]  # pylint: disable=protected-access
  monkeypatch.setattr(trainer_lib, "LOSS_SCALE_GROWTH_STEPS", 2)
  trainer.create_metrics(list(losses))
  overflow = tf.constant([0.0, 1.0, 0.0])  # Gradients only.
  fine = tf.constant([0.0, 0.0, 0.0])
  scale = trainer_lib.INITIAL_LOSS_SCALE
  weights = [v.numpy() for v in model.trainable_variables]
  assert not trainer._guarded_apply(losses, gradients, overflow)  # pylint: disable=protected-access
  # Not applied, not an error: the scale halves.
  assert float(trainer._loss_scale.numpy()) == scale / 2  # pylint: disable=protected-access
  assert int(trainer._stop_step.numpy()) == 0  # pylint: disable=protected-access
  assert all(np.array_equal(w, v.numpy())
             for w, v in zip(weights, model.trainable_variables))
  assert trainer._guarded_apply(losses, gradients, fine)  # pylint: disable=protected-access
  assert trainer._guarded_apply(losses, gradients, fine)  # pylint: disable=protected-access
  assert float(trainer._loss_scale.numpy()) == scale  # Two good steps.
  # At scale 1 an overflow is a failure, as in float32.
  trainer._loss_scale.assign(1.0)  # pylint: disable=protected-access
  assert not trainer._guarded_apply(losses, gradients, overflow)  # pylint: disable=protected-access
  assert int(trainer._stop_step.numpy()) == 1  # pylint: disable=protected-access
