"""Multi-head attention of the kMaX layers (MaX-DeepLab style).

Used for the cluster centres' self-attention and the softmax cross-attention
baseline of the kMaX transformer decoder (kMaX-DeepLab §3.2).
"""

from typing import Callable

import tensorflow as tf
import tf_keras

from deeplab2_kmax.model.layers import activations
from deeplab2_kmax.model.layers import checkpoint_keys


class MultiHeadAttention(tf_keras.layers.Layer):
  """Attention with batch norm on the similarity logits and retrieved values.

  query [B, h, L, d_k], key [B, h, M, d_k], value [B, M, h, d_v] ->
  [B, L, h * d_v]. As in Axial-DeepLab/MaX-DeepLab, logits are not scaled by
  1/sqrt(d): the batch norm over heads (axis 1) sets their scale.
  """

  def __init__(self, name: str, activation: str = "gelu",
               bn_layer: Callable[..., tf_keras.layers.Layer] = (
                   tf_keras.layers.BatchNormalization)):
    super().__init__(name=name)
    self.batch_norm_similarity = bn_layer(axis=1, name="batch_norm_similarity")
    self.batch_norm_retrieved_value = bn_layer(
        axis=[1, 3], name="batch_norm_retrieved_value")
    self._activation_fn = activations.get(activation)

  def call(self, query, key, value, training=False):
    logits = tf.einsum("bhld,bhmd->bhlm", query, key)
    logits = self.batch_norm_similarity(logits, training=training)
    weights = tf.nn.softmax(logits, axis=-1)
    retrieved = tf.einsum("bhlm,bmhd->bhld", weights, value)
    retrieved = self.batch_norm_retrieved_value(retrieved, training=training)
    retrieved = self._activation_fn(retrieved)
    batch, heads, length, depth = (tf.shape(retrieved)[0], retrieved.shape[1],
                                   retrieved.shape[2], retrieved.shape[3])
    return tf.reshape(tf.transpose(retrieved, [0, 2, 1, 3]),
                      [batch, length, heads * depth])

  def deeplab2_variable_map(self) -> checkpoint_keys.VariableMap:
    return checkpoint_keys.merge(
        checkpoint_keys.prefixed(
            "_batch_norm_similarity",
            checkpoint_keys.batch_norm_map(self.batch_norm_similarity)),
        checkpoint_keys.prefixed(
            "_batch_norm_retrieved_value",
            checkpoint_keys.batch_norm_map(self.batch_norm_retrieved_value)))


def split_heads(x: tf.Tensor, num_heads: int) -> tf.Tensor:
  """[B, L, h*d] -> [B, h, L, d]."""
  length, channels = x.shape[1], x.shape[2]
  x = tf.reshape(x, [-1, length, num_heads, channels // num_heads])
  return tf.transpose(x, [0, 2, 1, 3])
