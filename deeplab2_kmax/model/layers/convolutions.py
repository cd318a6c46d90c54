"""Convolution + batch-norm + activation building blocks.

Every convolution in kMaX-DeepLab is followed (optionally) by batch norm and an
activation. Two conventions from DeepLab2 matter for numeric parity with its
checkpoints:

* Strided 2-D convolutions pad symmetrically, ``(k_eff - 1) // 2`` on the
  top-left and the rest on the bottom-right, then convolve with 'valid'
  padding. Stride-1 convolutions use 'same' padding.
* Kernels are He-normal initialised; batch norm takes its momentum and epsilon
  from `layers/spec.BatchNormSpec` (`batch_norm_class`).

The kernel and batch-norm variables live in sub-layers named ``conv`` (or
``depthwise_conv``) and ``batch_norm``.
"""

import functools
from typing import Callable
from typing import Optional

import tensorflow as tf
import tf_keras

from deeplab2_kmax.model import spec_checks
from deeplab2_kmax.model.layers import activations
from deeplab2_kmax.model.layers import recompute
from deeplab2_kmax.model.layers import rewrites
from deeplab2_kmax.model.layers import spec as layer_spec


class _UpdatedOncePerStep:
  """Skips the moving-average updates while a block is being recomputed."""

  skips_updates_when_recomputed = True

  def add_update(self, updates):
    if not recompute.updates_frozen():
      super().add_update(updates)  # pytype: disable=attribute-error


class BatchNormalization(_UpdatedOncePerStep,
                         tf_keras.layers.BatchNormalization):
  """Keras batch norm whose moving averages ignore recomputed passes."""


class SyncBatchNormalization(
    _UpdatedOncePerStep, tf_keras.layers.experimental.SyncBatchNormalization):
  """Keras synchronised batch norm that ignores recomputed passes."""


def batch_norm_class(spec: Optional[layer_spec.BatchNormSpec] = None,
                     **fields) -> Callable[..., tf_keras.layers.Layer]:
  """Returns the batch-norm layer factory (the class with these options).

  Takes a `BatchNormSpec`, its fields by keyword, or both. Synchronised batch
  norm averages statistics over all replicas of a distribution strategy
  and equals plain batch norm on one replica. Both update their
  moving averages once per step under `recompute`.
  """
  spec = spec_checks.resolve(layer_spec.BatchNormSpec, spec, fields)
  layer = (SyncBatchNormalization if spec.use_sync_batch_norm
           else BatchNormalization)
  return functools.partial(layer, momentum=spec.momentum, epsilon=spec.epsilon)


def _live_taps(kernel_size: int, atrous_rate: int, size) -> slice:
  """The kernel taps of a 'same'-padded dilated axis that can meet the input.

  A tap at offset d = (j - kernel_size // 2) * atrous_rate reads only padding
  when |d| >= size, so dropping it leaves the output unchanged. On a 4x4 os32
  map, ASPP's 3x3 convolutions at rates 6 / 12 / 18 are 1x1 convolutions.
  """
  if size is None or kernel_size % 2 == 0:
    return slice(0, kernel_size)
  centre = kernel_size // 2
  reach = min(centre, (size - 1) // atrous_rate)
  return slice(centre - reach, centre + reach + 1)


def _symmetric_padding(kernel_size: int, atrous_rate: int):
  effective = kernel_size + (kernel_size - 1) * (atrous_rate - 1)
  total = effective - 1
  return total // 2, total - total // 2


def folded_batch_norm(batch_norm: tf_keras.layers.Layer):
  """(scale, offset) with batch_norm(x) = x * scale + offset at inference.

  From the moving statistics: scale = gamma / sqrt(variance + epsilon),
  offset = beta - mean * scale (float32, shape [channels]).
  """
  def read(variable):
    return tf.cast(variable, tf.float32)

  scale = tf.math.rsqrt(read(batch_norm.moving_variance) + batch_norm.epsilon)
  if batch_norm.gamma is not None:
    scale *= read(batch_norm.gamma)
  offset = -read(batch_norm.moving_mean) * scale
  if batch_norm.beta is not None:
    offset += read(batch_norm.beta)
  return scale, offset


def fold_into_kernel(kernel, bias, batch_norm, dtype):
  """`kernel` and `bias` (in `dtype`) with an inference batch norm folded in.

  batch_norm(x @ kernel + bias) = x @ (kernel * scale) + (bias * scale +
  offset), with (scale, offset) from `folded_batch_norm`, computed in
  float32 and then cast. `batch_norm` and `bias` may be None.
  """
  if batch_norm is not None:
    scale, offset = folded_batch_norm(batch_norm)
    if bias is not None:
      offset += tf.cast(bias, tf.float32) * scale
    kernel, bias = tf.cast(kernel, tf.float32) * scale, offset
  return (tf.cast(kernel, dtype),
          None if bias is None else tf.cast(bias, dtype))


def _bias_activation(y, bias, activation):
  if bias is not None:
    y = tf.nn.bias_add(y, bias)
  return y if activation is None else activation(y)


def pointwise_matmul(x, kernel, bias=None, activation=None):
  """x @ kernel (+ bias, activation) over the last axis of [..., C].

  Runs as one [pixels, C] x [C, D] matmul, which oneDNN fuses with the bias
  and the activation (GELU included); a 1x1 convolution's fusion does not
  take GELU.
  """
  y = _bias_activation(tf.matmul(tf.reshape(x, [-1, x.shape[-1]]), kernel),
                       bias, activation)
  shape = tf.concat([tf.shape(x)[:-1], kernel.shape[-1:]], 0)
  static = x.shape[:-1].concatenate(kernel.shape[-1:])
  return tf.ensure_shape(tf.reshape(y, shape), static)


def is_inference(training) -> bool:
  """True for a Python False/None `training` (not a tensor)."""
  return not isinstance(training, (tf.Tensor, tf.Variable)) and not training


def fast_inference(training) -> bool:
  """Whether a call with `training` takes the rewritten inference paths.

  True at inference (`is_inference`) with the rewrites enabled
  (`rewrites.deeplab2_order_of_operations` switches them off).
  """
  return is_inference(training) and rewrites.enabled()


class _NormActMixin:
  """Adds the optional batch norm and activation after a convolution.

  At inference the batch norm is folded into the kernel and a bias
  (`folded_batch_norm`, in float32, then cast to the compute dtype): one
  convolution + bias + activation, which TensorFlow's CPU (oneDNN) and GPU
  kernels run as one fused op; a 1x1, stride-1 convolution runs as a
  matmul, whose fusion also takes GELU. The result equals convolution,
  batch norm, activation up to rounding. Under mixed precision the kernel
  is read in the compute dtype (Keras' autocast), so the folded kernel is
  rounded twice; bfloat16 keeps its usual 2-3 significant digits.
  """

  def _make_norm_act(self, axis, use_bn, bn_layer, bn_gamma_initializer,
                     activation):
    self._batch_norm = None
    if use_bn:
      self._batch_norm = bn_layer(
          axis=axis, name="batch_norm", gamma_initializer=bn_gamma_initializer)
    self._activation_fn = activations.get(activation)

  def _norm_act(self, x, training):
    if self._batch_norm is not None:
      x = self._batch_norm(x, training=training)
    if self._activation_fn is not None:
      x = self._activation_fn(x)
    return x

  def _folds(self, conv, x, training) -> bool:
    """Whether this call takes the folded inference path."""
    return (fast_inference(training) and conv.built and x.dtype.is_floating
            and (self._batch_norm is None or self._batch_norm.built))

  def _folded_kernel_and_bias(self, kernel, bias, dtype):
    """The kernel and bias (in `dtype`) with the batch norm folded in."""
    return fold_into_kernel(kernel, bias, self._batch_norm, dtype)

  def _bias_act(self, y, bias):
    return _bias_activation(y, bias, self._activation_fn)

  def _pointwise_folded(self, x, kernel, bias):
    """1x1 stride-1 convolution of [..., C] as a [pixels, C] matmul."""
    kernel, bias = self._folded_kernel_and_bias(
        tf.reshape(kernel, kernel.shape[-2:]), bias, x.dtype)
    return pointwise_matmul(x, kernel, bias, self._activation_fn)


class Conv2DBN(_NormActMixin, tf_keras.layers.Layer):
  """2-D convolution with DeepLab padding, optional batch norm and activation."""

  def __init__(self,
               output_channels: int,
               kernel_size: int,
               name: str,
               strides: int = 1,
               atrous_rate: int = 1,
               use_bias: bool = False,
               use_bn: bool = True,
               bn_layer: Callable[..., tf_keras.layers.Layer] = (
                   tf_keras.layers.BatchNormalization),
               bn_gamma_initializer: str = "ones",
               activation: Optional[str] = None,
               kernel_initializer="he_normal"):
    super().__init__(name=name)
    if use_bn and use_bias:
      raise ValueError(f"{name}: a convolution bias before batch norm is "
                       "redundant; set use_bias=False.")
    self._strides = strides
    self._kernel_size = kernel_size
    self._atrous_rate = atrous_rate
    self._pad = None
    padding = "same"
    if strides != 1:
      self._pad = _symmetric_padding(kernel_size, atrous_rate)
      padding = "valid"
    self._conv = tf_keras.layers.Conv2D(
        output_channels,
        kernel_size,
        strides=strides,
        padding=padding,
        dilation_rate=atrous_rate,
        use_bias=use_bias,
        kernel_initializer=kernel_initializer,
        name="conv")
    self._make_norm_act(3, use_bn, bn_layer, bn_gamma_initializer, activation)

  def call(self, inputs, training=False):
    x = inputs
    if self._pad is not None:
      begin, end = self._pad
      x = tf.pad(x, [[0, 0], [begin, end], [begin, end], [0, 0]])
    rows = cols = slice(0, self._kernel_size)
    if self._pad is None and self._atrous_rate > 1 and self._conv.built:
      rows, cols = (_live_taps(self._kernel_size, self._atrous_rate, n)
                    for n in x.shape[1:3])
    live = (rows.stop - rows.start) * (cols.stop - cols.start)
    if self._folds(self._conv, x, training):
      return self._folded_call(x, rows, cols)
    if live < self._kernel_size**2:
      return self._norm_act(self._conv_live_taps(x, rows, cols), training)
    return self._norm_act(self._conv(x), training)

  def _folded_call(self, x, rows: slice, cols: slice):
    """Inference: convolution + bias + activation, batch norm folded in."""
    kernel, bias = self._conv.kernel[rows, cols], self._conv.bias
    if kernel.shape[:2] == (1, 1) and self._strides == 1:
      return self._pointwise_folded(x, kernel, bias)
    kernel, bias = self._folded_kernel_and_bias(kernel, bias, x.dtype)
    y = tf.nn.conv2d(x, kernel, strides=self._strides,
                     padding="VALID" if self._pad is not None else "SAME",
                     dilations=self._atrous_rate)
    return self._bias_act(y, bias)

  def _conv_live_taps(self, x, rows: slice, cols: slice):
    """The same convolution with the taps that read only padding left out
    (a large speed-up for atrous convolutions on small maps). The first call
    runs the full convolution, so that Keras creates the variables (with
    their names and under any distribution strategy) as usual."""
    kernel = self._conv.kernel[rows, cols]
    y = tf.nn.conv2d(x, tf.cast(kernel, x.dtype), strides=1, padding="SAME",
                     dilations=self._atrous_rate)
    if self._conv.use_bias:
      y = tf.nn.bias_add(y, tf.cast(self._conv.bias, y.dtype))
    return y


class DepthwiseConv2DBN(_NormActMixin, tf_keras.layers.Layer):
  """Depthwise 2-D convolution with optional batch norm and activation."""

  def __init__(self,
               kernel_size: int,
               name: str,
               strides: int = 1,
               atrous_rate: int = 1,
               use_bias: bool = False,
               use_bn: bool = True,
               bn_layer: Callable[..., tf_keras.layers.Layer] = (
                   tf_keras.layers.BatchNormalization),
               bn_gamma_initializer: str = "ones",
               activation: Optional[str] = None,
               depthwise_initializer="glorot_uniform"):
    super().__init__(name=name)
    if use_bn and use_bias:
      raise ValueError(f"{name}: a convolution bias before batch norm is "
                       "redundant; set use_bias=False.")
    self._pad = None
    padding = "same"
    if strides != 1:
      self._pad = _symmetric_padding(kernel_size, atrous_rate)
      padding = "valid"
    self._depthwise_conv = tf_keras.layers.DepthwiseConv2D(
        kernel_size,
        strides=strides,
        padding=padding,
        dilation_rate=atrous_rate,
        use_bias=use_bias,
        depthwise_initializer=depthwise_initializer,
        name="depthwise_conv")
    self._make_norm_act(3, use_bn, bn_layer, bn_gamma_initializer, activation)

  def call(self, inputs, training=False):
    x = inputs
    if self._pad is not None:
      begin, end = self._pad
      x = tf.pad(x, [[0, 0], [begin, end], [begin, end], [0, 0]])
    conv = self._depthwise_conv
    if self._folds(conv, x, training):
      # Kernel [k, k, C, 1]: the batch norm scales its channel axis.
      kernel, bias = self._folded_kernel_and_bias(
          tf.transpose(conv.depthwise_kernel, [0, 1, 3, 2]), conv.bias,
          x.dtype)
      y = tf.nn.depthwise_conv2d(
          x, tf.transpose(kernel, [0, 1, 3, 2]), strides=[1, *conv.strides, 1],
          padding=conv.padding.upper(), dilations=conv.dilation_rate)
      return self._bias_act(y, bias)
    return self._norm_act(conv(x), training)


class SeparableConv2DBN(tf_keras.layers.Layer):
  """Depthwise conv (+BN+act) followed by a 1x1 pointwise conv (+BN+act)."""

  def __init__(self,
               output_channels: int,
               kernel_size: int,
               name: str,
               strides: int = 1,
               atrous_rate: int = 1,
               use_bn: bool = True,
               bn_layer: Callable[..., tf_keras.layers.Layer] = (
                   tf_keras.layers.BatchNormalization),
               activation: Optional[str] = None):
    super().__init__(name=name)
    self._depthwise = DepthwiseConv2DBN(
        kernel_size,
        name="depthwise",
        strides=strides,
        atrous_rate=atrous_rate,
        use_bias=not use_bn,
        use_bn=use_bn,
        bn_layer=bn_layer,
        activation=activation)
    self._pointwise = Conv2DBN(
        output_channels,
        1,
        name="pointwise",
        use_bias=not use_bn,
        use_bn=use_bn,
        bn_layer=bn_layer,
        activation=activation)

  def call(self, inputs, training=False):
    return self._pointwise(self._depthwise(inputs, training=training),
                           training=training)


class Conv1DBN(_NormActMixin, tf_keras.layers.Layer):
  """Kernel-size-1 convolution over [batch, length, channels] (+BN+act).

  Used on cluster centres, which form a length-N sequence.
  """

  def __init__(self,
               output_channels: int,
               name: str,
               use_bias: bool = False,
               use_bn: bool = True,
               bn_layer: Callable[..., tf_keras.layers.Layer] = (
                   tf_keras.layers.BatchNormalization),
               bn_gamma_initializer: str = "ones",
               activation: Optional[str] = None,
               kernel_initializer="he_normal"):
    super().__init__(name=name)
    if use_bn and use_bias:
      raise ValueError(f"{name}: a convolution bias before batch norm is "
                       "redundant; set use_bias=False.")
    self._conv = tf_keras.layers.Conv1D(
        output_channels,
        kernel_size=1,
        use_bias=use_bias,
        kernel_initializer=kernel_initializer,
        name="conv")
    self._make_norm_act(2, use_bn, bn_layer, bn_gamma_initializer, activation)

  def call(self, inputs, training=False):
    if self._folds(self._conv, inputs, training):
      return self._pointwise_folded(inputs, self._conv.kernel, self._conv.bias)
    return self._norm_act(self._conv(inputs), training)
