"""The SavedModel's serving signatures check their input in the graph.

TF Serving and a loaded signature pass any tensor to the graph; a wrong rank,
a fourth channel or an empty image must fail with a message that says what the
signature expects, not with an error from an op deep inside the model.
The SavedModel keeps the model's weights, not the Keras model itself.
"""

import os
import sys

import numpy as np
import pytest
import tensorflow as tf

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "trainer"))
import trainer_test_utils as utils  # noqa: E402

from deeplab2_kmax import builders  # noqa: E402
from deeplab2_kmax.trainer import export_lib  # noqa: E402

_SINGLE = r"serving input must be a uint8 image \[H, W, 3\] with H, W > 0"
_BATCH = (r"serving input must be a uint8 image batch \[B, H, W, 3\] with "
          r"B, H, W > 0")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  """(the reloaded SavedModel of a tiny random-weight model, that model)."""
  config = utils.tiny_config("/nonexistent")
  config.export_options.batch_signature = True
  model = builders.build_model(config, crop_size=(64, 64))
  path = str(tmp_path_factory.mktemp("served") / "saved_model")
  export_lib.export_from_model(model, config, path)
  return tf.saved_model.load(path), model


@pytest.fixture(scope="module")
def signatures(exported):
  """Both signatures, reloaded."""
  return exported[0].signatures


def test_the_saved_object_graph_holds_the_weights_not_the_keras_model(
    exported):
  # A Keras model in the object graph makes saving trace every layer again.
  loaded, model = exported
  assert not hasattr(loaded, "model")
  saved = sorted(v.numpy().tobytes() for v in loaded.model_variables)
  assert saved == sorted(v.numpy().tobytes() for v in model.variables)


@pytest.mark.parametrize("shape", [(12, 10, 4), (12, 10, 1), (1, 12, 10, 3),
                                   (12, 10), (), (0, 10, 3), (12, 0, 3)])
def test_bad_single_image_is_named_with_the_expected_shape(signatures, shape):
  got = r"got shape\] \[" + " ".join(str(d) for d in shape) + r"\]"
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=_SINGLE + r".*" + got):
    signatures["serving_default"](image=tf.zeros(shape, tf.uint8))


@pytest.mark.parametrize("shape", [(1, 12, 10, 4), (12, 10, 3),
                                   (0, 12, 10, 3), (1, 0, 10, 3),
                                   (1, 12, 0, 3), (1, 1, 12, 10, 3)])
def test_bad_batch_is_named_with_the_expected_shape(signatures, shape):
  with pytest.raises(tf.errors.InvalidArgumentError, match=_BATCH):
    signatures["serving_batch"](images=tf.zeros(shape, tf.uint8))


def test_valid_inputs_still_give_maps_of_their_size(signatures):
  image = np.random.default_rng(0).integers(0, 256, (12, 10, 3), np.uint8)
  single = signatures["serving_default"](image=tf.constant(image))
  assert single["panoptic_pred"].shape == (1, 12, 10)
  batch = signatures["serving_batch"](images=tf.constant(
      np.stack([image, image[::-1]])))
  assert batch["panoptic_pred"].shape == (2, 12, 10)
  # The batch signature's first image is the single signature's answer.
  np.testing.assert_array_equal(batch["panoptic_pred"][0],
                                single["panoptic_pred"][0])
  # A one-pixel image is valid (both sides > 0).
  tiny = signatures["serving_default"](image=tf.zeros((1, 1, 3), tf.uint8))
  assert tiny["panoptic_pred"].shape == (1, 1, 1)
