"""Bottleneck / axial blocks and the resized fuse vs. NumPy references."""

import numpy as np
import pixel_layer_test_utils as utils
import pixel_numpy_reference as ref
import tensorflow as tf

from deeplab2_kmax.model.layers import blocks
from deeplab2_kmax.model.layers import resized_fuse


def _conv_bn(x, values, prefix, stride=1):
  y = ref.conv2d(x, values[f"{prefix}/_conv/kernel"], stride)
  return ref.batch_norm(y, *utils.bn_params(values, f"{prefix}/_batch_norm"))


def test_strided_bottleneck_block_matches_numpy():
  block = blocks.BottleneckBlock(3, name="block1", strides=2,
                                 activation="relu")
  x = np.random.default_rng(0).standard_normal([2, 7, 6, 5]).astype(np.float32)
  block(x)
  utils.randomize(block, seed=1)
  values = utils.numpy_map(block)
  assert "_shortcut/_conv/kernel" in values  # 5 != 4 * 3 channels.
  a = ref.relu(x.astype(np.float64))
  y = ref.relu(_conv_bn(a, values, "_conv1_bn_act"))
  y = ref.relu(_conv_bn(y, values, "_conv2_bn_act", stride=2))
  y = _conv_bn(y, values, "_conv3_bn")
  expected = y + _conv_bn(a, values, "_shortcut", stride=2)
  actual = block(x, training=False).numpy()
  assert actual.shape == (2, 4, 3, 12)
  np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4)


def test_identity_shortcut_and_zero_init_gamma():
  block = blocks.BottleneckBlock(2, name="block2", activation="gelu")
  x = tf.random.normal([1, 4, 4, 8])
  # At initialisation the last BN has gamma 0: the block is act(x).
  y = block(x, training=False)
  assert block.deeplab2_variable_map().keys().isdisjoint({"_shortcut/_conv/kernel"})
  np.testing.assert_allclose(y.numpy(), ref.gelu(x.numpy().astype(np.float64)),
                             rtol=1e-5, atol=1e-5)


def test_axial_block_matches_numpy():
  block = blocks.BottleneckBlock(8, name="block1", use_axial_attention=True,
                                 activation="gelu")
  x = np.random.default_rng(2).standard_normal([1, 3, 4, 6]).astype(np.float32)
  block(x)
  utils.randomize(block, seed=3)
  values = utils.numpy_map(block)
  assert values["_conv1_bn_act/_conv/kernel"].shape == (1, 1, 6, 16)
  assert values["_attention/_height_axis/qkv_kernel"].shape == (16, 32)
  a = ref.gelu(x.astype(np.float64))
  y = ref.gelu(_conv_bn(a, values, "_conv1_bn_act"))

  def attend(seq, prefix):
    return ref.axial_attention_1d(
        seq, values[f"{prefix}qkv_kernel"],
        values[f"{prefix}_query_rpe/embeddings"],
        values[f"{prefix}_key_rpe/embeddings"],
        values[f"{prefix}_value_rpe/embeddings"], 8, 16, 8,
        utils.bn_params(values, f"{prefix}_batch_norm_qkv"),
        utils.bn_params(values, f"{prefix}_batch_norm_similarity",
                        squeeze=True),
        [p.reshape(2, 8, -1) for p in utils.bn_params(
            values, f"{prefix}_batch_norm_retrieved_output")])

  cols = np.transpose(y, [0, 2, 1, 3]).reshape(4, 3, 16)
  y = np.transpose(attend(cols, "_attention/_height_axis/").reshape(1, 4, 3, 16),
                   [0, 2, 1, 3])
  y = attend(y.reshape(3, 4, 16), "_attention/_width_axis/").reshape(1, 3, 4, 16)
  y = _conv_bn(ref.gelu(y), values, "_conv3_bn")
  expected = y + _conv_bn(a, values, "_shortcut")
  np.testing.assert_allclose(block(x, training=False).numpy(), expected,
                             rtol=2e-4, atol=2e-4)


def test_resized_fuse_matches_numpy():
  fuse = resized_fuse.ResizedFuse(4, name="fuse", activation="gelu")
  rng = np.random.default_rng(4)
  low = rng.standard_normal([1, 3, 4, 6]).astype(np.float32)
  skip = rng.standard_normal([1, 5, 7, 3]).astype(np.float32)
  fuse([low, skip])
  utils.randomize(fuse, seed=5)
  values = utils.numpy_map(fuse)
  assert set(values) == {f"_resized_conv_bn{i}/{n}" for i in (1, 2) for n in (
      "_conv/kernel", "_batch_norm/gamma", "_batch_norm/beta",
      "_batch_norm/moving_mean", "_batch_norm/moving_variance")}
  a = _conv_bn(ref.gelu(low.astype(np.float64)), values, "_resized_conv_bn1")
  b = _conv_bn(ref.gelu(skip.astype(np.float64)), values, "_resized_conv_bn2")
  expected = ref.resize_bilinear_align_corners(a, (5, 7)) + b
  np.testing.assert_allclose(fuse([low, skip], training=False).numpy(),
                             expected, rtol=1e-4, atol=1e-4)


def test_resized_fuse_skips_projection_when_channels_match():
  fuse = resized_fuse.ResizedFuse(3, name="fuse")
  low = tf.random.normal([1, 2, 2, 3])
  skip = tf.random.normal([1, 3, 3, 3])
  out = fuse([low, skip]).numpy()
  assert not fuse.variables
  expected = ref.resize_bilinear_align_corners(
      low.numpy().astype(np.float64), (3, 3)) + skip.numpy()
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
