"""The kMaX transformer decoder (paper §3.2, Eq. 5-7).

Cross-attention between N cluster centres C [B, N, D] and pixel features
P [B, HW, D] is recast as one k-means step:
  E-step  assignment = argmax_N(aux_head(P, C))            [B, HW]
          (`kmeans_assignment_step`, Eq. 5; the auxiliary head's mask
          logits are the centre-pixel affinities Q^c (K^p)ᵀ and are
          deep-supervised)
  M-step  C_hat = C + one_hot(assignment)ᵀ · V^p           [B, N, D]
          (`kmeans_update_step`, Eq. 7: a sum; hard, gradient stopped)
then multi-head self-attention among centres and an FFN. The softmax
baseline (`cross_attention="softmax"`) replaces the E/M steps by ordinary
multi-head cross-attention with a softmax over the HW pixels. The
hyperparameters and their defaults are `spec.py`'s.
"""

from typing import Callable
from typing import Dict
from typing import List
from typing import Optional
from typing import Tuple

import tensorflow as tf
import tf_keras

from deeplab2_kmax import common
from deeplab2_kmax.model import spec_checks
from deeplab2_kmax.model.heads import max_deeplab
from deeplab2_kmax.model.heads import spec as head_spec
from deeplab2_kmax.model.layers import activations
from deeplab2_kmax.model.layers import checkpoint_keys
from deeplab2_kmax.model.layers import convolutions
from deeplab2_kmax.model.layers import drop_path
from deeplab2_kmax.model.layers import recompute
from deeplab2_kmax.model.transformer_decoder import attention
from deeplab2_kmax.model.transformer_decoder import spec as decoder_spec

CROSS_ATTENTIONS = decoder_spec.CROSS_ATTENTIONS
# The auxiliary output holding each pixel's centre: int32 [B, h, w], the
# k-means assignment (Eq. 5) the layer used (with the softmax baseline, the
# argmax of the same affinities, for visualisation only).
ASSIGNMENT_KEY = "cluster_assignment"


def kmeans_assignment_step(affinity: tf.Tensor) -> tf.Tensor:
  """E-step (Eq. 5): the index of each pixel's most similar centre.

  affinity [B, h, w, N] -> int32 [B, h, w].
  """
  return tf.argmax(affinity, axis=-1, output_type=tf.int32)


def kmeans_update_step(assignment: tf.Tensor, values: tf.Tensor,
                       num_centers: int) -> tf.Tensor:
  """M-step (Eq. 7): each centre gathers the sum of its pixels' values.

  assignment int32 [B, HW], values [B, HW, D] -> [B, N, D]. The one-hot
  assignment is hard, so no gradient flows through it.
  """
  one_hot = tf.stop_gradient(tf.one_hot(assignment, num_centers,
                                        dtype=values.dtype))
  return tf.einsum("bln,bld->bnd", one_hot, values)


class KMaXLayer(tf_keras.layers.Layer):
  """One kMaX transformer layer: cross-attention, self-attention, FFN."""

  def __init__(self,
               num_classes: int,
               spec: Optional[decoder_spec.KMaXLayerSpec] = None,
               head: Optional[head_spec.HeadSpec] = None,
               *,
               activation: str = "gelu",
               bn_layer: Callable[..., tf_keras.layers.Layer] = (
                   tf_keras.layers.BatchNormalization),
               recompute: bool = False,
               name: str = "kmax_layer",
               **fields):
    """Initialises the layer.

    Args:
      num_classes: Non-void classes of the auxiliary class head.
      spec: The layer's hyperparameters (`KMaXLayerSpec`).
      head: The auxiliary head's hyperparameters (`HeadSpec`).
      activation: Activation function.
      bn_layer: Batch-norm class.
      recompute: Recompute the layer's activations in the backward pass of
        training (`layers/recompute.py`).
      name: Layer name.
      **fields: `KMaXLayerSpec` and `HeadSpec` fields, replacing those of
        `spec` and `head` (or giving them, without).
    """
    super().__init__(name=name)
    layer_fields, head_fields = spec_checks.split(
        fields, decoder_spec.KMaXLayerSpec, head_spec.HeadSpec)
    layer = spec_checks.resolve(decoder_spec.KMaXLayerSpec, spec, layer_fields)
    self._channels = layer.channels
    self._num_heads = layer.num_heads
    self._cross_attention = layer.cross_attention
    self._keep_prob = layer.drop_path_keep_prob
    self._key_channels = layer.key_channels
    self._value_channels = layer.value_channels
    self._recompute = recompute
    self._activation_fn = activations.get(activation)
    self._build_projections(layer, activation, bn_layer)
    self.auxiliary_clustering_predictor = max_deeplab.MaXDeepLabHead(
        num_classes, spec_checks.resolve(head_spec.HeadSpec, head, head_fields),
        activation=activation, bn_layer=bn_layer,
        name="auxiliary_clustering_predictor")

  def _build_projections(self, layer, activation, bn_layer):
    """The layer's 1x1 conv + BN projections and attention sub-layers."""
    channels = layer.channels
    qkv_init = lambda: tf_keras.initializers.TruncatedNormal(  # pylint: disable=g-long-lambda
        stddev=channels**-0.5)
    conv = lambda c, n, act=None, gamma="ones", init="he_normal": (  # pylint: disable=g-long-lambda
        convolutions.Conv1DBN(c, n, bn_layer=bn_layer, activation=act,
                              bn_gamma_initializer=gamma,
                              kernel_initializer=init))
    # 1. Input projections (the pixels are activated first).
    self.memory_conv1_bn_act = conv(channels, "memory_conv1_bn_act", activation)
    self.pixel_conv1_bn_act = conv(channels, "pixel_conv1_bn_act", activation)
    # Centre self-attention: q, k, v from one projection.
    self.memory_qkv_conv_bn = conv(
        2 * self._key_channels + self._value_channels, "memory_qkv_conv_bn",
        init=qkv_init())
    self.memory_attention = attention.MultiHeadAttention(
        "memory_attention", activation, bn_layer)
    self.memory_conv3_bn = conv(channels, "memory_conv3_bn", gamma="zeros")
    # 2-3. Cross-attention.
    if layer.cross_attention == "kmeans":
      self.pixel_v_conv_bn = conv(self._value_channels, "pixel_v_conv_bn",
                                  init=qkv_init())
      self.kmeans_memory_batch_norm_retrieved_value = bn_layer(
          axis=-1, name="kmeans_memory_batch_norm_retrieved_value")
      self.kmeans_memory_conv3_bn = conv(channels, "kmeans_memory_conv3_bn",
                                         gamma="zeros")
    else:
      self.pixel_kv_conv_bn = conv(self._key_channels + self._value_channels,
                                   "pixel_kv_conv_bn", init=qkv_init())
      self.cross_attention = attention.MultiHeadAttention(
          "cross_attention", activation, bn_layer)
      self.cross_attention_conv3_bn = conv(channels, "cross_attention_conv3_bn",
                                           gamma="zeros")
    # 5. FFN.
    self.memory_ffn_conv1_bn_act = conv(layer.ffn_channels,
                                        "memory_ffn_conv1_bn_act", activation)
    self.memory_ffn_conv2_bn = conv(channels, "memory_ffn_conv2_bn",
                                    gamma="zeros")

  def _drop_path(self, x, training):
    if not training or self._keep_prob >= 1.0:
      return x
    return x * drop_path.drop_path_mask(x, self._keep_prob)

  def call(self, pixels, centers, training=False
           ) -> Tuple[tf.Tensor, Dict[str, tf.Tensor]]:
    """pixels [B, H, W, Cp], centers [B, N, D] -> (new centers, aux dict).

    The aux dict holds the auxiliary head's outputs and, under
    ASSIGNMENT_KEY, the assignment of the E-step.
    """
    if not (training and self._recompute):
      outputs, auxiliary, assignment = self._forward(
          pixels, centers, training, lambda x, _: self._drop_path(x, training))
      return outputs, dict(auxiliary, **{ASSIGNMENT_KEY: assignment})
    # The three residuals' drop-path masks, drawn once in the order of the
    # plain call and passed to both passes.
    masks = []
    if self._keep_prob < 1.0:
      masks = [drop_path.drop_path_mask(centers, self._keep_prob)
               for _ in range(3)]

    def forward(pixels, centers, *masks):
      return self._forward(
          pixels, centers, True,
          lambda x, i: x * tf.cast(masks[i], x.dtype) if masks else x)[:2]

    outputs, auxiliary = recompute.recomputed_call(self, forward, pixels,
                                                   centers, *masks)
    # The same argmax of the same affinities: the forward pass's assignment
    # (integers cannot leave a recomputed call).
    assignment = kmeans_assignment_step(
        auxiliary[common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY])
    return outputs, dict(auxiliary, **{ASSIGNMENT_KEY: assignment})

  def _forward(self, pixels, centers, training, drop_path_fn):
    """The layer; drop_path_fn(x, i) drops the i-th residual (0, 1, 2).

    Returns the new centres, the auxiliary head's outputs and the E-step's
    assignment int32 [B, H, W].
    """
    height, width = pixels.shape[1], pixels.shape[2]
    pixel_features = tf.reshape(self._activation_fn(pixels),
                                [-1, height * width, pixels.shape[3]])
    pixel_features = self.pixel_conv1_bn_act(pixel_features, training=training)
    cluster_centers = self.memory_conv1_bn_act(centers, training=training)
    # Queries, keys and values of the centres, all from the pre-update centres.
    query, key, value = tf.split(
        self.memory_qkv_conv_bn(cluster_centers, training=training),
        [self._key_channels, self._key_channels, self._value_channels], axis=-1)

    # The auxiliary prediction (deep-supervised in both variants); its mask
    # logits are the centre-pixel affinities.
    pixel_features_2d = tf.reshape(pixel_features,
                                   [-1, height, width, self._channels])
    auxiliary = self.auxiliary_clustering_predictor(
        pixel_features_2d, cluster_centers, cluster_centers, training=training)
    affinity = auxiliary[common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY]
    assignment = kmeans_assignment_step(affinity)

    if self._cross_attention == "kmeans":
      values = self.pixel_v_conv_bn(pixel_features, training=training)
      update = kmeans_update_step(
          tf.reshape(assignment, [-1, height * width]), values,
          affinity.shape[-1])
      update = self.kmeans_memory_batch_norm_retrieved_value(
          update, training=training)
      update = self.kmeans_memory_conv3_bn(update, training=training)
    else:
      update = self._softmax_cross_attention(query, pixel_features, training)
    outputs = centers + drop_path_fn(update, 0)

    # 4. Self-attention among the centres.
    attended = self.memory_attention(
        attention.split_heads(query, self._num_heads),
        attention.split_heads(key, self._num_heads),
        self._split_value_heads(value), training=training)
    attended = self.memory_conv3_bn(attended, training=training)
    outputs = self._activation_fn(outputs + drop_path_fn(attended, 1))

    # 5. Feed-forward network.
    ffn = self.memory_ffn_conv1_bn_act(outputs, training=training)
    ffn = self.memory_ffn_conv2_bn(ffn, training=training)
    outputs = self._activation_fn(outputs + drop_path_fn(ffn, 2))
    return outputs, auxiliary, assignment

  def _split_value_heads(self, value):
    """[B, L, h*d] -> [B, L, h, d] (the layout `MultiHeadAttention` takes)."""
    return tf.reshape(value, [-1, value.shape[1], self._num_heads,
                              self._value_channels // self._num_heads])

  def _softmax_cross_attention(self, query, pixel_features, training):
    """The baseline: multi-head attention with a softmax over the pixels."""
    keys, values = tf.split(
        self.pixel_kv_conv_bn(pixel_features, training=training),
        [self._key_channels, self._value_channels], axis=-1)
    update = self.cross_attention(
        attention.split_heads(query, self._num_heads),
        attention.split_heads(keys, self._num_heads),
        self._split_value_heads(values), training=training)
    return self.cross_attention_conv3_bn(update, training=training)

  def deeplab2_variable_map(self) -> checkpoint_keys.VariableMap:
    convs = ["memory_conv1_bn_act", "pixel_conv1_bn_act", "memory_qkv_conv_bn",
             "memory_conv3_bn", "memory_ffn_conv1_bn_act", "memory_ffn_conv2_bn"]
    if self._cross_attention == "kmeans":
      convs += ["pixel_v_conv_bn", "kmeans_memory_conv3_bn"]
    else:
      convs += ["pixel_kv_conv_bn", "cross_attention_conv3_bn"]
    maps = [checkpoint_keys.prefixed(
        f"_{n}", checkpoint_keys.conv_bn_map(getattr(self, n))) for n in convs]
    maps.append(checkpoint_keys.prefixed(
        "_memory_attention", self.memory_attention.deeplab2_variable_map()))
    if self._cross_attention == "kmeans":
      maps.append(checkpoint_keys.prefixed(
          "_kmeans_memory_batch_norm_retrieved_value",
          checkpoint_keys.batch_norm_map(
              self.kmeans_memory_batch_norm_retrieved_value)))
    else:
      maps.append(checkpoint_keys.prefixed(
          "_cross_attention", self.cross_attention.deeplab2_variable_map()))
    maps.append(checkpoint_keys.prefixed(
        "_auxiliary_clustering_predictor",
        self.auxiliary_clustering_predictor.deeplab2_variable_map(
            underscore=True)))
    return checkpoint_keys.merge(*maps)


class KMaXTransformerDecoder(tf_keras.layers.Layer):
  """N learnable centres refined by kMaX layers at os32, os16 and os8."""

  FEATURE_KEYS = ("decoder_stage1", "decoder_stage2", "decoder_stage3")

  def __init__(self,
               num_classes: int,
               spec: Optional[decoder_spec.TransformerDecoderSpec] = None,
               head: Optional[head_spec.HeadSpec] = None,
               *,
               activation: str = "gelu",
               bn_layer: Callable[..., tf_keras.layers.Layer] = (
                   tf_keras.layers.BatchNormalization),
               recompute: bool = False,
               name: str = "transformer_decoder"):
    """Initialises the decoder.

    Args:
      num_classes: Non-void classes.
      spec: The decoder's hyperparameters (N centres, layers per stage, drop
        query, and each kMaX layer's spec).
      head: The auxiliary heads' hyperparameters.
      activation: Activation function.
      bn_layer: Batch-norm class.
      recompute: Recompute each kMaX layer's activations in the backward pass
        of training (`layers/recompute.py`).
      name: Layer name.
    """
    super().__init__(name=name)
    spec = spec or decoder_spec.TransformerDecoderSpec()
    self._num_mask_slots = spec.num_mask_slots
    self._channels = spec.layer.channels
    self._drop_query_keep_number = spec.drop_query_keep_number
    self._stage_of_layer = [s for s, n in enumerate(spec.num_blocks)
                            for _ in range(n)]
    self.kmax_layers = [
        KMaXLayer(num_classes, spec.layer, head or head_spec.HeadSpec(),
                  activation=activation, bn_layer=bn_layer,
                  recompute=recompute, name=f"kmax_layer_{i}")
        for i in range(len(self._stage_of_layer))]
    conv = lambda n: convolutions.Conv1DBN(self._channels, n,  # pylint: disable=g-long-lambda
                                           bn_layer=bn_layer,
                                           activation=activation)
    self.class_embedding_projection = conv("class_embedding_projection")
    self.mask_embedding_projection = conv("mask_embedding_projection")

  @property
  def num_layers(self) -> int:
    return len(self.kmax_layers)

  def layer_feature_key(self, index: int) -> str:
    """The pixel-decoder output that kMaX layer `index` reads."""
    return self.FEATURE_KEYS[self._stage_of_layer[index]]

  def build(self, input_shape):
    self.cluster_centers = self.add_weight(
        name="cluster_centers", shape=(1, self._num_mask_slots, self._channels),
        initializer=tf_keras.initializers.TruncatedNormal(stddev=1.0),
        trainable=True)
    super().build(input_shape)

  def _initial_centers(self, batch_size, training):
    centers = tf.tile(self.cluster_centers, [batch_size, 1, 1])
    keep = self._drop_query_keep_number
    if training and 0 < keep < self._num_mask_slots:
      # Drop query: a random subset of `keep` centres per image.
      scores = tf.random.uniform([batch_size, self._num_mask_slots])
      _, indices = tf.math.top_k(scores, k=keep)
      centers = tf.gather(centers, indices, batch_dims=1)
    return centers

  def call(self, features: Dict[str, tf.Tensor], training=False):
    """Returns class/mask embeddings [B, N, D] and the per-layer aux outputs."""
    batch_size = tf.shape(features[self.FEATURE_KEYS[0]])[0]
    centers = self._initial_centers(batch_size, training)
    auxiliary: List[Dict[str, tf.Tensor]] = []
    for index, layer in enumerate(self.kmax_layers):
      centers, aux = layer(features[self.layer_feature_key(index)], centers,
                           training=training)
      auxiliary.append(aux)
    return {
        "class_embedding": self.class_embedding_projection(centers,
                                                           training=training),
        "mask_embedding": self.mask_embedding_projection(centers,
                                                         training=training),
        common.PRED_AUXILIARY_OUTPUTS: auxiliary,
    }

  def deeplab2_variable_map(self) -> checkpoint_keys.VariableMap:
    maps = [{"cluster_centers": self.cluster_centers},
            checkpoint_keys.prefixed(
                "_class_embedding_projection",
                checkpoint_keys.conv_bn_map(self.class_embedding_projection)),
            checkpoint_keys.prefixed(
                "_mask_embedding_projection",
                checkpoint_keys.conv_bn_map(self.mask_embedding_projection))]
    for i, layer in enumerate(self.kmax_layers):
      maps.append(checkpoint_keys.prefixed(
          f"_kmax_decoder/{i}/_block1_transformer",
          layer.deeplab2_variable_map()))
    return checkpoint_keys.merge(*maps)
