"""Resized fuse: project features and add them at one resolution.

MaX-DeepLab (Wang et al., CVPR 2021) stacked-decoder fusion, used between the
stages of kMaX-DeepLab's enhanced pixel decoder (kMaX-DeepLab §3.3, SPEC
§2.2). Each input is activated, projected by a 1x1 conv + BN to
`num_channels` (skipped when it already has them) and bilinearly resized
(align_corners=True) to the spatial size of the LAST input; the results are
summed without activation (the next block activates its input). As in
DeepLab2, an input exactly twice as large ((h + 1) // 2 == target) uses a
stride-2 1x1 conv instead of conv + resize.
"""

from typing import Callable
from typing import List

import tensorflow as tf
import tf_keras

from deeplab2_kmax.model.layers import activations
from deeplab2_kmax.model.layers import checkpoint_keys
from deeplab2_kmax.model.layers import convolutions


def resize_bilinear_align_corners(images: tf.Tensor, size) -> tf.Tensor:
  """Bilinear resize with aligned corners; identity for an equal size."""
  if images.shape[1] == size[0] and images.shape[2] == size[1]:
    return images
  return tf.raw_ops.ResizeBilinear(
      images=images, size=size, align_corners=True, half_pixel_centers=False)


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
