"""DeepLab2's recipe table (reference/deeplab2_recipes.md) and our values.

`read_table` parses the markdown table. Every one of its fields is either
* mapped to the value this library actually uses (`EFFECTIVE`): read from
  the arguments the builders hand to the model, the loss, the input pipeline
  and the post-processor, from the optimizers the trainer builds, or from the
  config field the trainer / evaluator reads directly;
* fixed by our architecture (`FIXED`, with where it is verified); or
* not used by kMaX at all (`NOT_USED_BY_KMAX`, with the reason).
One mapping serves every column (COCO, Cityscapes, ADE20K): the four values
DeepLab2 switches on the dataset name (the "(hard-coded)" rows, e.g. the
ADE20K transformer-decoder drop path 1.0) are config fields here.
"""

import dataclasses
import re
from typing import Callable
from typing import Dict

from deeplab2_kmax import builders
from deeplab2_kmax.trainer import optimization

# Our names of DeepLab2's kMaX encoder endpoints.
_ENDPOINTS = {"feature_semantic": "stage5", "res3": "res3", "res2": "res2"}


def read_table(path) -> Dict[str, Dict[str, str]]:
  """{column (e.g. 'coco/r50_os32'): {field: cell text}}."""
  rows = [line.strip() for line in open(path, encoding="utf-8")
          if line.strip().startswith("|")]
  split = lambda row: [cell.strip() for cell in row.strip("|").split("|")]
  header = split(rows[0])
  columns = {name: {} for name in header[1:]}
  for row in rows[2:]:
    cells = split(row)
    for name, cell in zip(header[1:], cells[1:]):
      columns[name][cells[0]] = cell
  return columns


def config_name(column: str) -> str:
  """'coco/r50_os32' -> 'coco/kmax_r50_os32' (our config file stem)."""
  dataset, model = column.split("/")
  return f"{dataset}/kmax_{model}"


@dataclasses.dataclass
class Effective:
  """What the trainer and evaluator build from one config."""
  config: object

  def __post_init__(self):
    config = self.config
    self.model = builders.model_kwargs(config)
    self.loss = builders.loss_kwargs(config)
    self.train = builders.dataset_kwargs(config, training=True)
    self.eval = builders.dataset_kwargs(config, training=False)
    self.post = builders.post_processor_kwargs(config)
    self.optimizer, self.backbone_optimizer = optimization.build_optimizers(
        config.trainer_options.solver_options)


def _resize(values):
  """None (no resize) reads as DeepLab2's [0]."""
  return list(values) if values else [0]


def _small_instance_threshold(kwargs, options):
  # Only in effect with increase_small_instance_weights (else DeepLab2 does
  # not use it either); then it is the pipeline's area threshold.
  return kwargs["small_instance_area"] or options.small_instance_threshold


def _dataset_rows(prefix: str, split: str) -> Dict[str, Callable]:
  options = lambda e: getattr(e.config, prefix)  # pylint: disable=g-long-lambda
  kw = lambda e: getattr(e, split)  # pylint: disable=g-long-lambda
  aug = f"{prefix}.augmentations"
  rows = {
      f"{aug}.autoaugment_policy_name":
          lambda e: kw(e)["autoaugment_policy"] or "",
      f"{aug}.max_scale_factor": lambda e: kw(e)["max_scale_factor"],
      f"{aug}.min_scale_factor": lambda e: kw(e)["min_scale_factor"],
      f"{prefix}.batch_size": lambda e: kw(e)["batch_size"],
      f"{prefix}.crop_size": lambda e: list(kw(e)["crop_size"]),
      f"{prefix}.dataset": lambda e: options(e).dataset,
      # Validated to be true: the pipeline always decodes the panoptic
      # labels and makes thing-id masks.
      f"{prefix}.decode_groundtruth_label":
          lambda e: options(e).decode_groundtruth_label,
      f"{prefix}.thing_id_mask_annotations":
          lambda e: options(e).thing_id_mask_annotations,
      f"{prefix}.increase_small_instance_weights":
          lambda e: kw(e)["small_instance_area"] > 0,
      f"{prefix}.small_instance_threshold":
          lambda e: _small_instance_threshold(kw(e), options(e)),
      f"{prefix}.small_instance_weight":
          lambda e: kw(e)["small_instance_weight"],
      f"{prefix}.max_resize_value": lambda e: _resize(kw(e)["max_resize_value"]),
      f"{prefix}.min_resize_value": lambda e: _resize(kw(e)["min_resize_value"]),
      f"{prefix}.max_thing_id": lambda e: kw(e)["max_thing_id"],
      f"{prefix}.resize_factor": lambda e: kw(e)["resize_factor"] or 0,
  }
  if split == "train":
    copy_paste = f"{aug}.panoptic_copy_paste"
    rows.update({
        f"{aug}.scale_factor_step_size":
            lambda e: kw(e)["scale_factor_step"],
        f"{copy_paste}.panoptic_copy_paste_scale":
            lambda e: kw(e)["copy_paste_scale"],
        f"{copy_paste}.panoptic_copy_paste_thing_option":
            lambda e: kw(e)["copy_paste_thing_option"],
        f"{copy_paste}.panoptic_copy_paste_stuff_option":
            lambda e: kw(e)["copy_paste_stuff_option"],
        f"{copy_paste}.panoptic_copy_paste_void_option":
            lambda e: kw(e)["copy_paste_void_option"],
    })
  return rows


def schedule(optimizer):
  """The learning-rate schedule inside a tf_keras optimizer."""
  return optimizer._learning_rate  # pylint: disable=protected-access


def _lr(e, step, backbone=False):
  optimizer = e.backbone_optimizer if backbone else e.optimizer
  return float(schedule(optimizer)(step))


def _model_rows() -> Dict[str, Callable]:
  mo, md = "model_options", "model_options.max_deeplab"
  low = f"{md}.auxiliary_low_level"
  model_arguments = {
      "(hard-coded) high_resolution_output_stride":
          "high_resolution_output_stride",
      "(hard-coded) num_mask_slots": "num_mask_slots",
      "(hard-coded) transformer_decoder_drop_path_keep_prob":
          "transformer_drop_path_keep_prob",
      "(hard-coded) use_auxiliary_semantic_decoder": "use_semantic_decoder",
      f"{mo}.backbone.backbone_width_multiplier": "backbone_width_multiplier",
      f"{mo}.backbone.drop_path_keep_prob": "backbone_drop_path_keep_prob",
      f"{mo}.decoder.aspp_channels": "aspp_channels",
      f"{mo}.decoder.decoder_channels": "semantic_decoder_channels",
      f"{mo}.decoder.feature_key": "semantic_feature_key",
      f"{md}.auxiliary_semantic_head.head_channels": "semantic_head_channels",
      f"{md}.auxiliary_semantic_head.output_channels": "semantic_num_classes",
      f"{md}.pixel_space_head.head_channels": "pixel_head_channels",
      f"{md}.pixel_space_head.output_channels": "pixel_output_channels",
  }
  loss_arguments = ("instance_discrimination_sample_k",
                    "instance_discrimination_sample_temperature",
                    "semantic_sample_k", "semantic_sample_temperature")
  rows = {field: lambda e, k=key: e.model[k]
          for field, key in model_arguments.items()}
  rows.update({f"{md}.{key}": lambda e, k=key: getattr(e.loss["spec"], k)
               for key in loss_arguments})
  for index in (0, 1):
    rows[f"{low}[{index}].channels_project"] = (
        lambda e, i=index: e.model["semantic_low_level_channels"][i])
    rows[f"{low}[{index}].feature_key"] = (
        lambda e, i=index: e.model["semantic_low_level_keys"][i])
  rows.update({
      # Our encoders take depths per stage instead; None = the variant's own.
      f"{mo}.backbone.backbone_layer_multiplier":
          lambda e: 1 if e.model["backbone_blocks_per_stage"] is None else None,
      f"{mo}.backbone.name": lambda e: "kmax_" + e.model["backbone"],
      f"{mo}.decoder.atrous_rates": lambda e: list(e.model["atrous_rates"]),
  })
  return rows


def _trainer_rows() -> Dict[str, Callable]:
  lo, so = "trainer_options.loss_options", "trainer_options.solver_options"
  solver = lambda e: e.config.trainer_options.solver_options  # pylint: disable=g-long-lambda
  warmup = lambda e: solver(e).warmup_steps  # pylint: disable=g-long-lambda
  rows = {
      f"{lo}.semantic_loss.name":  # Validated: the only semantic loss.
          lambda e: e.config.trainer_options.loss_options.semantic_loss.name,
      # Validated to be 1: the PQ-style loss has no hard-pixel mining.
      f"{lo}.pq_style_loss.top_k_percent":
          lambda e: e.config.trainer_options.loss_options.pq_style_loss
          .top_k_percent,
      f"{lo}.pq_style_loss.weight":
          lambda e: e.loss["spec"].pq_style_loss_weight,
      f"{so}.adamw_weight_decay": lambda e: e.optimizer.weight_decay,
      # The rate at the end of warm-up is the base rate (DeepLab2's formula,
      # checked step by step in test_recipes); backbone / rest at any step.
      f"{so}.base_learning_rate":
          lambda e: _lr(e, warmup(e) - 1) * warmup(e) / (warmup(e) - 1),
      f"{so}.backbone_learning_rate_multiplier":
          lambda e: _lr(e, 1000, backbone=True) / _lr(e, 1000),
      f"{so}.batchnorm_epsilon": lambda e: e.model["batch_norm_epsilon"],
      f"{so}.batchnorm_momentum": lambda e: e.model["batch_norm_momentum"],
      f"{so}.use_sync_batchnorm": lambda e: e.model["use_sync_batch_norm"],
      f"{so}.optimizer": lambda e: type(e.optimizer).__name__.lower(),
      # Read by the trainer / train_lib as they are; the schedule fields are
      # also checked through the schedule itself in test_recipes.
      f"{so}.clip_gradient_norm": lambda e: solver(e).clip_gradient_norm,
      f"{so}.use_gradient_clipping": lambda e: solver(e).use_gradient_clipping,
      f"{so}.learning_policy": lambda e: solver(e).learning_policy,
      f"{so}.poly_end_learning_rate": lambda e: solver(e).poly_end_learning_rate,
      f"{so}.poly_learning_power": lambda e: solver(e).poly_learning_power,
      f"{so}.training_number_of_steps":
          lambda e: solver(e).training_number_of_steps,
      f"{so}.warmup_steps": lambda e: solver(e).warmup_steps,
  }
  for name, key in (("semantic_loss", "semantic"),
                    ("mask_id_cross_entropy_loss", "mask_id_cross_entropy"),
                    ("instance_discrimination_loss",
                     "instance_discrimination")):
    rows[f"{lo}.{name}.weight"] = (
        lambda e, k=key: getattr(e.loss["spec"], f"{k}_loss_weight"))
    rows[f"{lo}.{name}.top_k_percent"] = (
        lambda e, k=key: getattr(e.loss["spec"], f"{k}_top_k_percent"))
  return rows


def _evaluator_rows() -> Dict[str, Callable]:
  ev, mw = "evaluator_options", "evaluator_options.maskwise_postprocessing"
  options = lambda e: e.config.evaluator_options  # pylint: disable=g-long-lambda
  rows = {
      # Read by train_lib / the evaluator as they are.
      f"{ev}.continuous_eval_timeout":
          lambda e: options(e).continuous_eval_timeout,
      f"{ev}.detailed_ap_metrics": lambda e: options(e).detailed_ap_metrics,
      f"{ev}.eval_steps": lambda e: options(e).eval_steps,
      # How the evaluator saves predictions (tests/trainer/
      # test_evaluator_outputs.py); no effect on the metrics.
      f"{ev}.convert_raw_to_eval_ids":
          lambda e: options(e).convert_raw_to_eval_ids,
      f"{ev}.num_vis_samples": lambda e: options(e).num_vis_samples,
      f"{ev}.raw_panoptic_format": lambda e: options(e).raw_panoptic_format,
      # Validated: the only implemented choices.
      f"{ev}.transformer_post_processing":
          lambda e: options(e).transformer_post_processing,
      f"{ev}.use_tf_function": lambda e: options(e).use_tf_function,
  }
  for name in ("pixel_confidence_threshold", "stuff_area_limit",
               "thing_area_limit"):
    rows[f"{ev}.{name}"] = lambda e, n=name: e.post[n]
  for name in ("overlapping_threshold", "reorder_class_weight",
               "reorder_mask_weight",
               "transformer_class_confidence_threshold_stuff",
               "transformer_class_confidence_threshold_thing"):
    rows[f"{mw}.{name}"] = lambda e, n=name: e.post[n]
  return rows


EFFECTIVE: Dict[str, Callable[[Effective], object]] = {
    **_dataset_rows("train_dataset_options", "train"),
    **_dataset_rows("eval_dataset_options", "eval"),
    **_model_rows(), **_trainer_rows(), **_evaluator_rows(),
}

_PARITY = "the parity tests in tests/model (DeepLab2's own outputs)"
FIXED = {
    "model_options.backbone.output_stride":
        ("32", "every kMaX encoder ends at stride 32 "
               "(tests/model/test_pixel_encoders.py)"),
    "model_options.decoder.aspp_use_only_1x1_proj_conv":
        ("False", f"the ASPP always has its 3x3 atrous branches; {_PARITY}"),
    "model_options.decoder.decoder_conv_type":
        ("depthwise_separable_conv", f"semantic decoder fusion; {_PARITY}"),
    "model_options.max_deeplab.auxiliary_semantic_head.head_conv_type":
        ("depthwise_separable_conv", f"semantic head; {_PARITY}"),
    "model_options.max_deeplab.pixel_space_head.head_conv_type":
        ("depthwise_separable_conv", f"pixel-space head; {_PARITY}"),
    "trainer_options.solver_options.weight_decay":
        ("0", "our model adds no kernel L2 loss (checked on a built model in "
              "tests/config/test_recipes.py)"),
}

_PANOPTIC_DEEPLAB = ("Panoptic-DeepLab's centre heads and post-processing "
                     "only; kMaX has none")
_VIDEO = "video (two-frame) datasets only"
_KMAX_ENCODER = ("DeepLab2's kMaX encoder builder (model/builder.py, "
                 "create_kmax_meta_pixel_encoder) never reads it")
_NAME_ONLY = "DeepLab2's MaX-DeepLab loss never reads this loss's name"
NOT_USED_BY_KMAX = {
    "train_dataset_options.sigma": _PANOPTIC_DEEPLAB,
    "eval_dataset_options.sigma": _PANOPTIC_DEEPLAB,
    "train_dataset_options.use_next_frame": _VIDEO,
    "train_dataset_options.use_two_frames": _VIDEO,
    "eval_dataset_options.use_next_frame": _VIDEO,
    "eval_dataset_options.use_two_frames": _VIDEO,
    "eval_dataset_options.augmentations.scale_factor_step_size":
        "evaluation does not rescale (min = max = 1, checked); the step "
        "selects nothing",
    "evaluator_options.center_score_threshold": _PANOPTIC_DEEPLAB,
    "evaluator_options.keep_k_centers": _PANOPTIC_DEEPLAB,
    "evaluator_options.nms_kernel": _PANOPTIC_DEEPLAB,
    "evaluator_options.merge_semantic_and_instance_with_tf_op":
        _PANOPTIC_DEEPLAB,
    "evaluator_options.add_flipped_images":
        "read by DeepLab2's model/deeplab.py only, not kMaX; we have no "
        "flipped evaluation either",
    "evaluator_options.transformer_class_confidence_threshold":
        "used by DeepLab2's 'pixelwise' post-processing only; 'maskwise' "
        "uses the thing / stuff thresholds",
    "model_options.backbone.drop_path_schedule":
        f"{_KMAX_ENCODER}: its encoders always lower the keep probability "
        "linearly with depth, which is our default 'linear' "
        "(tests/model/test_drop_path_schedule.py); our 'constant' keeps it "
        "flat",
    "model_options.backbone.stem_width_multiplier": _KMAX_ENCODER,
    "model_options.backbone.use_sac_beyond_stride": _KMAX_ENCODER,
    "model_options.backbone.use_squeeze_and_excite": _KMAX_ENCODER,
    "model_options.max_deeplab.auxiliary_semantic_head."
    "max_value_after_activation": "no kMaX head reads it",
    "model_options.max_deeplab.auxiliary_semantic_head."
    "min_value_after_activation": "no kMaX head reads it",
    "model_options.max_deeplab.pixel_space_head.max_value_after_activation":
        "no kMaX head reads it",
    "model_options.max_deeplab.pixel_space_head.min_value_after_activation":
        "no kMaX head reads it",
    "trainer_options.loss_options.pq_style_loss.name": _NAME_ONLY,
    "trainer_options.loss_options.mask_id_cross_entropy_loss.name":
        _NAME_ONLY,
    "trainer_options.loss_options.instance_discrimination_loss.name":
        _NAME_ONLY,
}


def table_form(field: str, value):
  """Our value in the table's vocabulary (encoder endpoint names)."""
  if field == "model_options.decoder.feature_key" or re.search(
      r"auxiliary_low_level\[\d\]\.feature_key", field):
    return {ours: theirs for theirs, ours in _ENDPOINTS.items()}.get(value,
                                                                    value)
  return value
