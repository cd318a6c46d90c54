"""Resized fuse: project features and add them at one resolution.

MaX-DeepLab (Wang et al., CVPR 2021) stacked-decoder fusion, used between the
stages of kMaX-DeepLab's enhanced pixel decoder (kMaX-DeepLab §3.3). Each
input is activated, projected by a 1x1 conv + BN to `num_channels`
(skipped when it already has them) and bilinearly resized
(align_corners=True) to the spatial size of the LAST input; the results are
summed without activation (the next block activates its input). As in
DeepLab2, an input exactly twice as large ((h + 1) // 2 == target) uses a
stride-2 1x1 conv instead of conv + resize.
"""

from typing import Callable
from typing import List

import numpy as np
import tensorflow as tf
import tf_keras

from deeplab2_kmax.model.layers import activations
from deeplab2_kmax.model.layers import checkpoint_keys
from deeplab2_kmax.model.layers import convolutions


def resize_bilinear_align_corners(images: tf.Tensor, size) -> tf.Tensor:
  """Bilinear resize with aligned corners; identity for an equal size.

  Under XLA the resize is written as row and column gathers with static
  weights: XLA's own lowering of ResizeBilinear on CPU is several times
  slower (figures in `docs/performance.md`).
  """
  if images.shape[1] == size[0] and images.shape[2] == size[1]:
    return images
  static = all(isinstance(n, int) for n in (*images.shape[1:3], *size))
  if static and _in_xla_context():
    return resize_by_gathers(images, size)
  # The kernel always returns float32; back to the input's (mixed precision).
  return tf.cast(tf.raw_ops.ResizeBilinear(
      images=images, size=size, align_corners=True, half_pixel_centers=False),
                 images.dtype)


def resize_by_gathers(images: tf.Tensor, size) -> tf.Tensor:
  """ResizeBilinear(align_corners=True) as gathers and lerps.

  Same arithmetic as TensorFlow's CPU kernel (source position = index x
  float32 scale; lerp along the width for the upper and lower rows, then
  along the height), so bit-identical outside XLA.
  """
  (top, bottom, y_weight), (left, right, x_weight) = (
      _taps(images.shape[1], size[0]), _taps(images.shape[2], size[1]))
  x_weight = tf.cast(x_weight[:, np.newaxis], images.dtype)
  y_weight = tf.cast(y_weight[:, np.newaxis, np.newaxis], images.dtype)

  def along_width(rows):
    left_px = tf.gather(rows, left, axis=2)
    return left_px + (tf.gather(rows, right, axis=2) - left_px) * x_weight

  upper = along_width(tf.gather(images, top, axis=1))
  lower = along_width(tf.gather(images, bottom, axis=1))
  return upper + (lower - upper) * y_weight


def resize_nearest_align_corners(labels: tf.Tensor, size) -> tf.Tensor:
  """Nearest-neighbour resize of [B, h, w] labels with aligned corners.

  Output pixel i reads source pixel round(i (h - 1) / (H - 1)) (halves
  round up), so corners and every source pixel's aligned position keep
  their label; identity for an equal size. Static shapes only.
  """
  if labels.shape[1] == size[0] and labels.shape[2] == size[1]:
    return labels
  rows = _nearest_taps(labels.shape[1], size[0])
  cols = _nearest_taps(labels.shape[2], size[1])
  return tf.gather(tf.gather(labels, rows, axis=1), cols, axis=2)


def _nearest_taps(in_size: int, out_size: int) -> np.ndarray:
  scale = (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
  nearest = np.floor(np.arange(out_size) * scale + 0.5)
  return np.minimum(nearest, in_size - 1).astype(np.int32)


def _taps(in_size: int, out_size: int):
  """Lower / upper source index and weight of each output index."""
  scale = np.float32((in_size - 1) / np.float32(out_size - 1) if out_size > 1
                     else in_size / np.float32(out_size))
  position = np.arange(out_size, dtype=np.float32) * scale
  lower = np.floor(position)
  return (lower.astype(np.int32),
          np.minimum(lower.astype(np.int32) + 1, in_size - 1),
          (position - lower).astype(np.float32))


def _in_xla_context() -> bool:
  """True while tracing inside a jit_compile=True function."""
  try:
    from tensorflow.python.ops import control_flow_util  # pylint: disable=g-import-not-at-top
  except ImportError:  # Private module moved: keep the generic kernel.
    return False
  return control_flow_util.GraphOrParentsInXlaContext(
      tf.compat.v1.get_default_graph())


class ResizedFuse(tf_keras.layers.Layer):
  """Sums inputs projected to `num_channels` at the last input's size."""

  def __init__(self,
               num_channels: int,
               name: str,
               activation: str = "gelu",
               bn_layer: Callable[..., tf_keras.layers.Layer] = (
                   tf_keras.layers.BatchNormalization)):
    super().__init__(name=name)
    self._num_channels = num_channels
    self._activation_fn = activations.get(activation)
    self._bn_layer = bn_layer
    self._projections: List = []
    self._strided: List[bool] = []

  def build(self, input_shapes):
    target_height, target_width = input_shapes[-1][1:3]
    for index, shape in enumerate(input_shapes):
      height, width, channels = shape[1:4]
      strided = ((height + 1) // 2 == target_height and
                 (width + 1) // 2 == target_width)
      projection = None
      if channels != self._num_channels:
        prefix = "strided" if strided else "resized"
        projection = convolutions.Conv2DBN(
            self._num_channels, 1, name=f"{prefix}_conv_bn{index + 1}",
            strides=2 if strided else 1, bn_layer=self._bn_layer)
      self._projections.append(projection)
      self._strided.append(strided)
    super().build(input_shapes)

  def call(self, inputs, training=False):
    target_size = inputs[-1].shape[1:3]
    outputs = []
    for feature, projection in zip(inputs, self._projections):
      if projection is not None:
        feature = projection(self._activation_fn(feature), training=training)
      outputs.append(resize_bilinear_align_corners(feature, target_size))
    return tf.add_n(outputs)

  def deeplab2_variable_map(self) -> checkpoint_keys.VariableMap:
    maps = []
    for index, (projection, strided) in enumerate(
        zip(self._projections, self._strided)):
      if projection is not None:
        prefix = "strided" if strided else "resized"
        maps.append(checkpoint_keys.prefixed(
            f"_{prefix}_conv_bn{index + 1}",
            checkpoint_keys.conv_bn_map(projection)))
    return checkpoint_keys.merge(*maps)
