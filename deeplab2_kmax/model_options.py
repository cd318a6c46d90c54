"""`ModelOptions` (with the trainer's batch-norm options) -> `KMaXDeepLabSpec`.

The one translation from an experiment config to the model's spec, used by
`builders.build_model` and by `config_loader.validate`, so the check that a
config passes is the check its model build runs. No TensorFlow.

A field set in the config is passed to its spec; an unset one takes the
spec's default (the proto's `[default = ...]`, where it has one, is held
equal to it by tests/model/test_specs.py). A spec's problems come back as
"field '<textproto path>': <message>".
"""

import dataclasses
from typing import Dict
from typing import List
from typing import Optional
from typing import Tuple

from deeplab2_kmax.model import kmax_deeplab_spec as model_spec
from deeplab2_kmax.model import spec_checks
from deeplab2_kmax.model.heads import spec as head_spec
from deeplab2_kmax.model.layers import spec as layer_spec
from deeplab2_kmax.model.pixel_decoder import spec as decoder_spec
from deeplab2_kmax.model.pixel_encoders import spec as encoder_spec
from deeplab2_kmax.model.transformer_decoder import spec as transformer_spec

_BACKBONE = "model_options.backbone"
_DECODER = "model_options.decoder"
_MAX_DEEPLAB = "model_options.max_deeplab"
_TRANSFORMER = f"{_MAX_DEEPLAB}.transformer_decoder"
_PIXEL_DECODER = f"{_MAX_DEEPLAB}.pixel_decoder"
_SOLVER = "trainer_options.solver_options"

# Spec class -> {spec field: the config field it is read from}. Fields whose
# path is marked "*" are derived, not read (see `model_spec`).
FIELD_PATHS: Dict[type, Dict[str, str]] = {
    encoder_spec.PixelEncoderSpec: {
        "name": f"{_BACKBONE}.name",
        "drop_path_keep_prob": f"{_BACKBONE}.drop_path_keep_prob",
        "drop_path_schedule": f"{_BACKBONE}.drop_path_schedule",
        "width_multiplier": f"{_BACKBONE}.backbone_width_multiplier",
        "blocks_per_stage": f"{_BACKBONE}.blocks_per_stage",
    },
    decoder_spec.PixelDecoderSpec: {
        "high_resolution_output_stride":
            f"{_PIXEL_DECODER}.high_resolution_output_stride",
        "num_blocks": f"{_PIXEL_DECODER}.num_blocks",
        "width_multiplier": f"{_PIXEL_DECODER}.width_multiplier",
    },
    transformer_spec.KMaXLayerSpec: {
        name: f"{_TRANSFORMER}.{name}"
        for name in ("channels", "ffn_channels", "num_heads",
                     "cross_attention", "drop_path_keep_prob")
    },
    transformer_spec.TransformerDecoderSpec: {
        "num_mask_slots": f"{_TRANSFORMER}.num_mask_slots",
        "num_blocks": f"{_TRANSFORMER}.num_blocks",
        "drop_query_keep_number": f"*{_TRANSFORMER}.use_drop_query",
    },
    head_spec.HeadSpec: {
        "pixel_head_channels": f"{_MAX_DEEPLAB}.pixel_space_head.head_channels",
        "pixel_output_channels":
            f"{_MAX_DEEPLAB}.pixel_space_head.output_channels",
        "mask_logits_gamma_init":
            f"{_MAX_DEEPLAB}.mask_logits_batch_norm_gamma_init",
    },
    head_spec.SemanticBranchSpec: {
        "num_classes": f"*{_MAX_DEEPLAB}.auxiliary_semantic_head."
                       "output_channels",
        "head_channels": f"{_MAX_DEEPLAB}.auxiliary_semantic_head."
                         "head_channels",
        "use_decoder": f"{_MAX_DEEPLAB}.use_auxiliary_semantic_decoder",
        "feature_key": f"{_DECODER}.feature_key",
        "low_level_keys": f"*{_MAX_DEEPLAB}.auxiliary_low_level",
        "low_level_channels": f"*{_MAX_DEEPLAB}.auxiliary_low_level",
        "aspp_channels": f"{_DECODER}.aspp_channels",
        "decoder_channels": f"{_DECODER}.decoder_channels",
        "atrous_rates": f"{_DECODER}.atrous_rates",
    },
    layer_spec.BatchNormSpec: {
        "use_sync_batch_norm": f"{_SOLVER}.use_sync_batchnorm",
        "momentum": f"{_SOLVER}.batchnorm_momentum",
        "epsilon": f"{_SOLVER}.batchnorm_epsilon",
    },
    model_spec.KMaXDeepLabSpec: {
        "num_classes": "*train_dataset_options.dataset",
        "recompute": "trainer_options.recompute",
    },
}


class ModelOptionsError(ValueError):
  """The config's model fields fail their specs' checks."""

  def __init__(self, problems: List[str]):
    self.problems = list(problems)
    super().__init__("invalid model options:\n  " + "\n  ".join(problems))


def _read(config, path: str):
  """The value at `path` when the config sets it, else None."""
  *parents, name = path.split(".")
  message = config
  for parent in parents:
    message = getattr(message, parent)
  value = getattr(message, name)
  if message.DESCRIPTOR.fields_by_name[name].is_repeated:
    return tuple(value) or None
  return value if message.HasField(name) else None


class _Builder:
  """Builds specs, collecting their problems under textproto paths."""

  def __init__(self, config):
    self.config = config
    self.problems: List[str] = []

  def require(self, condition: bool, path: str, message: str):
    if not condition:
      self.problems.append(f"field '{path}': {message}")

  def build(self, spec_class, **derived):
    """`spec_class` of the config's set fields and `derived` values; None
    (the problems recorded) when its checks fail."""
    paths = FIELD_PATHS[spec_class]
    fields = {}
    for field, path in paths.items():
      value = None if path.startswith("*") else _read(self.config, path)
      if value is not None:
        fields[field] = value
    fields.update(derived)
    try:
      return spec_class(**fields)
    except spec_checks.SpecError as e:
      for field, message in e.problems:
        self.require(False, paths.get(field, field).lstrip("*"), message)
      return None


def _transformer_decoder(builder: _Builder, config):
  td = config.model_options.max_deeplab.transformer_decoder
  layer = builder.build(transformer_spec.KMaXLayerSpec)
  decoder = builder.build(transformer_spec.TransformerDecoderSpec)
  if decoder is None:
    return None
  if td.use_drop_query:
    # Drop query keeps half of the centres (paper §4.1).
    slots = decoder.num_mask_slots
    builder.require(slots >= 2 and slots % 2 == 0,
                    f"{_TRANSFORMER}.use_drop_query",
                    f"needs an even num_mask_slots >= 2, got {slots}")
    decoder = dataclasses.replace(decoder, drop_query_keep_number=slots // 2)
  return layer and dataclasses.replace(decoder, layer=layer)


def _semantic(builder: _Builder, config, dataset_num_classes: Optional[int]):
  max_deeplab = config.model_options.max_deeplab
  head = max_deeplab.auxiliary_semantic_head
  # A set head size must fit the dataset even when no loss reads the head.
  if head.HasField("output_channels"):
    builder.require(
        dataset_num_classes is None or
        head.output_channels == dataset_num_classes,
        f"{_MAX_DEEPLAB}.auxiliary_semantic_head.output_channels",
        f"{head.output_channels} differs from the dataset's "
        f"{dataset_num_classes} classes")
  if not config.trainer_options.loss_options.HasField("semantic_loss"):
    return None
  derived = {}
  if head.HasField("output_channels"):
    derived["num_classes"] = head.output_channels
  elif dataset_num_classes is not None:
    derived["num_classes"] = dataset_num_classes
  low_level = max_deeplab.auxiliary_low_level
  if low_level:
    derived["low_level_keys"] = tuple(x.feature_key for x in low_level)
    derived["low_level_channels"] = tuple(x.channels_project
                                          for x in low_level)
  return builder.build(head_spec.SemanticBranchSpec, **derived)


def _model_spec(config, num_classes: int, dataset_num_classes: Optional[int]
                ) -> Tuple[Optional[model_spec.KMaXDeepLabSpec], List[str]]:
  builder = _Builder(config)
  components = dict(
      encoder=builder.build(encoder_spec.PixelEncoderSpec),
      pixel_decoder=builder.build(decoder_spec.PixelDecoderSpec),
      transformer_decoder=_transformer_decoder(builder, config),
      head=builder.build(head_spec.HeadSpec),
      batch_norm=builder.build(layer_spec.BatchNormSpec))
  semantic = _semantic(builder, config, dataset_num_classes)
  spec = builder.build(model_spec.KMaXDeepLabSpec, num_classes=num_classes,
                       semantic=semantic, **{
                           k: v for k, v in components.items() if v})
  if builder.problems:
    spec = None
  return spec, builder.problems


def check(config, dataset_num_classes: Optional[int]) -> List[str]:
  """The problems of the config's model fields ("field '<path>': ...")."""
  return _model_spec(config, max(1, dataset_num_classes or 1),
                     dataset_num_classes)[1]


def model_spec_of(config, num_classes: int,
                  dataset_num_classes: int) -> model_spec.KMaXDeepLabSpec:
  """The spec of the model `config` describes.

  Args:
    config: An `ExperimentOptions`.
    num_classes: The model's non-void classes.
    dataset_num_classes: The dataset's classes (the semantic head's default
      output channels).

  Raises:
    ModelOptionsError: a field fails its spec's check (paths named).
  """
  spec, problems = _model_spec(config, num_classes, dataset_num_classes)
  if problems:
    raise ModelOptionsError(problems)
  return spec
