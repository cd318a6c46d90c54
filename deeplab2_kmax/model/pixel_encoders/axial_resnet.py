"""ResNet-50 and Axial-ResNet-50 (MaX-S) pixel encoders (kMaX-DeepLab §4).

* `resnet50`: He et al., CVPR 2016, v1.5 (stride in the 3x3 conv), ReLU, a
  7x7 stride-2 stem and NO max-pool: as in DeepLab2, the first block of
  stage 2 has stride 2 instead.
* `axial_resnet50` (MaX-S, Wang et al. CVPR 2021 §4 and kMaX-DeepLab §4):
  the Inception ("beta") stem, GELU, and axial attention (Axial-DeepLab,
  ECCV 2020) instead of the 3x3 conv in every block whose input stride is
  >= 16, i.e. stage 4 after its first (strided) block and all of stage 5.

Endpoints are the NON-activated stage outputs `stage1` (stem, os2) to `stage5`
(os32), DeepLab2's convention, plus their activated copies `res1`..`res5`.
"""

import math
from typing import Callable
from typing import Dict

import tf_keras

from deeplab2_kmax.model.layers import activations
from deeplab2_kmax.model.layers import blocks
from deeplab2_kmax.model.layers import checkpoint_keys
from deeplab2_kmax.model.layers import drop_path
from deeplab2_kmax.model.layers import stems
from deeplab2_kmax.model.pixel_encoders import spec
from deeplab2_kmax.model.pixel_encoders import staged

# Drop path only acts on blocks at input stride >= 16 (DeepLab2's kMaX
# ResNets); its 'linear' schedule decreases the keep probability over the 4
# stages, as DeepLab2's.
_DROP_PATH_BEYOND_STRIDE = 16


class AxialResNet(staged.StagedEncoder):
  """A (axial-)ResNet returning its stage endpoints at os2 .. os32."""

  def __init__(self,
               variant: spec.ResNetVariant,
               encoder: spec.PixelEncoderSpec,
               *,
               bn_layer: Callable[..., tf_keras.layers.Layer] = (
                   tf_keras.layers.BatchNormalization),
               recompute: bool = False,
               name: str = "encoder"):
    """A ResNet of `variant` with `encoder`'s hyperparameters (checked)."""
    super().__init__(name=name)
    blocks_per_stage = tuple(encoder.blocks_per_stage or
                             variant.blocks_per_stage)
    width_multiplier = encoder.width_multiplier
    self._activation_fn = activations.get(variant.activation)
    if variant.stem == "resnet":
      stem_channels = int(round(64 * width_multiplier))
      self._stem = stems.resnet_stem(stem_channels, bn_layer)
    elif variant.stem == "inception":
      self._stem = stems.InceptionStem(
          width_multiplier, variant.activation, bn_layer)
      stem_channels = self._stem.output_channels
    else:
      raise ValueError(f"{name}: unknown stem {variant.stem!r}.")

    self._stages = []
    self.endpoint_channels: Dict[str, int] = {"stage1": stem_channels}
    for index, num_blocks in enumerate(blocks_per_stage):
      input_stride = 2 ** (index + 1)  # 2, 4, 8, 16.
      # Stride "seen" by each block: the first runs at the input stride.
      block_strides = [input_stride] + [2 * input_stride] * (num_blocks - 1)
      keep_probs = [
          drop_path.stage_keep_prob(encoder.drop_path_keep_prob,
                                    encoder.drop_path_schedule,
                                    int(math.log2(s)) - 1, 4)
          if s >= _DROP_PATH_BEYOND_STRIDE else 1.0 for s in block_strides]
      use_axial = [0 < variant.axial_beyond_stride <= s for s in block_strides]
      stage = blocks.BlockStage(
          filters=int(round(input_stride * 32 * width_multiplier)),
          num_blocks=num_blocks,
          name=f"stage{index + 2}",
          strides=2,
          use_axial_attention=use_axial,
          drop_path_keep_probs=keep_probs,
          activation=variant.activation,
          bn_layer=bn_layer,
          recompute=recompute)
      self._stages.append(stage)
      self.endpoint_channels[f"stage{index + 2}"] = stage.output_channels

  def call_stage(self, name: str, inputs, training=False):
    layers = dict(zip(self.stage_names, [self._stem] + self._stages))
    return layers[name](inputs, training=training)

  def deeplab2_variable_map(self) -> checkpoint_keys.VariableMap:
    return checkpoint_keys.merge(
        checkpoint_keys.prefixed("_stem", stems.stem_variable_map(self._stem)),
        *[checkpoint_keys.prefixed(f"_stage{index + 2}",
                                   stage.deeplab2_variable_map())
          for index, stage in enumerate(self._stages)])
