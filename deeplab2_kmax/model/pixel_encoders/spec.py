"""The pixel encoders' registry and hyperparameters (no TensorFlow).

`ENCODERS` maps every backbone name to its variant table (kMaX-DeepLab §4:
ResNet-50, MaX-S = Axial-ResNet-50, ConvNeXt-T/S/B/L): a new variant of a
known family is one entry here; a new family adds its variant class and
registers its layer in `builder.py`. `PixelEncoderSpec` holds the
hyperparameters every encoder takes.
"""

import dataclasses
from typing import Optional
from typing import Sequence
from typing import Tuple
from typing import Union

from deeplab2_kmax.model import spec_checks


@dataclasses.dataclass(frozen=True)
class ResNetVariant:
  """A (axial-)ResNet (He et al. 2016 v1.5; MaX-DeepLab §4 for MaX-S)."""
  stem: str  # 'resnet' (7x7) or 'inception' (3 x 3x3).
  activation: str
  blocks_per_stage: Sequence[int]  # Stages 2..5.
  axial_beyond_stride: int  # 0: no attention.


@dataclasses.dataclass(frozen=True)
class ConvNeXtVariant:
  """A ConvNeXt (Liu et al. 2022, §2): blocks and channels per stage."""
  depths: Sequence[int]
  widths: Sequence[int]


@dataclasses.dataclass(frozen=True)
class PlainVariant:
  """A plain VGG-style encoder (`plain.py`): not a paper backbone; for
  small images, where the paper's strided stems lose small shapes."""
  convs_per_stage: Sequence[int]  # Stages 1..5.
  widths: Sequence[int]


EncoderVariant = Union[ResNetVariant, ConvNeXtVariant, PlainVariant]

ENCODERS = {
    "resnet50": ResNetVariant("resnet", "relu", (3, 4, 6, 3), 0),
    "axial_resnet50": ResNetVariant("inception", "gelu", (3, 4, 6, 3), 16),
    "convnext_tiny": ConvNeXtVariant((3, 3, 9, 3), (96, 192, 384, 768)),
    "convnext_small": ConvNeXtVariant((3, 3, 27, 3), (96, 192, 384, 768)),
    "convnext_base": ConvNeXtVariant((3, 3, 27, 3), (128, 256, 512, 1024)),
    "convnext_large": ConvNeXtVariant((3, 3, 27, 3), (192, 384, 768, 1536)),
    # The CPU demo's encoder (docs/demo.md).
    "plain_cnn": PlainVariant((2, 2, 2, 2, 2), (32, 64, 128, 256, 256)),
}

# 'linear': the keep probability falls with depth from 1 to
# drop_path_keep_prob (DeepLab2's kMaX encoders: per stage for the ResNets,
# per block for ConvNeXt); 'constant': every block with drop path keeps
# drop_path_keep_prob.
DROP_PATH_SCHEDULES = ("linear", "constant")

# DeepLab2 names its kMaX backbones 'kmax_<name>'.
_DEEPLAB2_PREFIX = "kmax_"


def canonical_name(name: str) -> str:
  """Maps DeepLab2's 'kmax_resnet50' style names onto ours."""
  return name[len(_DEEPLAB2_PREFIX):] if name.startswith(
      _DEEPLAB2_PREFIX) else name


@dataclasses.dataclass(frozen=True)
class PixelEncoderSpec:
  """A pixel encoder (backbone).

  Attributes:
    name: A key of ENCODERS (DeepLab2's 'kmax_' prefix is accepted).
    drop_path_keep_prob: Stochastic-depth keep probability of the deepest
      blocks.
    drop_path_schedule: One of DROP_PATH_SCHEDULES.
    width_multiplier: Scales every channel count (1.0: the published model;
      small values give tiny CPU variants through the same code path).
    blocks_per_stage: Overrides the variant's four per-stage depths.
  """
  name: str = "resnet50"
  drop_path_keep_prob: float = 1.0
  drop_path_schedule: str = "linear"
  width_multiplier: float = 1.0
  blocks_per_stage: Optional[Tuple[int, ...]] = None

  def __post_init__(self):
    object.__setattr__(self, "name", canonical_name(self.name))
    if self.blocks_per_stage is not None:
      object.__setattr__(self, "blocks_per_stage",
                         tuple(self.blocks_per_stage) or None)
    checks = spec_checks.Checks(self)
    checks.one_of("name", ENCODERS)
    checks.keep_probability("drop_path_keep_prob")
    checks.one_of("drop_path_schedule", DROP_PATH_SCHEDULES)
    checks.positive("width_multiplier")
    blocks = self.blocks_per_stage
    checks.require(blocks is None or (len(blocks) == 4 and min(blocks) >= 1),
                   "blocks_per_stage",
                   f"needs 4 counts >= 1, got {list(blocks or ())}")
    checks.require(
        not isinstance(ENCODERS.get(self.name), PlainVariant) or
        self.drop_path_keep_prob == 1.0, "drop_path_keep_prob",
        f"{self.name} has no residual blocks to drop; got "
        f"{self.drop_path_keep_prob}")
    checks.raise_if_any()

  @property
  def variant(self) -> EncoderVariant:
    return ENCODERS[self.name]
