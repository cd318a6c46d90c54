"""The auxiliary semantic branch (training only; its loss: kMaX-DeepLab §4).

COCO: a Panoptic-DeepLab style decoder on the backbone's os32 feature (ASPP
with three atrous rates and image pooling, then two fusions with projected
low-level features at os8 and os4, each a 5x5 depthwise-separable conv) and a
semantic head. Cityscapes: the semantic head alone, on the os32 feature.
"""

from typing import Callable
from typing import Dict
from typing import Sequence

import tensorflow as tf
import tf_keras

from deeplab2_kmax.model.heads import max_deeplab
from deeplab2_kmax.model.heads import spec as head_spec
from deeplab2_kmax.model.layers import checkpoint_keys
from deeplab2_kmax.model.layers import convolutions
from deeplab2_kmax.model.layers import resized_fuse


class ASPP(tf_keras.layers.Layer):
  """Atrous spatial pyramid pooling: 1x1, three atrous 3x3, image pooling."""

  def __init__(self, channels: int, atrous_rates: Sequence[int], name: str,
               activation: str = "gelu",
               bn_layer: Callable[..., tf_keras.layers.Layer] = (
                   tf_keras.layers.BatchNormalization)):
    super().__init__(name=name)
    if len(atrous_rates) != 3:
      raise ValueError(f"{name}: ASPP needs 3 atrous rates, got "
                       f"{list(atrous_rates)}.")
    conv = lambda k, n, rate=1: convolutions.Conv2DBN(  # pylint: disable=g-long-lambda
        channels, k, name=n, atrous_rate=rate, bn_layer=bn_layer,
        activation=activation)
    self._branch_1x1 = conv(1, "conv_bn_act")
    self._branches_atrous = [conv(3, f"aspp_conv{i + 1}", rate)
                             for i, rate in enumerate(atrous_rates)]
    self._pool_conv = conv(1, "aspp_pool")
    self._project = conv(1, "proj_conv_bn_act")
    self._dropout = tf_keras.layers.Dropout(0.1)

  def call(self, inputs, training=False):
    height, width = inputs.shape[1], inputs.shape[2]
    pooled = tf.reduce_mean(inputs, axis=[1, 2], keepdims=True)
    pooled = self._pool_conv(pooled, training=training)
    pooled = tf.tile(pooled, [1, height, width, 1])
    branches = [self._branch_1x1(inputs, training=training)]
    branches += [b(inputs, training=training) for b in self._branches_atrous]
    x = tf.concat(branches + [pooled], axis=-1)
    return self._dropout(self._project(x, training=training), training=training)

  def deeplab2_variable_map(self) -> checkpoint_keys.VariableMap:
    maps = [
        checkpoint_keys.prefixed("_conv_bn_act",
                                 checkpoint_keys.conv_bn_map(self._branch_1x1)),
        checkpoint_keys.prefixed("_aspp_pool/_conv_bn_act",
                                 checkpoint_keys.conv_bn_map(self._pool_conv)),
        checkpoint_keys.prefixed("_proj_conv_bn_act",
                                 checkpoint_keys.conv_bn_map(self._project))]
    for i, branch in enumerate(self._branches_atrous):
      maps.append(checkpoint_keys.prefixed(
          f"_aspp_conv{i + 1}/_conv_bn_act", checkpoint_keys.conv_bn_map(branch)))
    return checkpoint_keys.merge(*maps)


class SemanticDecoder(tf_keras.layers.Layer):
  """ASPP on the high-level feature, then fusions with low-level features."""

  def __init__(self,
               spec: head_spec.SemanticBranchSpec,
               *,
               activation: str = "gelu",
               bn_layer: Callable[..., tf_keras.layers.Layer] = (
                   tf_keras.layers.BatchNormalization),
               name: str = "semantic_decoder"):
    super().__init__(name=name)
    self._high_level_key = spec.feature_key
    self._low_level_keys = spec.low_level_keys
    aspp_channels, atrous_rates = spec.aspp_channels, spec.atrous_rates
    low_level_channels = spec.low_level_channels
    decoder_channels = spec.decoder_channels
    self._aspp = ASPP(aspp_channels, atrous_rates, "aspp",
                      activation=activation, bn_layer=bn_layer)
    self._low_level_convs = [
        convolutions.Conv2DBN(c, 1, name=f"low_level_conv{i + 1}",
                              bn_layer=bn_layer, activation=activation)
        for i, c in enumerate(low_level_channels)]
    self._fusion_convs = [
        convolutions.SeparableConv2DBN(decoder_channels, 5,
                                       name=f"fusion_conv{i + 1}",
                                       bn_layer=bn_layer, activation=activation)
        for i in range(len(low_level_channels))]

  def call(self, features: Dict[str, tf.Tensor], training=False):
    x = self._aspp(features[self._high_level_key], training=training)
    for key, project, fuse in zip(self._low_level_keys, self._low_level_convs,
                                  self._fusion_convs):
      low = project(features[key], training=training)
      x = resized_fuse.resize_bilinear_align_corners(x, low.shape[1:3].as_list())
      x = fuse(tf.concat([x, low], axis=-1), training=training)
    return x

  def deeplab2_variable_map(self) -> checkpoint_keys.VariableMap:
    maps = [checkpoint_keys.prefixed("_aspp", self._aspp.deeplab2_variable_map())]
    for i, (project, fuse) in enumerate(zip(self._low_level_convs,
                                            self._fusion_convs)):
      maps.append(checkpoint_keys.prefixed(
          f"_low_level_conv{i + 1}", checkpoint_keys.conv_bn_map(project)))
      maps.append(max_deeplab.separable_conv_map(
          f"_fusion_conv{i + 1}/_conv1_bn_act", fuse))
    return checkpoint_keys.merge(*maps)


class SemanticBranch(tf_keras.layers.Layer):
  """Optional decoder + semantic head; returns [B, h, w, num_classes] logits."""

  def __init__(self,
               spec: head_spec.SemanticBranchSpec,
               num_classes: int,
               *,
               activation: str = "gelu",
               bn_layer: Callable[..., tf_keras.layers.Layer] = (
                   tf_keras.layers.BatchNormalization),
               name: str = "semantic_branch"):
    """Initialises the branch.

    Args:
      spec: The branch's hyperparameters.
      num_classes: Semantic-head outputs when `spec.num_classes` is None.
      activation: Activation function name.
      bn_layer: Batch-norm class.
      name: Layer name.
    """
    super().__init__(name=name)
    self.decoder = None
    if spec.use_decoder:
      self.decoder = SemanticDecoder(spec, activation=activation,
                                     bn_layer=bn_layer)
    self._feature_key = spec.feature_key
    self.head = max_deeplab.PixelSpaceHead(
        spec.head_channels, spec.num_classes or num_classes, "semantic_head",
        activation=activation, bn_layer=bn_layer)

  def call(self, features: Dict[str, tf.Tensor], training=False):
    if self.decoder is not None:
      x = self.decoder(features, training=training)
    else:
      x = features[self._feature_key]
    return self.head(x, training=training)

  def deeplab2_variable_map(self) -> checkpoint_keys.VariableMap:
    head = self.head
    maps = [
        max_deeplab.separable_conv_map(
            "semantic_head_without_last_layer/_conv1_bn_act", head.conv_block),
        {"semantic_last_layer/kernel": head.final_conv.kernel,
         "semantic_last_layer/bias": head.final_conv.bias}]
    if self.decoder is not None:
      maps.append(checkpoint_keys.prefixed(
          "semantic_decoder", self.decoder.deeplab2_variable_map()))
    return checkpoint_keys.merge(*maps)
