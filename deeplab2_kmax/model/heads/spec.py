"""Hyperparameters of the prediction heads (MaX-DeepLab §3; kMaX Fig. 2).

`HeadSpec`: the MaX-DeepLab head that turns pixels and cluster centres into
mask and class logits (the final head and the auxiliary head inside every
kMaX layer). `SemanticBranchSpec`: the auxiliary semantic branch trained with
the semantic loss (a Panoptic-DeepLab decoder and a semantic head).
"""

import dataclasses
from typing import Optional
from typing import Tuple

from deeplab2_kmax.model import spec_checks

# Encoder endpoints as DeepLab2's configs name them -> ours. DeepLab2's kMaX
# encoders return their os32 output before its final activation under
# "res5", which our encoders call "stage5" (the parity fixture's semantic
# logits pin this down); other names are ours already.
ENDPOINT_ALIASES = {"res5": "stage5"}


def encoder_endpoint(name: str) -> str:
  """Our encoder endpoint for a semantic-branch feature key."""
  return ENDPOINT_ALIASES.get(name, name)


@dataclasses.dataclass(frozen=True)
class HeadSpec:
  """The MaX-DeepLab head (final and auxiliary).

  Attributes:
    pixel_head_channels: Width of the pixel-space head's 5x5 conv.
    pixel_output_channels: D, the pixel / mask-kernel embedding size.
    mask_logits_gamma_init: Initial gamma of the mask-logit batch norm (one
      gamma shared by all slots: their starting temperature; DeepLab2's 0.1).
  """
  pixel_head_channels: int = 256
  pixel_output_channels: int = 128
  mask_logits_gamma_init: float = 0.1

  def __post_init__(self):
    checks = spec_checks.Checks(self)
    for field in spec_checks.field_names(HeadSpec):
      checks.positive(field)
    checks.raise_if_any()


@dataclasses.dataclass(frozen=True)
class SemanticBranchSpec:
  """The auxiliary semantic branch (training only).

  Attributes:
    num_classes: Semantic-head outputs (the dataset's classes, e.g. 134 on
      COCO whose void 0 is a channel); None: the model's num_classes.
    head_channels: Width of the semantic head's 5x5 conv.
    use_decoder: A Panoptic-DeepLab decoder (ASPP + two low-level fusions)
      before the head (COCO), or the head alone on `feature_key` (Cityscapes).
    feature_key: The encoder endpoint read; DeepLab2's names are accepted
      and stored as ours (`encoder_endpoint`), whichever way the model is
      built.
    low_level_keys: The decoder's low-level endpoints (os8, os4), as
      `feature_key`.
    low_level_channels: Their projection widths.
    aspp_channels: ASPP width.
    decoder_channels: Width of the decoder's fusion convs.
    atrous_rates: ASPP's three rates.
  """
  num_classes: Optional[int] = None
  head_channels: int = 256
  use_decoder: bool = True
  feature_key: str = "res5"
  low_level_keys: Tuple[str, ...] = ("res3", "res2")
  low_level_channels: Tuple[int, ...] = (64, 32)
  aspp_channels: int = 256
  decoder_channels: int = 256
  atrous_rates: Tuple[int, ...] = (6, 12, 18)

  def __post_init__(self):
    for field in ("low_level_keys", "low_level_channels", "atrous_rates"):
      object.__setattr__(self, field, tuple(getattr(self, field)))
    object.__setattr__(self, "feature_key", encoder_endpoint(self.feature_key))
    object.__setattr__(self, "low_level_keys",
                       tuple(map(encoder_endpoint, self.low_level_keys)))
    checks = spec_checks.Checks(self)
    checks.require(self.num_classes is None or self.num_classes >= 1,
                   "num_classes", f"{self.num_classes} must be >= 1")
    for field in ("head_channels", "aspp_channels", "decoder_channels"):
      checks.positive(field)
    checks.require(len(self.low_level_keys) == len(self.low_level_channels),
                   "low_level_channels",
                   f"{len(self.low_level_channels)} projections for "
                   f"{len(self.low_level_keys)} low-level features")
    checks.require(len(self.atrous_rates) == 3, "atrous_rates",
                   f"needs 3 rates, got {list(self.atrous_rates)}")
    checks.raise_if_any()
