"""K accumulated micro-batches give the gradient of one batch of K x size.

Batch norm is frozen (inference statistics) and the losses' random pixel
sampling is off, so every image's loss depends on that image alone; then
the micro-batch form must equal the whole-batch form, term by term and
gradient by gradient, up to float32 summation order.
"""

import os
import sys

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from deeplab2_kmax import builders
from deeplab2_kmax import config_loader
from deeplab2_kmax.trainer import train_lib
from deeplab2_kmax.trainer import trainer as trainer_lib

sys.path.insert(0, os.path.dirname(__file__))
import trainer_test_utils as utils  # noqa: E402


def _config(data_dir, accumulation):
  config = utils.lean_config(data_dir, semantic_head=True)
  config.train_dataset_options.batch_size = 4
  config.model_options.max_deeplab.instance_discrimination_sample_k = 0
  config.model_options.max_deeplab.semantic_sample_k = 0
  config.trainer_options.gradient_accumulation_steps = accumulation
  solver = config.trainer_options.solver_options
  solver.use_gradient_clipping = True
  solver.clip_gradient_norm = 1e-3  # Small: clipping must follow the sum.
  return config


def _trainer(config, model):
  strategy = tf.distribute.get_strategy()
  dataset = builders.build_dataset(config, training=True, seed=0)
  return trainer_lib.KMaXTrainer(
      config, model, builders.build_loss(config), dataset, strategy,
      tf.Variable(0, dtype=tf.int64), "/nonexistent")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  data_dir = utils.tiny_data(str(tmp_path_factory.mktemp("data")))
  config = _config(data_dir, 1)
  tf_keras.utils.set_random_seed(0)
  # The ASPP's dropout draws its mask per call shape: switched off, so that
  # each image's gradient is the same whether its batch is whole or split.
  dropout_init = tf_keras.layers.Dropout.__init__
  patch = pytest.MonkeyPatch()
  patch.setattr(tf_keras.layers.Dropout, "__init__",
                lambda self, rate, *a, **k: dropout_init(self, 0.0, *a, **k))
  # Built at its crop so that every variable (the semantic branch's too)
  # exists before the trainer lists what it optimises.
  model = builders.build_model(
      config, crop_size=tuple(config.train_dataset_options.crop_size))
  patch.undo()
  batch = next(iter(builders.build_dataset(config, training=True, seed=0)))
  model(batch["image"], training=False)
  for layer in model.submodules:
    if isinstance(layer, tf_keras.layers.BatchNormalization):
      layer.trainable = False  # Inference statistics: per-image losses.
  return data_dir, model, batch


def _relative_error(a, b):
  return np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12)


def test_two_micro_batches_equal_one_batch(setup):
  data_dir, model, batch = setup
  whole = _trainer(_config(data_dir, 1), model)
  split = _trainer(_config(data_dir, 2), model)
  halves = [tf.nest.map_structure(lambda x, i=i: x[2 * i:2 * i + 2], batch)
            for i in range(2)]
  losses, gradients, _, flags = whole._accumulate((batch,))  # pylint: disable=protected-access
  split_losses, split_gradients, _, split_flags = split._accumulate(  # pylint: disable=protected-access
      tuple(halves))
  assert set(losses) == set(split_losses)
  for name in losses:
    np.testing.assert_allclose(split_losses[name].numpy(),
                               losses[name].numpy(), rtol=1e-5, atol=1e-6,
                               err_msg=name)
  assert len(gradients) == len(split_gradients)
  variables = whole._rest_vars + whole._backbone_vars  # pylint: disable=protected-access
  assert len(variables) == len(gradients)
  semantic = [g for g, v in zip(gradients, variables) if "semantic" in v.name]
  assert semantic and all(g is not None for g in semantic)
  for g, h in zip(gradients, split_gradients):
    assert (g is None) == (h is None)
    if g is not None:
      assert _relative_error(tf.convert_to_tensor(h).numpy(),
                             tf.convert_to_tensor(g).numpy()) < 1e-4
  # Clipped to the norm: the sum was clipped, not each micro-batch.
  assert float(tf.linalg.global_norm(split_gradients)) == pytest.approx(
      1e-3, rel=1e-4)
  np.testing.assert_array_equal(flags.numpy(), split_flags.numpy())


def test_accumulation_must_divide_the_batch(setup):
  data_dir, _, _ = setup
  config = _config(data_dir, 3)
  with pytest.raises(config_loader.ConfigError,
                     match="gradient_accumulation_steps"):
    config_loader.validate(config)


def test_training_counts_optimiser_steps(setup, tmp_path):
  data_dir, _, _ = setup
  config = _config(data_dir, 2)
  config.trainer_options.solver_options.training_number_of_steps = 2
  model_dir = str(tmp_path / "model")
  train_lib.run_experiment(config, model_dir, "train")
  reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(model_dir))
  keys = reader.get_variable_to_shape_map()
  iterations = [k for k in keys if "optimizer/_iterations/" in k]
  assert reader.get_tensor("global_step/.ATTRIBUTES/VARIABLE_VALUE") == 2
  assert len(iterations) == 2  # Both optimisers (rest, backbone).
  assert all(reader.get_tensor(k) == 2 for k in iterations)
