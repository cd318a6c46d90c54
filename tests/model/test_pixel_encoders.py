"""Tiny variants of every pixel encoder: shapes, channels, odd/even sizes."""

import numpy as np
import pixel_layer_test_utils as utils
import pixel_numpy_reference as ref
import pytest
import tensorflow as tf

from deeplab2_kmax.model import pixel_encoders
from deeplab2_kmax.model.pixel_encoders import convnext

_TINY = {
    "resnet50": dict(width_multiplier=0.125, blocks_per_stage=(1, 1, 2, 2)),
    "axial_resnet50": dict(width_multiplier=0.125,
                           blocks_per_stage=(1, 1, 2, 2)),
    "convnext_tiny": dict(width_multiplier=0.125, blocks_per_stage=(1, 1, 1, 1)),
    "convnext_large": dict(width_multiplier=1 / 24,
                           blocks_per_stage=(1, 1, 1, 1)),
}


@pytest.mark.parametrize("name", sorted(_TINY))
@pytest.mark.parametrize("size", [(65, 97), (64, 96)])
def test_tiny_encoder_endpoints(name, size):
  encoder = pixel_encoders.build_pixel_encoder(
      name, use_sync_batch_norm=False, drop_path_keep_prob=0.8, **_TINY[name])
  height, width = size
  outputs = encoder(tf.random.uniform([2, height, width, 3], -1, 1),
                    training=True)
  strides = {"stage2": 4, "stage3": 8, "stage4": 16, "stage5": 32,
             "stage1": 4 if name.startswith("convnext") else 2}
  for endpoint, stride in strides.items():
    # 32k+1 sizes give (H-1)/s + 1; multiples of 32 give H/s.
    expected = [-(-height // stride), -(-width // stride)]
    assert outputs[endpoint].shape.as_list() == (
        [2] + expected + [encoder.endpoint_channels[endpoint]])
    assert np.all(np.isfinite(outputs[endpoint].numpy()))
  np.testing.assert_allclose(
      outputs["res5"].numpy(),
      encoder._activation_fn(outputs["stage5"]).numpy())  # pylint: disable=protected-access


def test_endpoint_channels_of_full_models():
  expected = {
      "resnet50": [64, 256, 512, 1024, 2048],
      "axial_resnet50": [128, 256, 512, 1024, 2048],
      "convnext_base": [128, 128, 256, 512, 1024],
  }
  for name, channels in expected.items():
    encoder = pixel_encoders.build_pixel_encoder(name)
    assert [encoder.endpoint_channels[f"stage{i}"] for i in range(1, 6)] == (
        channels)


def test_unknown_encoder_name_is_a_clear_error():
  with pytest.raises(ValueError, match="resnet50"):
    pixel_encoders.build_pixel_encoder("resnet51")


def test_convnext_block_matches_numpy():
  block = convnext.ConvNeXtBlock(4, name="block", layer_scale_init_value=0.5)
  x = np.random.default_rng(0).standard_normal([1, 5, 6, 4]).astype(np.float32)
  block(x)
  utils.randomize(block, seed=1)
  v = utils.numpy_map(block)
  assert v["depthwise_conv/kernel"].shape == (7, 7, 1, 4)
  xd = x.astype(np.float64)
  y = np.stack([ref.conv2d(xd[..., c:c + 1],
                           v["depthwise_conv/kernel"][:, :, :, c:c + 1])[..., 0]
                for c in range(4)], -1) + v["depthwise_conv/bias"]
  y = ref.layer_norm(y, v["norm/gamma"], v["norm/beta"])
  y = ref.gelu(y @ v["pointwise_conv1/kernel"] + v["pointwise_conv1/bias"])
  y = y @ v["pointwise_conv2/kernel"] + v["pointwise_conv2/bias"]
  expected = xd + v["layer_scale"] * y
  np.testing.assert_allclose(block(x, training=False).numpy(), expected,
                             rtol=1e-4, atol=1e-4)


def test_convnext_stem_pads_one_and_two():
  encoder = pixel_encoders.build_pixel_encoder(
      "convnext_tiny", width_multiplier=1 / 24, blocks_per_stage=(1, 1, 1, 1))
  x = np.random.default_rng(2).standard_normal([1, 9, 9, 3]).astype(np.float32)
  stage1 = encoder(x)["stage1"].numpy()
  v = utils.numpy_map(encoder)
  kernel = v["downsample_layers/0/layer_with_weights-0/kernel"]
  padded = np.pad(x.astype(np.float64), [(0, 0), (1, 2), (1, 2), (0, 0)])
  conv = np.zeros([1, 3, 3, kernel.shape[-1]])
  for i in range(3):
    for j in range(3):
      conv[:, i, j] = np.einsum("bhwc,hwcd->bd",
                                padded[:, 4 * i:4 * i + 4, 4 * j:4 * j + 4],
                                kernel)
  conv += v["downsample_layers/0/layer_with_weights-0/bias"]
  expected = ref.layer_norm(conv, v["downsample_layers/0/layer_with_weights-1/gamma"],
                            v["downsample_layers/0/layer_with_weights-1/beta"])
  np.testing.assert_allclose(stage1, expected, rtol=1e-4, atol=1e-4)
