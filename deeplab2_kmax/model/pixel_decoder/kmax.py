"""The enhanced pixel decoder of kMaX-DeepLab (paper §3.3, Fig. 2; SPEC §2.2).

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

import tf_keras

from deeplab2_kmax.model.layers import blocks
from deeplab2_kmax.model.layers import checkpoint_keys
from deeplab2_kmax.model.layers import convolutions
from deeplab2_kmax.model.layers import resized_fuse

# Per stage from os32 down: bottleneck filters f, blocks, block type.
_FILTERS = (512, 256, 128, 64, 32)
_NUM_BLOCKS = (1, 5, 1, 1, 1)
_BLOCK_TYPES = ("axial", "axial", "bottleneck", "bottleneck", "bottleneck")
# Backbone endpoint consumed by each stage.
_ENDPOINTS = ("stage5", "stage4", "stage3", "stage2", "stage1")
_STAGES_FOR_OUTPUT_STRIDE = {4: 4, 2: 5}
# DeepLab2 configures every decoder stage as a ResNet stage whose nominal input
# stride (32) exceeds its nominal output stride (16), so the 3x3 convs of the
# bottleneck stages are dilated by 32 / 16 = 2 at every resolution. Released
# checkpoints are trained this way.
_BOTTLENECK_ATROUS_RATE = 2


class KMaXPixelDecoder(tf_keras.layers.Layer):
  """Decodes backbone endpoints into multi-scale pixel features."""

  def __init__(self,
               high_resolution_output_stride: int = 4,
               filters: Optional[Sequence[int]] = None,
               num_blocks: Optional[Sequence[int]] = None,
               block_types: Optional[Sequence[str]] = None,
               width_multiplier: float = 1.0,
               drop_path_keep_prob: float = 1.0,
               activation: str = "gelu",
               use_sync_batch_norm: bool = True,
               bn_layer: Optional[Callable[..., tf_keras.layers.Layer]] = None,
               recompute: bool = False,
               name: str = "pixel_decoder"):
    """Initialises the decoder.

    Args:
      high_resolution_output_stride: 4 (COCO: stages os32..os4) or 2
        (Cityscapes: an extra stage on the encoder's "stage1" endpoint, which
        is at os2 for the ResNets but os4 for ConvNeXt, as in DeepLab2).
      filters: Per-stage bottleneck filters (default 512, 256, 128, 64[, 32]).
      num_blocks: Per-stage block counts (default 1, 5, 1, 1[, 1]).
      block_types: Per-stage 'axial' or 'bottleneck'.
      width_multiplier: Scales the default filters (tiny variants).
      drop_path_keep_prob: Stochastic-depth keep probability of every block
        (DeepLab2 uses 1.0).
      activation: Activation function name.
      use_sync_batch_norm: Synchronised batch norm across replicas.
      bn_layer: Overrides the batch-norm class.
      recompute: Recompute each block's activations in the backward pass of
        training (`layers/recompute.py`).
      name: Layer name.
    """
    super().__init__(name=name)
    if high_resolution_output_stride not in _STAGES_FOR_OUTPUT_STRIDE:
      raise ValueError(
          f"{name}: high_resolution_output_stride must be 4 or 2, got "
          f"{high_resolution_output_stride}.")
    num_stages = _STAGES_FOR_OUTPUT_STRIDE[high_resolution_output_stride]
    if filters is None:
      filters = [int(round(f * width_multiplier))
                 for f in _FILTERS[:num_stages]]
    num_blocks = tuple(num_blocks or _NUM_BLOCKS[:num_stages])
    block_types = tuple(block_types or _BLOCK_TYPES[:num_stages])
    if not len(filters) == len(num_blocks) == len(block_types) == num_stages:
      raise ValueError(
          f"{name}: filters, num_blocks and block_types need {num_stages} "
          f"entries for output stride {high_resolution_output_stride}; got "
          f"{list(filters)}, {list(num_blocks)}, {list(block_types)}.")
    for block_type in block_types:
      if block_type not in ("axial", "bottleneck"):
        raise ValueError(f"{name}: unknown block type {block_type!r}; "
                         "expected 'axial' or 'bottleneck'.")
    bn_layer = bn_layer or convolutions.batch_norm_class(use_sync_batch_norm)
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
            drop_path_keep_probs=[drop_path_keep_prob] * num_blocks[i],
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
    x = self._backbone_norms[0](endpoints[self._endpoint_names[0]])
    for i, stage in enumerate(self._stages):
      x = stage(x, training=training)
      if i == len(self._stages) - 1:
        outputs["decoder_output"] = x
      else:
        outputs[f"decoder_stage{i + 1}"] = x
        skip = self._backbone_norms[i + 1](endpoints[self._endpoint_names[i + 1]])
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
