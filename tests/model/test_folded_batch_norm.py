"""Inference folds batch norm into the convolution: same output as conv, BN, act."""

import numpy as np
import pixel_layer_test_utils as utils
import pixel_numpy_reference as ref
import pytest
import tensorflow as tf

from deeplab2_kmax import precision
from deeplab2_kmax.model.layers import convolutions
from deeplab2_kmax.model.layers import rewrites

_ACTIVATIONS = {None: lambda x: x, "relu": ref.relu, "gelu": ref.gelu}


def _bn_numpy(layer):
  bn = layer._batch_norm
  return tuple(v.numpy().astype(np.float64) for v in (
      bn.gamma, bn.beta, bn.moving_mean, bn.moving_variance))


@pytest.mark.parametrize(
    "kernel,stride,rate,size,activation",
    [(1, 1, 1, 6, "gelu"),   # A [pixels, C] matmul.
     (1, 1, 1, 5, None),
     (1, 2, 1, 7, "relu"),   # Strided 1x1: a convolution.
     (3, 1, 1, 6, "gelu"),
     (3, 2, 1, 7, "relu"),   # DeepLab's symmetric padding.
     (3, 1, 2, 6, None),     # Dilated, every tap live.
     (3, 1, 6, 4, "gelu")])  # Only the centre tap is live: a matmul.
def test_conv2d_bn_inference_matches_numpy(kernel, stride, rate, size,
                                           activation):
  layer = convolutions.Conv2DBN(
      5, kernel, name="conv", strides=stride, atrous_rate=rate,
      activation=activation, bn_layer=convolutions.batch_norm_class())
  x = np.random.default_rng(kernel + 10 * stride + 100 * rate).standard_normal(
      [2, size, size + 1, 4]).astype(np.float32)
  layer(x)
  utils.randomize(layer, seed=rate)
  expected = _ACTIVATIONS[activation](ref.batch_norm(
      ref.conv2d(x.astype(np.float64),
                 layer._conv.kernel.numpy().astype(np.float64), stride, rate),
      *_bn_numpy(layer), epsilon=layer._batch_norm.epsilon))
  actual = tf.function(lambda v: layer(v, training=False))(x).numpy()
  np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("stride", [1, 2])
def test_depthwise_conv_bn_inference_matches_numpy(stride):
  layer = convolutions.DepthwiseConv2DBN(
      3, name="conv", strides=stride, activation="gelu",
      bn_layer=convolutions.batch_norm_class())
  x = np.random.default_rng(stride).standard_normal([1, 7, 6, 4]).astype(
      np.float32)
  layer(x)
  utils.randomize(layer, seed=4)
  kernel = layer._depthwise_conv.depthwise_kernel.numpy().astype(np.float64)
  per_channel = np.concatenate([
      ref.conv2d(x[..., c:c + 1].astype(np.float64), kernel[:, :, c:c + 1],
                 stride) for c in range(4)], axis=-1)
  expected = ref.gelu(ref.batch_norm(per_channel, *_bn_numpy(layer),
                                     epsilon=layer._batch_norm.epsilon))
  actual = tf.function(lambda v: layer(v, training=False))(x).numpy()
  np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


def test_conv1d_bn_inference_matches_numpy():
  layer = convolutions.Conv1DBN(6, name="conv", activation="gelu",
                                bn_layer=convolutions.batch_norm_class())
  x = np.random.default_rng(0).standard_normal([2, 7, 3]).astype(np.float32)
  layer(x)
  utils.randomize(layer, seed=1)
  kernel = layer._conv.kernel.numpy().astype(np.float64)[0]
  expected = ref.gelu(ref.batch_norm(x.astype(np.float64) @ kernel,
                                     *_bn_numpy(layer),
                                     epsilon=layer._batch_norm.epsilon))
  np.testing.assert_allclose(layer(x, training=False).numpy(), expected,
                             rtol=1e-5, atol=1e-5)


def test_training_uses_batch_statistics_not_the_fold():
  layer = convolutions.Conv2DBN(3, 1, name="conv",
                                bn_layer=convolutions.batch_norm_class())
  x = np.random.default_rng(2).standard_normal([2, 4, 4, 2]).astype(np.float32)
  layer(x)
  utils.randomize(layer, seed=3)
  y = x.astype(np.float64) @ layer._conv.kernel.numpy().astype(np.float64)[0, 0]
  gamma, beta, _, _ = _bn_numpy(layer)
  expected = ref.batch_norm(y, gamma, beta, y.mean(axis=(0, 1, 2)),
                            y.var(axis=(0, 1, 2)),
                            epsilon=layer._batch_norm.epsilon)
  np.testing.assert_allclose(layer(x, training=True).numpy(), expected,
                             rtol=1e-4, atol=1e-4)


def test_folded_pointwise_conv_is_one_matmul_without_batch_norm_ops():
  layer = convolutions.Conv2DBN(8, 1, name="conv", activation="gelu",
                                bn_layer=convolutions.batch_norm_class())
  x = tf.zeros([1, 5, 5, 4])
  layer(x)
  graph = tf.function(lambda v: layer(v, training=False)).get_concrete_function(
      x).graph
  ops = {op.type for op in graph.get_operations()}
  assert "MatMul" in ops and "BiasAdd" in ops
  assert not ops & {"Conv2D", "FusedBatchNormV3"}


def test_deeplab2_order_of_operations_keeps_the_batch_norm():
  layer = convolutions.Conv2DBN(8, 1, name="conv", activation="gelu",
                                bn_layer=convolutions.batch_norm_class())
  x = tf.zeros([1, 5, 5, 4])
  layer(x)
  with rewrites.deeplab2_order_of_operations():
    graph = tf.function(lambda v: layer(v, training=False)
                        ).get_concrete_function(x).graph
  ops = {op.type for op in graph.get_operations()}
  assert "Conv2D" in ops and "MatMul" not in ops  # The layers as built.
  assert "Erfc" in ops and "Erf" not in ops  # tf.nn.gelu, as DeepLab2's.
  assert convolutions.fast_inference(False)  # The scope has ended.


@pytest.mark.parametrize("kernel", [1, 3])
def test_bfloat16_inference_folds_in_float32(kernel):
  with precision.policy_scope(precision.BFLOAT16):
    layer = convolutions.Conv2DBN(6, kernel, name="conv", activation="gelu",
                                  bn_layer=convolutions.batch_norm_class())
  x = np.random.default_rng(kernel).standard_normal([1, 5, 6, 4]).astype(
      np.float32)
  layer(x)
  utils.randomize(layer, seed=kernel)
  expected = ref.gelu(ref.batch_norm(
      ref.conv2d(x.astype(np.float64),
                 layer._conv.kernel.numpy().astype(np.float64)),
      *_bn_numpy(layer), epsilon=layer._batch_norm.epsilon))
  actual = tf.function(lambda v: layer(v, training=False))(x)
  assert actual.dtype == tf.bfloat16
  # bfloat16 keeps 8 significant bits: a few 2^-8 of the output's scale.
  np.testing.assert_allclose(tf.cast(actual, tf.float32).numpy(), expected,
                             rtol=0, atol=0.03 * np.abs(expected).max())
