"""Hyperparameters of the kMaX transformer decoder (paper §3.2, §4.1).

`KMaXLayerSpec` describes one kMaX layer (k-means cross-attention,
self-attention among the centres, FFN); `TransformerDecoderSpec` the stack of
layers at os32, os16 and os8 and its N cluster centres. The defaults are the
paper's (and DeepLab2's) kMaX-DeepLab.
"""

import dataclasses
from typing import Tuple

from deeplab2_kmax.model import spec_checks
from deeplab2_kmax.model.transformer_decoder import head_split

# The cross-attention of a kMaX layer: "kmeans" is the paper's (Eq. 5-7),
# "softmax" the ordinary cross-attention baseline of its ablation.
CROSS_ATTENTIONS = ("kmeans", "softmax")


@dataclasses.dataclass(frozen=True)
class KMaXLayerSpec:
  """One kMaX layer.

  Attributes:
    channels: D, the centre width; queries and keys get D / 2, values D.
    ffn_channels: Hidden width of the centres' feed-forward network.
    num_heads: Heads of the centre self-attention (and softmax baseline).
    cross_attention: One of CROSS_ATTENTIONS.
    drop_path_keep_prob: Stochastic-depth keep probability of each of the
      layer's three residuals.
  """
  channels: int = 256
  ffn_channels: int = 2048
  num_heads: int = 8
  cross_attention: str = "kmeans"
  drop_path_keep_prob: float = 0.8

  def __post_init__(self):
    checks = spec_checks.Checks(self)
    for field in ("channels", "ffn_channels", "num_heads"):
      checks.positive(field)
    checks.one_of("cross_attention", CROSS_ATTENTIONS)
    checks.keep_probability("drop_path_keep_prob")
    if self.num_heads > 0 and self.channels > 0:
      try:
        head_split.attention_channels(self.channels, self.num_heads)
      except ValueError as e:
        checks.require(False, "num_heads", str(e))
    checks.raise_if_any()

  @property
  def key_channels(self) -> int:
    return head_split.attention_channels(self.channels, self.num_heads)[0]

  @property
  def value_channels(self) -> int:
    return head_split.attention_channels(self.channels, self.num_heads)[1]


@dataclasses.dataclass(frozen=True)
class TransformerDecoderSpec:
  """The kMaX transformer decoder.

  Attributes:
    num_mask_slots: N, the number of cluster centres.
    num_blocks: kMaX layers at os32, os16 and os8.
    drop_query_keep_number: If > 0, training keeps this many random centres
      per image (drop query, paper §4.1); inference uses all. 0 disables it.
    layer: Every kMaX layer's spec.
  """
  num_mask_slots: int = 128
  num_blocks: Tuple[int, ...] = (2, 2, 2)
  drop_query_keep_number: int = 0
  layer: KMaXLayerSpec = KMaXLayerSpec()

  def __post_init__(self):
    object.__setattr__(self, "num_blocks", tuple(self.num_blocks))
    checks = spec_checks.Checks(self)
    checks.require(self.num_mask_slots >= 1, "num_mask_slots",
                   f"{self.num_mask_slots} must be >= 1")
    checks.require(
        len(self.num_blocks) == 3 and min(self.num_blocks) >= 0, "num_blocks",
        f"needs 3 counts >= 0 (os32, os16, os8), got {list(self.num_blocks)}")
    checks.require(
        0 <= self.drop_query_keep_number <= self.num_mask_slots,
        "drop_query_keep_number",
        f"{self.drop_query_keep_number} is not in [0, {self.num_mask_slots}]")
    checks.raise_if_any()

  @property
  def num_layers(self) -> int:
    return sum(self.num_blocks)
