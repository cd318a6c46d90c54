"""A plain convolutional encoder for small images (the CPU demo's backbone).

Not one of the paper's backbones (kMaX-DeepLab §4 pairs the meta-architecture
with ResNet-50, MaX-S and ConvNeXt): VGG-style stages (Simonyan & Zisserman,
ICLR 2015) of 3x3 convolution + batch norm + ReLU, each stage closed by a 2x2
max-pool. Its first convolutions see the image at full resolution, where the
paper's backbones stride by 2 or 4 at once; on the synthetic dataset's 10-48
px shapes that decides whether shape is learned within minutes
(`docs/demo.md`, the encoder probe).

Endpoints follow the other encoders: `stage1` .. `stage5` at os2 .. os32
(each stage's pooled output, already activated, so `res<k>` equals
`stage<k>`).
"""

from typing import Dict

import tf_keras

from deeplab2_kmax.model.layers import activations
from deeplab2_kmax.model.layers import checkpoint_keys
from deeplab2_kmax.model.layers import convolutions
from deeplab2_kmax.model.pixel_encoders import spec
from deeplab2_kmax.model.pixel_encoders import staged


class PlainEncoder(staged.StagedEncoder):
  """Five stages of 3x3 conv-BN-ReLU layers, each ending in a 2x2 max-pool."""

  def __init__(self, variant: spec.PlainVariant,
               encoder: spec.PixelEncoderSpec, *, bn_layer,
               name: str = "encoder"):
    """A plain encoder of `variant` with `encoder`'s hyperparameters.

    `encoder.blocks_per_stage`, when set, gives the convolutions of stages
    2..5 (stage 1 keeps the variant's).
    """
    super().__init__(name=name)
    depths = list(variant.convs_per_stage)
    if encoder.blocks_per_stage:
      depths[1:] = encoder.blocks_per_stage
    widths = [max(1, int(round(w * encoder.width_multiplier)))
              for w in variant.widths]
    self._stages = []
    self.endpoint_channels: Dict[str, int] = {}
    for index, (depth, width) in enumerate(zip(depths, widths)):
      self._stages.append([
          convolutions.Conv2DBN(width, 3, name=f"stage{index + 1}_conv{j}",
                                bn_layer=bn_layer, activation="relu")
          for j in range(depth)])
      self.endpoint_channels[f"stage{index + 1}"] = width
    self._pool = tf_keras.layers.MaxPool2D(2, padding="same")
    self._activation_fn = activations.get("relu")

  def call_stage(self, name: str, inputs, training=False):
    x = inputs
    for conv in self._stages[self.stage_names.index(name)]:
      x = conv(x, training=training)
    return self._pool(x)

  def deeplab2_variable_map(self) -> checkpoint_keys.VariableMap:
    """DeepLab2 has no such encoder: nothing maps onto its checkpoints."""
    return {}
