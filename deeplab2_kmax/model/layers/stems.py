"""Backbone stems: the first convolutions down to output stride 2.

* ResNet: one 7x7 stride-2 conv + BN (He et al. 2016).
* Inception ("beta") stem of MaX-S / Axial-DeepLab (Szegedy et al. 2017):
  3x3 stride-2 conv (64) + BN + act, 3x3 conv (64) + BN + act, 3x3 conv (128)
  + BN.
Both return a non-activated feature; the next block activates it.
"""

from typing import Callable

import tf_keras

from deeplab2_kmax.model.layers import checkpoint_keys
from deeplab2_kmax.model.layers import convolutions


def resnet_stem(channels: int, bn_layer: Callable[..., tf_keras.layers.Layer],
                name: str = "stem") -> convolutions.Conv2DBN:
  return convolutions.Conv2DBN(
      channels, 7, name=name, strides=2, bn_layer=bn_layer)


class InceptionStem(tf_keras.layers.Layer):
  """Three 3x3 convolutions, the first with stride 2."""

  def __init__(self,
               width_multiplier: float = 1.0,
               activation: str = "relu",
               bn_layer: Callable[..., tf_keras.layers.Layer] = (
                   tf_keras.layers.BatchNormalization),
               name: str = "stem"):
    super().__init__(name=name)
    narrow = int(64 * width_multiplier)
    self._output_channels = int(128 * width_multiplier)
    self._conv1 = convolutions.Conv2DBN(
        narrow, 3, name="conv1_bn_act", strides=2, bn_layer=bn_layer,
        activation=activation)
    self._conv2 = convolutions.Conv2DBN(
        narrow, 3, name="conv2_bn_act", bn_layer=bn_layer,
        activation=activation)
    self._conv3 = convolutions.Conv2DBN(
        self._output_channels, 3, name="conv3_bn", bn_layer=bn_layer)

  @property
  def output_channels(self) -> int:
    return self._output_channels

  def call(self, inputs, training=False):
    x = self._conv1(inputs, training=training)
    x = self._conv2(x, training=training)
    return self._conv3(x, training=training)

  def deeplab2_variable_map(self) -> checkpoint_keys.VariableMap:
    return checkpoint_keys.merge(
        checkpoint_keys.prefixed("_conv1_bn_act",
                                 checkpoint_keys.conv_bn_map(self._conv1)),
        checkpoint_keys.prefixed("_conv2_bn_act",
                                 checkpoint_keys.conv_bn_map(self._conv2)),
        checkpoint_keys.prefixed("_conv3_bn",
                                 checkpoint_keys.conv_bn_map(self._conv3)))


def stem_variable_map(stem: tf_keras.layers.Layer) -> checkpoint_keys.VariableMap:
  """DeepLab2 keys of either stem, relative to the stem."""
  if isinstance(stem, InceptionStem):
    return stem.deeplab2_variable_map()
  return checkpoint_keys.conv_bn_map(stem)
