"""The MaX-DeepLab prediction head (MaX-DeepLab §3, kMaX-DeepLab Fig. 2).

Pixels and cluster centres meet here:
  F = L2-normalise(BN(pixel_space_head(pixels)))            [B, H, W, D]
  K = BN(conv(mask_embedding))                                [B, N, D]
  mask logits   Z = BN_extra_axis(F · Kᵀ)                      [B, H, W, N]
  class logits  = conv(class_embedding) + void prior bias      [B, N, C+1]
The same head, fed the kMaX layer's own pixels and centres, is the auxiliary
clustering predictor whose argmax is the k-means assignment (paper Eq. 5).
"""

import math
from typing import Callable
from typing import Dict
from typing import Optional

import tensorflow as tf
import tf_keras

from deeplab2_kmax import common
from deeplab2_kmax.model import spec_checks
from deeplab2_kmax.model.heads import spec as head_spec
from deeplab2_kmax.model.layers import checkpoint_keys
from deeplab2_kmax.model.layers import convolutions

VOID_PRIOR_PROBABILITY = 0.9


def void_prior_bias(num_classes_with_void: int,
                    probability: float = VOID_PRIOR_PROBABILITY) -> float:
  """Logit offset giving the void class `probability` when others are equal.

  With C non-void logits at 0 and the void logit at b, softmax gives void
  e^b / (C + e^b) = p, so b = log(C p / (1 - p)) (Focal-loss style prior).
  """
  return math.log((num_classes_with_void - 1) * probability /
                  (1.0 - probability))


class PixelSpaceHead(tf_keras.layers.Layer):
  """5x5 depthwise-separable conv (+BN+act) then a 1x1 conv with bias."""

  def __init__(self, head_channels: int, output_channels: int, name: str,
               activation: str = "gelu",
               bn_layer: Callable[..., tf_keras.layers.Layer] = (
                   tf_keras.layers.BatchNormalization),
               final_initializer=None):
    super().__init__(name=name)
    self.conv_block = convolutions.SeparableConv2DBN(
        head_channels, 5, name="conv_block", bn_layer=bn_layer,
        activation=activation)
    self.final_conv = tf_keras.layers.Conv2D(
        output_channels, 1, name="final_conv",
        kernel_initializer=final_initializer or
        tf_keras.initializers.TruncatedNormal(stddev=0.01))

  def call(self, inputs, training=False):
    return self.final_conv(self.conv_block(inputs, training=training))

  def deeplab2_variable_map(self) -> checkpoint_keys.VariableMap:
    return checkpoint_keys.merge(
        separable_conv_map("conv_block/_conv1_bn_act", self.conv_block),
        {"final_conv/kernel": self.final_conv.kernel,
         "final_conv/bias": self.final_conv.bias})


def separable_conv_map(prefix: str, layer) -> checkpoint_keys.VariableMap:
  """DeepLab2's `StackedConv2DSame` depthwise-separable naming."""
  depthwise = layer._depthwise  # pylint: disable=protected-access
  pointwise = layer._pointwise  # pylint: disable=protected-access
  mapping = {
      f"{prefix}/_depthwise/_depthwise_conv/depthwise_kernel":
          depthwise._depthwise_conv.depthwise_kernel,  # pylint: disable=protected-access
  }
  mapping.update(checkpoint_keys.prefixed(
      f"{prefix}/_depthwise/_batch_norm",
      checkpoint_keys.batch_norm_map(depthwise._batch_norm)))  # pylint: disable=protected-access
  mapping.update(checkpoint_keys.prefixed(f"{prefix}/_pointwise",
                                          checkpoint_keys.conv_bn_map(pointwise)))
  return mapping


class MaXDeepLabHead(tf_keras.layers.Layer):
  """Turns (pixel feature, class/mask embeddings) into class and mask logits.

  The logits are float32 under any precision: under mixed precision the
  mask logits' product, their batch norm and the class head compute in
  float32 (from the lower-precision feature and embeddings). Their argmax
  (the k-means E-step, the semantic map), softmax and thresholds decide
  the segments; bfloat16 logits (8 significant bits) would turn near ties
  into flips. Under float32 the casts are no-ops.
  """

  def __init__(self,
               num_classes: int,
               spec: Optional[head_spec.HeadSpec] = None,
               *,
               activation: str = "gelu",
               bn_layer: Callable[..., tf_keras.layers.Layer] = (
                   tf_keras.layers.BatchNormalization),
               name: str = "max_deeplab_head",
               **fields):
    """Initialises the head.

    Args:
      num_classes: Non-void classes; the class head predicts num_classes + 1
        (void last).
      spec: The head's hyperparameters (`HeadSpec`); `fields` replace some
        of them (or give them all, without `spec`).
      activation: Activation of the pixel-space head.
      bn_layer: Batch-norm class.
      name: Layer name.
      **fields: `HeadSpec` fields.
    """
    super().__init__(name=name)
    spec = spec_checks.resolve(head_spec.HeadSpec, spec, fields)
    self._num_classes_with_void = num_classes + 1
    self.pixel_space_head = PixelSpaceHead(
        spec.pixel_head_channels, spec.pixel_output_channels,
        "pixel_space_head", activation=activation, bn_layer=bn_layer)
    self.pixel_space_feature_batch_norm = bn_layer(
        axis=-1, name="pixel_space_feature_batch_norm")
    # One gamma/beta shared by every mask slot; its initial gamma sets the
    # mask logits' starting temperature.
    self.pixel_space_mask_batch_norm = bn_layer(
        axis=-1, name="pixel_space_mask_batch_norm",
        gamma_initializer=tf_keras.initializers.Constant(
            spec.mask_logits_gamma_init), dtype=tf.float32)
    self.transformer_mask_head = convolutions.Conv1DBN(
        spec.pixel_output_channels, "transformer_mask_head", bn_layer=bn_layer,
        activation=None)
    self.transformer_class_head = tf_keras.layers.Conv1D(
        self._num_classes_with_void, 1, name="transformer_class_head",
        kernel_initializer=tf_keras.initializers.TruncatedNormal(stddev=0.01),
        dtype=tf.float32)

  def call(self, pixel_feature, class_embedding, mask_embedding,
           training=False) -> Dict[str, tf.Tensor]:
    """Args: pixel_feature [B,H,W,C]; embeddings [B,N,E]. Returns a dict."""
    feature = self.pixel_space_head(pixel_feature, training=training)
    feature = self.pixel_space_feature_batch_norm(feature, training=training)
    feature = tf.math.l2_normalize(feature, axis=-1)
    kernel = self.transformer_mask_head(mask_embedding, training=training)
    mask_logits = tf.einsum("bhwd,bnd->bhwn", tf.cast(feature, tf.float32),
                            tf.cast(kernel, tf.float32))
    mask_logits = self.pixel_space_mask_batch_norm(
        mask_logits[..., tf.newaxis], training=training)[..., 0]
    class_logits = self.transformer_class_head(class_embedding)
    bias = [0.0] * (self._num_classes_with_void - 1) + [
        void_prior_bias(self._num_classes_with_void)]
    class_logits = class_logits + tf.constant(bias, class_logits.dtype)
    return {
        common.PRED_PIXEL_SPACE_NORMALIZED_FEATURE_KEY: feature,
        common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY: mask_logits,
        common.PRED_TRANSFORMER_CLASS_LOGITS_KEY: class_logits,
    }

  def deeplab2_variable_map(self, underscore: bool = False
                            ) -> checkpoint_keys.VariableMap:
    """DeepLab2 keys; `underscore` for the copy inside each kMaX layer."""
    p = "_" if underscore else ""
    class_head = self.transformer_class_head
    return checkpoint_keys.merge(
        checkpoint_keys.prefixed(f"{p}pixel_space_head",
                                 self.pixel_space_head.deeplab2_variable_map()),
        checkpoint_keys.prefixed(
            f"{p}pixel_space_feature_batch_norm",
            checkpoint_keys.batch_norm_map(self.pixel_space_feature_batch_norm)),
        checkpoint_keys.prefixed(
            f"{p}pixel_space_mask_batch_norm",
            checkpoint_keys.batch_norm_map(self.pixel_space_mask_batch_norm)),
        checkpoint_keys.prefixed(
            f"{p}transformer_mask_head",
            checkpoint_keys.conv_bn_map(self.transformer_mask_head)),
        {f"{p}transformer_class_head/_conv/kernel": class_head.kernel,
         f"{p}transformer_class_head/_conv/bias": class_head.bias})
