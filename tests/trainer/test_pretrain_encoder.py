"""The encoder pretraining that stands in for ImageNet on the synthetic demo."""

import numpy as np
import pytest
import tensorflow as tf

from deeplab2_kmax import builders
from deeplab2_kmax.trainer import pretrain_encoder
from deeplab2_kmax.trainer import train_lib
from tests.trainer import trainer_test_utils


def _area_pool_reference(thing_ids, feature, max_things):
  """Mean of `feature` inside each thing, masks averaged over the cells.

  Feature cell (i, j) of stride s covers the s x s input pixels below it; a
  thing's weight there is the fraction of those pixels it owns.
  """
  batch, height, width = thing_ids.shape
  cells_h, cells_w = feature.shape[1:3]
  stride_h, stride_w = height // cells_h, width // cells_w
  out = np.zeros((batch, max_things, feature.shape[-1]))
  for b in range(batch):
    for k in range(max_things):
      mask = (thing_ids[b] == k).astype(np.float64)
      weights = mask.reshape(cells_h, stride_h, cells_w, stride_w).mean((1, 3))
      total = np.einsum("hw,hwc->c", weights, feature[b])
      out[b, k] = total / max(weights.sum(), 1e-6)
  return out


def test_pooled_features_match_a_per_thing_loop():
  rng = np.random.default_rng(0)
  thing_ids = rng.integers(-1, 4, size=(2, 16, 16)).astype(np.int32)
  thing_ids[1][thing_ids[1] == 2] = -1  # An absent thing pools to zero.
  coarse = rng.normal(size=(2, 4, 4, 3)).astype(np.float32)
  fine = rng.normal(size=(2, 8, 8, 5)).astype(np.float32)
  pooled = pretrain_encoder.pooled_segment_features(
      {"a": tf.constant(coarse), "b": tf.constant(fine)},
      tf.constant(thing_ids), 5, ["a", "b"]).numpy()
  expected = np.concatenate([_area_pool_reference(thing_ids, coarse, 5),
                             _area_pool_reference(thing_ids, fine, 5)], -1)
  np.testing.assert_allclose(pooled, expected, atol=1e-5)
  np.testing.assert_array_equal(pooled[1, 2], 0.0)


@pytest.fixture(scope="module")
def tiny_experiment(tmp_path_factory):
  directory = tmp_path_factory.mktemp("pretrain")
  data_dir = trainer_test_utils.tiny_data(str(directory))
  return directory, trainer_test_utils.tiny_config(data_dir)


def test_pretrained_encoder_is_what_the_experiment_starts_from(
    tiny_experiment):
  directory, config = tiny_experiment
  output = str(directory / "encoder")
  result = pretrain_encoder.pretrain(
      config, output, pretrain_encoder.PretrainOptions(steps=3, log_every=1))
  assert result["step"] == 3
  assert np.isfinite(result["loss"]) and 0.0 <= result["accuracy"] <= 1.0

  # The experiment's restore puts exactly these values into its encoder.
  saved = {name: tf.train.load_variable(output, name)
           for name, _ in tf.train.list_variables(output)
           if name.startswith("encoder/") and "OPTIMIZER_SLOT" not in name}
  assert saved
  config.model_options.backbone.pretrained_weights = output
  model = builders.build_model(config, crop_size=(64, 64))
  before = [v.numpy() for v in model.encoder.variables]
  train_lib._restore_initial_checkpoint(config, model)  # pylint: disable=protected-access
  changed = sum(not np.array_equal(a, v.numpy())
                for a, v in zip(before, model.encoder.variables))
  assert changed == len(model.encoder.variables)
  reference = pretrain_encoder.EncoderPretrainer(
      config, pretrain_encoder.PretrainOptions()).encoder
  reference(tf.zeros([1, 64, 64, 3]))
  tf.train.Checkpoint(encoder=reference).read(output).assert_consumed()
  for mine, theirs in zip(model.encoder.variables, reference.variables):
    np.testing.assert_array_equal(mine.numpy(), theirs.numpy())


def test_existing_output_is_not_overwritten(tiny_experiment):
  directory, config = tiny_experiment
  output = str(directory / "kept")
  tf.train.Checkpoint(marker=tf.Variable(7.0)).write(output)
  with pytest.raises(pretrain_encoder.PretrainError, match="already holds"):
    pretrain_encoder.pretrain(config, output,
                              pretrain_encoder.PretrainOptions(steps=1))
  assert tf.train.load_variable(output, "marker/.ATTRIBUTES/VARIABLE_VALUE") \
      == 7.0


def test_restoring_weights_that_match_nothing_is_an_error(tiny_experiment):
  directory, config = tiny_experiment
  output = str(directory / "unrelated")
  tf.train.Checkpoint(encoder=tf.train.Checkpoint(
      other=tf.Variable(1.0))).write(output)
  config.model_options.backbone.pretrained_weights = output
  model = builders.build_model(config, crop_size=(64, 64))
  with pytest.raises(train_lib.ExperimentError, match="pretrained_weights"):
    train_lib._restore_initial_checkpoint(config, model)  # pylint: disable=protected-access
