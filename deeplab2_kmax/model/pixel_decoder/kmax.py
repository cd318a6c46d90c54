"""The enhanced pixel decoder of kMaX-DeepLab (paper §3.3, Fig. 2).

Starting from the backbone's os32 endpoint, each stage applies residual
blocks (axial blocks at os32 and os16 — this is where the pixel path gets its
transformer-encoder-like global context — then bottleneck blocks), and a
resized fuse carries the result to the next finer endpoint:

  x = LN(stage5)
  for each stage i (os32, os16, os8, os4[, os2]):
    x = blocks_i(x)                        # 4 * f_i channels
    x = fuse(x, LN(endpoint at next os))   # f_{i+1} channels, next size

Every backbone endpoint gets its own LayerNorm (eps 1e-6). Activation GELU.
The 3x3 convs of the bottleneck stages have dilation 2 (as in DeepLab2).
The features after the os32, os16 and os8 stages feed the kMaX transformer
decoder ("decoder_stage1..3"; with an os2 stage the os4 feature is also
returned as "decoder_stage4"); the last stage's output is "decoder_output".
"""

from typing import Callable
from typing import Dict
from typing import Optional
from typing import Sequence

import tensorflow as tf
import tf_keras

from deeplab2_kmax.model import spec_checks
from deeplab2_kmax.model.layers import blocks
from deeplab2_kmax.model.layers import checkpoint_keys
from deeplab2_kmax.model.layers import convolutions
from deeplab2_kmax.model.layers import resized_fuse
from deeplab2_kmax.model.layers import spec as layer_spec
from deeplab2_kmax.model.pixel_decoder import spec as decoder_spec

# Backbone endpoint consumed by each stage.
_ENDPOINTS = ("stage5", "stage4", "stage3", "stage2", "stage1")
# DeepLab2 configures every decoder stage as a ResNet stage whose nominal input
# stride (32) exceeds its nominal output stride (16), so the 3x3 convs of the
# bottleneck stages are dilated by 32 / 16 = 2 at every resolution. Released
# checkpoints are trained this way.
_BOTTLENECK_ATROUS_RATE = 2


class KMaXPixelDecoder(tf_keras.layers.Layer):
  """Decodes backbone endpoints into multi-scale pixel features."""

  def __init__(self,
               spec: Optional[decoder_spec.PixelDecoderSpec] = None,
               *,
               activation: str = "gelu",
               bn_layer: Optional[Callable[..., tf_keras.layers.Layer]] = None,
               recompute: bool = False,
               name: str = "pixel_decoder",
               **fields):
    """Initialises the decoder.

    Args:
      spec: The decoder's hyperparameters (`PixelDecoderSpec`); `fields`
        replace some of them (or give them all, without `spec`).
        Output stride 2 adds a stage on the encoder's "stage1" endpoint,
        which is at os2 for the ResNets but os4 for ConvNeXt, as in DeepLab2.
      activation: Activation function name.
      bn_layer: The batch-norm factory (default: `batch_norm_class` of the
        `BatchNormSpec` fields in `fields`).
      recompute: Recompute each block's activations in the backward pass of
        training (`layers/recompute.py`).
      name: Layer name.
      **fields: `PixelDecoderSpec` and `BatchNormSpec` fields.
    """
    super().__init__(name=name)
    decoder_fields, norm_fields = spec_checks.split(
        fields, decoder_spec.PixelDecoderSpec, layer_spec.BatchNormSpec)
    spec = spec_checks.resolve(decoder_spec.PixelDecoderSpec, spec,
                               decoder_fields)
    num_stages = spec.num_stages
    filters = spec.stage_filters
    num_blocks = spec.stage_num_blocks
    block_types = spec.stage_block_types
    bn_layer = bn_layer or convolutions.batch_norm_class(**norm_fields)
    self._filters = tuple(filters)
    self._endpoint_names = _ENDPOINTS[:num_stages]
    self._backbone_norms = [
        tf_keras.layers.LayerNormalization(epsilon=1e-6, name=f"norm_{i}")
        for i in range(num_stages)]
    self._stages = [
        blocks.BlockStage(
            filters[i], num_blocks[i], name=f"stage_{i}",
            atrous_rate=_BOTTLENECK_ATROUS_RATE,
            use_axial_attention=[block_types[i] == "axial"] * num_blocks[i],
            drop_path_keep_probs=[spec.drop_path_keep_prob] * num_blocks[i],
            activation=activation, bn_layer=bn_layer, recompute=recompute)
        for i in range(num_stages)]
    self._fuses = [
        resized_fuse.ResizedFuse(filters[i + 1], name=f"fuse_{i}",
                                 activation=activation, bn_layer=bn_layer)
        for i in range(num_stages - 1)]

  @property
  def required_endpoints(self) -> Sequence[str]:
    return self._endpoint_names

  @property
  def output_channels(self) -> Dict[str, int]:
    """Channels of each output: 4 * f of its stage."""
    channels = {f"decoder_stage{i + 1}": 4 * f
                for i, f in enumerate(self._filters[:-1])}
    channels["decoder_output"] = 4 * self._filters[-1]
    return channels

  def call(self, endpoints, training=False):
    missing = [n for n in self._endpoint_names if n not in endpoints]
    if missing:
      raise ValueError(f"{self.name}: missing encoder endpoints {missing}.")
    outputs = {}
    x = _layer_norm(self._backbone_norms[0],
                    endpoints[self._endpoint_names[0]], training)
    for i, stage in enumerate(self._stages):
      x = stage(x, training=training)
      if i == len(self._stages) - 1:
        outputs["decoder_output"] = x
      else:
        outputs[f"decoder_stage{i + 1}"] = x
        skip = _layer_norm(self._backbone_norms[i + 1],
                           endpoints[self._endpoint_names[i + 1]], training)
        x = self._fuses[i]([x, skip], training=training)
    return outputs

  def deeplab2_variable_map(self) -> checkpoint_keys.VariableMap:
    maps = []
    for i, norm in enumerate(self._backbone_norms):
      maps.append(checkpoint_keys.prefixed(
          f"_backbone_norms/{i}", checkpoint_keys.layer_norm_map(norm)))
    for i, stage in enumerate(self._stages):
      maps.append(checkpoint_keys.prefixed(
          f"_stages/{i}", stage.deeplab2_variable_map()))
    for i, fuse in enumerate(self._fuses):
      maps.append(checkpoint_keys.prefixed(
          f"_skip_connections/{i}", fuse.deeplab2_variable_map()))
    return checkpoint_keys.merge(*maps)


def _layer_norm(norm: tf_keras.layers.LayerNormalization, x: tf.Tensor,
                training) -> tf.Tensor:
  """`norm(x)`; at float32 inference in fewer passes over x.

  Keras' LayerNormalization takes about six passes at these sizes (moments,
  then scale and shift); centring once and reusing it takes four and is
  about a fifth faster on the os4 map (equal to 1e-6).
  """
  if not (convolutions.fast_inference(training) and norm.built and
          x.dtype == tf.float32 and norm.axis == [x.shape.rank - 1]):
    return norm(x, training=training)
  flat = tf.reshape(x, [-1, x.shape[-1]])
  centred = flat - tf.reduce_mean(flat, axis=-1, keepdims=True)
  variance = tf.reduce_mean(tf.square(centred), axis=-1, keepdims=True)
  y = centred * tf.math.rsqrt(variance + norm.epsilon)
  if norm.gamma is not None:
    y *= norm.gamma
  if norm.beta is not None:
    y += norm.beta
  return tf.reshape(y, tf.shape(x))
