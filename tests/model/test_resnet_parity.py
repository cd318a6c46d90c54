"""The ResNet-50 encoder end to end against DeepLab2
(reference/PARITY_STAGEWISE.md, the R50 COCO fixture).

test_stagewise_parity.py feeds each encoder stage DeepLab2's own input; here
the whole encoder runs on the image alone, with only its weights loaded
(through the `encoder/` keys), so the rounding differences of successive
stages accumulate (to 4.7e-4 x (1 + |ref|) at stage5, beyond the stage-wise
tolerance, which holds for one stage). The chain is still well conditioned:
every endpoint must be within 1e-3 of its largest magnitude (measured: at
most 5.7e-5, at stage5), where a structural error gives order 1e-1.
"""

import numpy as np
import parity_utils  # tests/model is on sys.path (rootdir conftest).
import pytest
import tensorflow as tf

from deeplab2_kmax.model import pixel_encoders

SIDECAR = parity_utils.DEFAULT_SIDECAR

pytestmark = pytest.mark.skipif(not SIDECAR.exists(),
                                reason=f"R50 parity sidecar not found: {SIDECAR}")


@pytest.fixture
def full_float32_matmuls():
  """Parity is defined in float32; TF32 on recent GPUs would break it."""
  enabled = tf.config.experimental.tensor_float_32_execution_enabled()
  tf.config.experimental.enable_tensor_float_32_execution(False)
  yield
  tf.config.experimental.enable_tensor_float_32_execution(enabled)


def test_resnet50_endpoints_match_deeplab2(full_float32_matmuls):
  del full_float32_matmuls
  sidecar = parity_utils.read_sidecar(SIDECAR)
  reference = np.load(SIDECAR.parent / sidecar["npz"])
  keys = parity_utils.read_key_list(sidecar["checkpoint_keys"], SIDECAR.parent)
  image = parity_utils.fixture_image(sidecar["image_seed"],
                                     sidecar["crop_size"])
  np.testing.assert_array_equal(image, reference["image"])

  encoder = pixel_encoders.build_pixel_encoder(
      "resnet50", use_sync_batch_norm=False)
  inputs = tf.constant(image, tf.float32) / 127.5 - 1.0
  encoder(inputs, training=False)
  parity_utils.load_component(encoder.deeplab2_variable_map(), "encoder",
                              keys, reference)
  endpoints = encoder(inputs, training=False)

  for name in encoder.stage_names:
    expected = reference[f"encoder/{name}"]
    actual = endpoints[name].numpy()
    assert actual.shape == expected.shape, name
    scale = np.abs(expected).max()
    assert np.abs(actual - expected).max() <= 1e-3 * scale, name
