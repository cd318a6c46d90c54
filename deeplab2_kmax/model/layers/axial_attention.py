"""Axial attention with relative positional encodings (Axial-DeepLab).

Wang et al., "Axial-DeepLab: Stand-Alone Axial-Attention for Panoptic
Segmentation", ECCV 2020, Eq. (4) (position-sensitive self-attention): along
one axis, for query position o and memory position p,

  y_o = sum_p softmax_p(q_o·k_p + q_o·r^q_{p-o} + k_p·r^k_{p-o})
        (v_p + r^v_{p-o}),

with learned relative positional encodings r^q, r^k, r^v shared by all heads
of a layer. As in MaX-DeepLab and kMaX-DeepLab batch norm is
applied to q/k/v, separately to each of the three similarity terms and to each
of the two retrieved terms before they are summed. Each encoding table has a
fixed 2·255−1 = 509 rows (one per relative distance), so checkpoint shapes do
not depend on the crop; the rows for the actual distances are gathered.

Attention is global along an axis of at most `query_block` (129) positions,
which covers every official crop (641, 1281, 1025x2049) at output stride 16
and 32 and is the only mode DeepLab2 implements. Longer axes are split into
blocks of 129 queries, each attending to its block plus a 32-position flange
on both sides (keys outside the axis are masked out).
"""

from typing import Callable

import numpy as np
import tensorflow as tf
import tf_keras

from deeplab2_kmax.model.layers import checkpoint_keys
from deeplab2_kmax.model.layers import convolutions

# Largest relative distance with its own embedding; tables have 2*255-1 rows.
MAX_SPAN = 255


def relative_distance_indices(query_length: int, key_length: int) -> np.ndarray:
  """Row of the positional-encoding table for every (query, key) pair.

  Keys are centred on the queries (`key_length = query_length + 2 * flange`);
  the distance key - query is shifted by MAX_SPAN - 1 and clipped to the
  table, so distances beyond the span share the outermost rows.
  """
  if (key_length - query_length) % 2:
    raise ValueError("key_length - query_length must be even, got "
                     f"{key_length} and {query_length}.")
  flange = (key_length - query_length) // 2
  distance = (np.arange(key_length)[None, :] -
              (np.arange(query_length)[:, None] + flange))
  return np.clip(distance + MAX_SPAN - 1, 0, 2 * MAX_SPAN - 2).astype(np.int32)


class AxialAttention(tf_keras.layers.Layer):
  """Multi-head self-attention along the length axis of [batch, length, ch]."""

  def __init__(self,
               total_key_depth: int,
               total_value_depth: int,
               name: str,
               num_heads: int = 8,
               query_block: int = 129,
               memory_flange: int = 32,
               bn_layer: Callable[..., tf_keras.layers.Layer] = (
                   tf_keras.layers.BatchNormalization)):
    super().__init__(name=name)
    if total_key_depth % num_heads or total_value_depth % num_heads:
      raise ValueError(f"{name}: key depth {total_key_depth} and value depth "
                       f"{total_value_depth} must be divisible by "
                       f"num_heads={num_heads}.")
    self._key_depth = total_key_depth
    self._value_depth = total_value_depth
    self._num_heads = num_heads
    self._query_block = query_block
    self._memory_flange = memory_flange
    # BN over q/k/v channels; over the 3 similarity terms x heads; over the 2
    # retrieved terms x heads x value channels.
    self._batch_norm_qkv = bn_layer(axis=-1, name="batch_norm_qkv")
    self._batch_norm_similarity = bn_layer(
        axis=[0, 2], name="batch_norm_similarity")
    self._batch_norm_retrieved = bn_layer(
        axis=[0, 2, 4], name="batch_norm_retrieved_output")

  def build(self, input_shape):
    length, channels = int(input_shape[1]), int(input_shape[2])
    self._length = length
    if length <= self._query_block:  # Global: one block, no flange.
      self._block, self._flange, self._num_blocks = length, 0, 1
    else:
      self._block, self._flange = self._query_block, self._memory_flange
      self._num_blocks = -(-length // self._block)
    memory = self._block + 2 * self._flange
    # Which memory slots of each block lie inside the axis.
    positions = (np.arange(self._num_blocks)[:, None] * self._block +
                 np.arange(memory)[None, :] - self._flange)
    self._memory_is_valid = (positions >= 0) & (positions < length)
    self.qkv_kernel = self.add_weight(
        name="qkv_kernel",
        shape=[channels, 2 * self._key_depth + self._value_depth],
        initializer=tf_keras.initializers.TruncatedNormal(
            stddev=channels**-0.5))
    rows = 2 * MAX_SPAN - 1
    key_per_head = self._key_depth // self._num_heads
    value_per_head = self._value_depth // self._num_heads
    self.query_rpe = self.add_weight(
        name="query_rpe", shape=[rows, key_per_head],
        initializer=tf_keras.initializers.TruncatedNormal(stddev=1.0))
    self.key_rpe = self.add_weight(
        name="key_rpe", shape=[rows, key_per_head],
        initializer=tf_keras.initializers.TruncatedNormal(stddev=1.0))
    self.value_rpe = self.add_weight(
        name="value_rpe", shape=[rows, value_per_head],
        initializer=tf_keras.initializers.TruncatedNormal(stddev=1.0))
    self._distance_indices = relative_distance_indices(self._block, memory)
    super().build(input_shape)

  def _blocks(self, x, flange):
    """[B, L, ...] -> [B * num_blocks, block + 2 * flange, ...] windows."""
    padded = self._num_blocks * self._block
    paddings = [[0, 0], [flange, padded - self._length + flange]]
    paddings += [[0, 0]] * (x.shape.rank - 2)
    x = tf.pad(x, paddings)
    if self._num_blocks > 1:
      x = tf.signal.frame(x, self._block + 2 * flange, self._block, axis=1)
    return tf.reshape(x, [-1, self._block + 2 * flange] + x.shape[-2:].as_list())

  def _folds(self, inputs, training) -> bool:
    """Whether this call takes the folded inference path (see `call`)."""
    norms = (self._batch_norm_qkv, self._batch_norm_similarity,
             self._batch_norm_retrieved)
    return (convolutions.fast_inference(training) and inputs.dtype.is_floating
            and all(norm.built for norm in norms))

  def call(self, inputs, training=False):
    """Attention along axis 1 of [batch, length, channels].

    At inference the batch norms are folded (in float32, then cast to the
    compute dtype): the q/k/v norm into the projection (a matmul + bias),
    each similarity term's scale into the query or key (its shift is the
    same for every memory position of a head, so the softmax drops it) and
    each retrieved term's scale and shift into the value or the output.
    Same result up to float rounding, without the stacked [3 or 2, ...]
    tensors and their normalisation passes.
    """
    heads = self._num_heads
    fold = self._folds(inputs, training)
    if fold:
      dtype = inputs.dtype
      qkv = convolutions.pointwise_matmul(
          inputs, *convolutions.fold_into_kernel(
              self.qkv_kernel, None, self._batch_norm_qkv, dtype))
    else:
      qkv = tf.einsum("blc,cd->bld", inputs, self.qkv_kernel)
      qkv = self._batch_norm_qkv(qkv, training=training)
    query, key, value = tf.split(
        qkv, [self._key_depth, self._key_depth, self._value_depth], axis=-1)
    query = tf.reshape(query, [-1, self._length, heads, self._key_depth // heads])
    key = tf.reshape(key, [-1, self._length, heads, self._key_depth // heads])
    value = tf.reshape(
        value, [-1, self._length, heads, self._value_depth // heads])
    # Queries in blocks, keys/values in blocks widened by the flange.
    query = self._blocks(query, 0)
    key = self._blocks(key, self._flange)
    value = self._blocks(value, self._flange)

    # [block, memory, depth] encodings for the actual distances.
    query_rpe = tf.gather(self.query_rpe, self._distance_indices)
    key_rpe = tf.gather(self.key_rpe, self._distance_indices)
    value_rpe = tf.gather(self.value_rpe, self._distance_indices)

    if fold:
      # Per term and head: [3, 1, heads, 1, 1] -> [3, heads, 1].
      scale, _ = convolutions.folded_batch_norm(self._batch_norm_similarity)
      scale = tf.cast(tf.reshape(scale, [3, heads, 1]), dtype)
      logits = (tf.einsum("blhd,bmhd->bhlm", query * scale[0], key) +
                tf.einsum("blhd,lmd->bhlm", query * scale[1], query_rpe) +
                tf.einsum("bmhd,lmd->bhlm", key * scale[2], key_rpe))
    else:
      similarity = tf.stack([
          tf.einsum("blhd,bmhd->bhlm", query, key),
          tf.einsum("blhd,lmd->bhlm", query, query_rpe),
          tf.einsum("bmhd,lmd->bhlm", key, key_rpe),
      ])
      similarity = self._batch_norm_similarity(similarity, training=training)
      logits = tf.reduce_sum(similarity, axis=0)
    if not self._memory_is_valid.all():
      valid = tf.tile(self._memory_is_valid, [tf.shape(inputs)[0], 1])
      logits = tf.where(valid[:, None, None, :], logits, logits.dtype.min)
    weights = tf.nn.softmax(logits, axis=-1)

    if fold:
      # Per term, head and channel: [2, 1, heads, 1, depth].
      scale, offset = convolutions.folded_batch_norm(
          self._batch_norm_retrieved)
      scale, offset = tf.cast(scale, dtype), tf.cast(offset, dtype)
      retrieved = (
          tf.einsum("bhlm,bmhd->bhld", weights, value * scale[0, 0, :, 0]) +
          tf.einsum("bhlm,lmd->bhld", weights, value_rpe) * scale[1] +
          (offset[0] + offset[1]))
    else:
      retrieved = tf.stack([
          tf.einsum("bhlm,bmhd->bhld", weights, value),
          tf.einsum("bhlm,lmd->bhld", weights, value_rpe),
      ])
      retrieved = self._batch_norm_retrieved(retrieved, training=training)
      retrieved = tf.reduce_sum(retrieved, axis=0)
    retrieved = tf.transpose(retrieved, [0, 2, 1, 3])
    retrieved = tf.reshape(
        retrieved, [-1, self._num_blocks * self._block, self._value_depth])
    return retrieved[:, :self._length]

  def deeplab2_variable_map(self) -> checkpoint_keys.VariableMap:
    return checkpoint_keys.merge(
        {"qkv_kernel": self.qkv_kernel,
         "_query_rpe/embeddings": self.query_rpe,
         "_key_rpe/embeddings": self.key_rpe,
         "_value_rpe/embeddings": self.value_rpe},
        checkpoint_keys.prefixed(
            "_batch_norm_qkv",
            checkpoint_keys.batch_norm_map(self._batch_norm_qkv)),
        checkpoint_keys.prefixed(
            "_batch_norm_similarity",
            checkpoint_keys.batch_norm_map(self._batch_norm_similarity)),
        checkpoint_keys.prefixed(
            "_batch_norm_retrieved_output",
            checkpoint_keys.batch_norm_map(self._batch_norm_retrieved)))


class AxialAttention2D(tf_keras.layers.Layer):
  """Height-axis then width-axis attention on [batch, height, width, ch].

  Key depth is `filters * key_expansion`, value (and output) depth
  `filters * value_expansion`. A stride subsamples each axis right after its
  attention.
  """

  def __init__(self,
               filters: int,
               name: str = "attention",
               strides: int = 1,
               key_expansion: float = 1.0,
               value_expansion: float = 2.0,
               num_heads: int = 8,
               bn_layer: Callable[..., tf_keras.layers.Layer] = (
                   tf_keras.layers.BatchNormalization)):
    super().__init__(name=name)
    self._strides = strides
    self._key_depth = int(round(filters * key_expansion))
    self._value_depth = int(round(filters * value_expansion))
    self._height_axis = AxialAttention(
        self._key_depth, self._value_depth, name="height_axis",
        num_heads=num_heads, bn_layer=bn_layer)
    self._width_axis = AxialAttention(
        self._key_depth, self._value_depth, name="width_axis",
        num_heads=num_heads, bn_layer=bn_layer)

  @property
  def output_channels(self) -> int:
    return self._value_depth

  def call(self, inputs, training=False):
    _, height, width, channels = inputs.shape.as_list()
    # Height axis: fold the width into the batch.
    x = tf.reshape(tf.transpose(inputs, [0, 2, 1, 3]), [-1, height, channels])
    x = self._height_axis(x, training=training)
    x = tf.transpose(
        tf.reshape(x, [-1, width, height, self._value_depth]), [0, 2, 1, 3])
    x = x[:, ::self._strides]
    height = x.shape[1]
    # Width axis: fold the height into the batch.
    x = self._width_axis(
        tf.reshape(x, [-1, width, self._value_depth]), training=training)
    x = tf.reshape(x, [-1, height, width, self._value_depth])
    return x[:, :, ::self._strides]

  def deeplab2_variable_map(self) -> checkpoint_keys.VariableMap:
    return checkpoint_keys.merge(
        checkpoint_keys.prefixed(
            "_height_axis", self._height_axis.deeplab2_variable_map()),
        checkpoint_keys.prefixed(
            "_width_axis", self._width_axis.deeplab2_variable_map()))
