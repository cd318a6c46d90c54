"""The kMaX enhanced pixel decoder: wiring vs. NumPy, shapes, errors."""

import numpy as np
import pixel_layer_test_utils as utils
import pixel_numpy_reference as ref
import pytest
import tensorflow as tf

from deeplab2_kmax.model import pixel_encoders
from deeplab2_kmax.model.pixel_decoder import kmax


def _tiny_encoder():
  return pixel_encoders.build_pixel_encoder(
      "resnet50", width_multiplier=0.125, blocks_per_stage=(1, 1, 1, 1),
      use_sync_batch_norm=False)


@pytest.mark.parametrize("output_stride,size", [(4, (65, 97)), (2, (64, 96))])
def test_tiny_decoder_shapes(output_stride, size):
  encoder = _tiny_encoder()
  decoder = kmax.KMaXPixelDecoder(
      high_resolution_output_stride=output_stride, width_multiplier=0.125,
      num_blocks=[1, 2, 1, 1, 1][:4 if output_stride == 4 else 5],
      drop_path_keep_prob=0.9, use_sync_batch_norm=False)
  height, width = size
  endpoints = encoder(tf.random.uniform([2, height, width, 3], -1, 1))
  outputs = decoder(endpoints, training=True)
  expected_strides = {"decoder_stage1": 32, "decoder_stage2": 16,
                      "decoder_stage3": 8, "decoder_output": output_stride}
  for key, stride in expected_strides.items():
    assert outputs[key].shape.as_list() == [
        2, -(-height // stride), -(-width // stride),
        decoder.output_channels[key]]
  assert decoder.output_channels["decoder_stage1"] == 4 * 64
  assert decoder.output_channels["decoder_output"] == (
      4 * (8 if output_stride == 4 else 4))


def test_decoder_wiring_matches_numpy():
  """LN on endpoints, stage blocks, fuse into the next LN-ed endpoint."""
  decoder = kmax.KMaXPixelDecoder(
      filters=[8, 4, 2, 2], num_blocks=[1, 1, 1, 1],
      block_types=["bottleneck"] * 4, use_sync_batch_norm=False)
  rng = np.random.default_rng(0)
  channels = {"stage2": 3, "stage3": 5, "stage4": 6, "stage5": 7}
  sizes = {"stage2": 9, "stage3": 5, "stage4": 3, "stage5": 2}
  endpoints = {k: rng.standard_normal([1, sizes[k], sizes[k], c]).astype(
      np.float32) for k, c in channels.items()}
  decoder(endpoints)
  utils.randomize(decoder, seed=1)
  v = utils.numpy_map(decoder)
  outputs = decoder(endpoints, training=False)

  def conv_bn(x, prefix, stride=1, rate=1):
    y = ref.conv2d(x, v[f"{prefix}/_conv/kernel"], stride, rate)
    return ref.batch_norm(y, *utils.bn_params(v, f"{prefix}/_batch_norm"))

  def block(x, prefix):
    a = ref.gelu(x)
    y = ref.gelu(conv_bn(a, f"{prefix}/_conv1_bn_act"))
    # DeepLab2 dilates the decoder's 3x3 convs by 2 at every stage.
    y = ref.gelu(conv_bn(y, f"{prefix}/_conv2_bn_act", rate=2))
    y = conv_bn(y, f"{prefix}/_conv3_bn")
    if f"{prefix}/_shortcut/_conv/kernel" in v:
      a = conv_bn(a, f"{prefix}/_shortcut")
    return y + a

  def norm(i, name):
    return ref.layer_norm(endpoints[name].astype(np.float64),
                          v[f"_backbone_norms/{i}/gamma"],
                          v[f"_backbone_norms/{i}/beta"])

  names = ["stage5", "stage4", "stage3", "stage2"]
  x = norm(0, "stage5")
  for i in range(4):
    x = block(x, f"_stages/{i}/_block1")
    key = "decoder_output" if i == 3 else f"decoder_stage{i + 1}"
    np.testing.assert_allclose(outputs[key].numpy(), x, rtol=2e-4, atol=2e-4)
    if i < 3:
      skip = norm(i + 1, names[i + 1])
      up = conv_bn(ref.gelu(x), f"_skip_connections/{i}/_resized_conv_bn1")
      size = skip.shape[1:3]
      x = (ref.resize_bilinear_align_corners(up, size) +
           conv_bn(ref.gelu(skip), f"_skip_connections/{i}/_resized_conv_bn2"))


def test_decoder_errors_name_the_argument():
  with pytest.raises(ValueError, match="high_resolution_output_stride"):
    kmax.KMaXPixelDecoder(high_resolution_output_stride=8)
  with pytest.raises(ValueError, match="block_types: 'conv' is not one of"):
    kmax.KMaXPixelDecoder(block_types=["axial", "conv", "axial", "axial"])
  with pytest.raises(ValueError, match="filters: needs 4 values"):
    kmax.KMaXPixelDecoder(filters=[8, 4])
  decoder = kmax.KMaXPixelDecoder(high_resolution_output_stride=2,
                                  width_multiplier=0.125)
  with pytest.raises(ValueError, match="stage1"):
    decoder({f"stage{i}": tf.zeros([1, 2, 2, 4]) for i in range(2, 6)})
