"""Parity of the ResNet-50 encoder with DeepLab2 (reference/PARITY.md)."""

import numpy as np
import parity_utils  # tests/model is on sys.path (rootdir conftest).
import pytest
import tensorflow as tf

from deeplab2_kmax.model import pixel_encoders

pytestmark = pytest.mark.skipif(
    parity_utils.skip_reason() is not None,
    reason=str(parity_utils.skip_reason()))


@pytest.fixture
def full_float32_matmuls():
  """Parity is defined in float32; TF32 on recent GPUs would break it."""
  enabled = tf.config.experimental.tensor_float_32_execution_enabled()
  tf.config.experimental.enable_tensor_float_32_execution(False)
  yield
  tf.config.experimental.enable_tensor_float_32_execution(enabled)


def test_resnet50_stage5_matches_deeplab2_fixture(full_float32_matmuls):
  del full_float32_matmuls
  sidecar = parity_utils.read_sidecar()
  reference = np.load(parity_utils.reference_dir() / sidecar["npz"])
  keys = parity_utils.read_key_list(sidecar["checkpoint_keys"])
  image = parity_utils.fixture_image(sidecar["image_seed"])
  np.testing.assert_array_equal(image, reference["image"])

  encoder = pixel_encoders.build_pixel_encoder(
      "resnet50", use_sync_batch_norm=False)
  inputs = tf.constant(image, tf.float32) / 127.5 - 1.0
  encoder(inputs, training=False)
  parity_utils.load_component(encoder.deeplab2_variable_map(), "encoder",
                              keys, reference)
  stage5 = encoder(inputs, training=False)["stage5"].numpy()

  expected = reference["stage5"]
  assert stage5.shape == expected.shape
  scale = np.abs(expected).max()
  assert np.abs(stage5 - expected).max() <= 1e-3 * scale
