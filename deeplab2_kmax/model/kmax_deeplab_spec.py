"""The hyperparameters of a whole kMaX-DeepLab model (no TensorFlow).

A `KMaXDeepLabSpec` gathers one spec per component (paper Fig. 2): pixel
encoder, pixel decoder, kMaX transformer decoder, MaX-DeepLab head, the
auxiliary semantic branch (None: not built) and the batch norms. Defaults and
checks live in the component specs only.

`FLAT_FIELDS` names every spec field with one flat keyword
(`KMaXDeepLab(num_classes=5, num_mask_slots=8, ...)`), for callers that set
a few numbers without building specs.
"""

import dataclasses
from typing import Any
from typing import Dict
from typing import Optional
from typing import Tuple

from deeplab2_kmax.model import spec_checks
from deeplab2_kmax.model.heads import spec as head_spec
from deeplab2_kmax.model.layers import spec as layer_spec
from deeplab2_kmax.model.pixel_decoder import spec as decoder_spec
from deeplab2_kmax.model.pixel_encoders import spec as encoder_spec
from deeplab2_kmax.model.transformer_decoder import spec as transformer_spec

RECOMPUTE_MODES = layer_spec.RECOMPUTE_MODES


@dataclasses.dataclass(frozen=True)
class KMaXDeepLabSpec:
  """A kMaX-DeepLab model.

  Attributes:
    num_classes: Non-void classes (the class head adds one void logit).
    encoder: The pixel encoder.
    pixel_decoder: The enhanced pixel decoder.
    transformer_decoder: The kMaX transformer decoder.
    head: The MaX-DeepLab heads (final and auxiliary).
    semantic: The auxiliary semantic branch; None: none is built.
    batch_norm: Every batch norm.
    recompute: One of RECOMPUTE_MODES.
  """
  num_classes: int
  encoder: encoder_spec.PixelEncoderSpec = encoder_spec.PixelEncoderSpec()
  pixel_decoder: decoder_spec.PixelDecoderSpec = (
      decoder_spec.PixelDecoderSpec())
  transformer_decoder: transformer_spec.TransformerDecoderSpec = (
      transformer_spec.TransformerDecoderSpec())
  head: head_spec.HeadSpec = head_spec.HeadSpec()
  semantic: Optional[head_spec.SemanticBranchSpec] = (
      head_spec.SemanticBranchSpec())
  batch_norm: layer_spec.BatchNormSpec = layer_spec.BatchNormSpec()
  recompute: str = "none"

  def __post_init__(self):
    checks = spec_checks.Checks(self)
    checks.require(self.num_classes >= 1, "num_classes",
                   f"{self.num_classes} must be >= 1")
    checks.one_of("recompute", RECOMPUTE_MODES)
    checks.raise_if_any()


# Flat keyword -> (component of KMaXDeepLabSpec, field of its spec); the
# kMaX layer's fields are under "transformer_decoder.layer". An empty
# component is a field of KMaXDeepLabSpec itself.
FLAT_FIELDS: Dict[str, Tuple[str, str]] = {
    "num_classes": ("", "num_classes"),
    "recompute": ("", "recompute"),
    "backbone": ("encoder", "name"),
    "backbone_drop_path_keep_prob": ("encoder", "drop_path_keep_prob"),
    "backbone_drop_path_schedule": ("encoder", "drop_path_schedule"),
    "backbone_width_multiplier": ("encoder", "width_multiplier"),
    "backbone_blocks_per_stage": ("encoder", "blocks_per_stage"),
    "high_resolution_output_stride": (
        "pixel_decoder", "high_resolution_output_stride"),
    "pixel_decoder_num_blocks": ("pixel_decoder", "num_blocks"),
    "pixel_decoder_width_multiplier": ("pixel_decoder", "width_multiplier"),
    "num_mask_slots": ("transformer_decoder", "num_mask_slots"),
    "transformer_num_blocks": ("transformer_decoder", "num_blocks"),
    "drop_query_keep_number": ("transformer_decoder",
                               "drop_query_keep_number"),
    "transformer_channels": ("transformer_decoder.layer", "channels"),
    "transformer_ffn_channels": ("transformer_decoder.layer", "ffn_channels"),
    "transformer_num_heads": ("transformer_decoder.layer", "num_heads"),
    "cross_attention": ("transformer_decoder.layer", "cross_attention"),
    "transformer_drop_path_keep_prob": ("transformer_decoder.layer",
                                        "drop_path_keep_prob"),
    "pixel_head_channels": ("head", "pixel_head_channels"),
    "pixel_output_channels": ("head", "pixel_output_channels"),
    "mask_logits_gamma_init": ("head", "mask_logits_gamma_init"),
    "semantic_num_classes": ("semantic", "num_classes"),
    "semantic_head_channels": ("semantic", "head_channels"),
    "use_semantic_decoder": ("semantic", "use_decoder"),
    "semantic_feature_key": ("semantic", "feature_key"),
    "semantic_low_level_keys": ("semantic", "low_level_keys"),
    "semantic_low_level_channels": ("semantic", "low_level_channels"),
    "aspp_channels": ("semantic", "aspp_channels"),
    "semantic_decoder_channels": ("semantic", "decoder_channels"),
    "atrous_rates": ("semantic", "atrous_rates"),
    "use_sync_batch_norm": ("batch_norm", "use_sync_batch_norm"),
    "batch_norm_momentum": ("batch_norm", "momentum"),
    "batch_norm_epsilon": ("batch_norm", "epsilon"),
}
# The one flat keyword that is not a field: False drops the semantic branch.
USE_SEMANTIC_BRANCH = "use_semantic_branch"

_COMPONENTS = {
    "encoder": encoder_spec.PixelEncoderSpec,
    "pixel_decoder": decoder_spec.PixelDecoderSpec,
    "transformer_decoder": transformer_spec.TransformerDecoderSpec,
    "transformer_decoder.layer": transformer_spec.KMaXLayerSpec,
    "head": head_spec.HeadSpec,
    "semantic": head_spec.SemanticBranchSpec,
    "batch_norm": layer_spec.BatchNormSpec,
}


def from_flat(**flat: Any) -> KMaXDeepLabSpec:
  """The spec of flat keywords (`FLAT_FIELDS`, `USE_SEMANTIC_BRANCH`);
  unset ones keep the component specs' defaults."""
  unknown = set(flat) - set(FLAT_FIELDS) - {USE_SEMANTIC_BRANCH}
  if unknown:
    raise TypeError(f"unknown model keywords {sorted(unknown)}")
  grouped: Dict[str, Dict[str, Any]] = {c: {} for c in _COMPONENTS}
  grouped[""] = {}
  for key, value in flat.items():
    if key != USE_SEMANTIC_BRANCH:
      component, field = FLAT_FIELDS[key]
      grouped[component][field] = value
  specs = {c: cls(**grouped[c]) for c, cls in _COMPONENTS.items()}
  transformer = dataclasses.replace(specs.pop("transformer_decoder"),
                                    layer=specs.pop("transformer_decoder.layer"))
  if not flat.get(USE_SEMANTIC_BRANCH, True):
    specs["semantic"] = None
  return KMaXDeepLabSpec(transformer_decoder=transformer, **specs,
                         **grouped[""])


def to_flat(spec: KMaXDeepLabSpec) -> Dict[str, Any]:
  """The flat keywords of `spec` (`from_flat(**to_flat(s)) == s`)."""
  flat = {USE_SEMANTIC_BRANCH: spec.semantic is not None}
  for key, (component, field) in FLAT_FIELDS.items():
    owner = spec
    for part in filter(None, component.split(".")):
      owner = getattr(owner, part) if owner is not None else None
    if owner is not None:
      flat[key] = getattr(owner, field)
  return flat
