"""Hyperparameters of the enhanced pixel decoder (paper §3.3, Fig. 2).

Per stage from os32 down: bottleneck filters f (the stage outputs 4 f
channels), number of blocks and block type (axial attention at os32 and
os16, bottleneck blocks after). The high-resolution output stride decides
the number of stages: 4 (COCO: os32 .. os4) or 2 (Cityscapes: an os2 stage
more). Empty overrides give the paper's tables below.
"""

import dataclasses
from typing import Optional
from typing import Tuple

from deeplab2_kmax.model import spec_checks

FILTERS = (512, 256, 128, 64, 32)
NUM_BLOCKS = (1, 5, 1, 1, 1)
BLOCK_TYPES = ("axial", "axial", "bottleneck", "bottleneck", "bottleneck")
# High-resolution output stride -> number of stages.
STAGES_FOR_OUTPUT_STRIDE = {4: 4, 2: 5}


def _optional_tuple(values):
  return None if values is None else tuple(values) or None


@dataclasses.dataclass(frozen=True)
class PixelDecoderSpec:
  """The kMaX pixel decoder.

  Attributes:
    high_resolution_output_stride: A key of STAGES_FOR_OUTPUT_STRIDE.
    num_blocks: Blocks per stage (None: NUM_BLOCKS).
    width_multiplier: Scales the default filters (tiny variants).
    filters: Bottleneck filters per stage (None: FILTERS scaled by
      width_multiplier).
    block_types: 'axial' or 'bottleneck' per stage (None: BLOCK_TYPES).
    drop_path_keep_prob: Stochastic-depth keep probability of every block
      (DeepLab2 uses none).
  """
  high_resolution_output_stride: int = 4
  num_blocks: Optional[Tuple[int, ...]] = None
  width_multiplier: float = 1.0
  filters: Optional[Tuple[int, ...]] = None
  block_types: Optional[Tuple[str, ...]] = None
  drop_path_keep_prob: float = 1.0

  def __post_init__(self):
    for field in ("num_blocks", "filters", "block_types"):
      object.__setattr__(self, field, _optional_tuple(getattr(self, field)))
    checks = spec_checks.Checks(self)
    checks.one_of("high_resolution_output_stride", STAGES_FOR_OUTPUT_STRIDE)
    checks.positive("width_multiplier")
    checks.keep_probability("drop_path_keep_prob")
    stages = STAGES_FOR_OUTPUT_STRIDE.get(self.high_resolution_output_stride)
    for field in ("num_blocks", "filters", "block_types"):
      values = getattr(self, field)
      checks.require(
          values is None or stages is None or len(values) == stages, field,
          f"needs {stages} values for output stride "
          f"{self.high_resolution_output_stride}, got {list(values or ())}")
    for block_type in self.block_types or ():
      checks.require(block_type in ("axial", "bottleneck"), "block_types",
                     f"{block_type!r} is not one of 'axial', 'bottleneck'")
    checks.raise_if_any()

  @property
  def num_stages(self) -> int:
    return STAGES_FOR_OUTPUT_STRIDE[self.high_resolution_output_stride]

  @property
  def stage_filters(self) -> Tuple[int, ...]:
    return self.filters or tuple(int(round(f * self.width_multiplier))
                                 for f in FILTERS[:self.num_stages])

  @property
  def stage_num_blocks(self) -> Tuple[int, ...]:
    return self.num_blocks or NUM_BLOCKS[:self.num_stages]

  @property
  def stage_block_types(self) -> Tuple[str, ...]:
    return self.block_types or BLOCK_TYPES[:self.num_stages]
