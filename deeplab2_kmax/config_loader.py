"""Turns a textproto experiment file into a validated `ExperimentOptions`.

Loading has four steps, each with errors that name the file:
1. `${VAR}` placeholders are filled from explicit values (flags), then from
   the environment. Unknown ones are left as they are (`config_text`).
2. The text is parsed into `ExperimentOptions` (parse errors give the line).
3. `--config_override` fragments are merged over it (`config_text`).
4. Semantic validation: known dataset and backbone, supported crop sizes,
   thresholds in [0, 1], positive counts, ... (`validate`).

Unresolved placeholders in file paths (file patterns, checkpoints) are
reported by `unresolved_placeholders`, not treated as errors, so a config can
be checked before its data exists.
"""

import dataclasses
import re
from typing import List
from typing import Mapping
from typing import Optional
from typing import Sequence

from google.protobuf import text_format

from deeplab2_kmax import config_text
from deeplab2_kmax import model_options
from deeplab2_kmax import precision
from deeplab2_kmax.data import dataset_registry
from deeplab2_kmax.losses import matching_registry
from deeplab2_kmax.model.pixel_encoders import spec as encoder_spec
from deeplab2_kmax.protos import config_pb2

# What the trainer implements (trainer/optimization.py).
OPTIMIZERS = ("adamw",)
LEARNING_POLICIES = ("poly",)
MIXED_PRECISION = ("float32", "mixed_bfloat16", "mixed_float16")
METRICS = ("panoptic_quality", "coco_ap", "mean_iou")
COPY_PASTE_OPTIONS = ("all", "random", "none")
RAW_PANOPTIC_FORMATS = ("two_channel_png", "three_channel_png",
                        "two_channel_numpy_array")
# Datasets whose raw predictions can hold evaluation ids.
EVAL_ID_DATASETS = ("cityscapes_panoptic",)


ConfigError = config_text.ConfigError
parse_defines = config_text.parse_defines
substitute_placeholders = config_text.substitute_placeholders
unresolved_placeholders = config_text.unresolved_placeholders


canonical_backbone_name = encoder_spec.canonical_name


def parse_config(text: str, path: str = "<string>") -> config_pb2.ExperimentOptions:
  """Parses textproto `text`; a ConfigError names `path` and the line."""
  config = config_pb2.ExperimentOptions()
  try:
    text_format.Parse(text, config)
  except text_format.ParseError as e:
    line = e.GetLine()
    where = f"{path}:{line}" if line is not None else path
    column = e.GetColumn()
    where = f"{where}:{column}" if column is not None else where
    # The parser's message repeats "line:col :" at its start; keep the rest.
    message = re.sub(r"^\d+:\d+\s*:\s*", "", str(e))
    raise ConfigError(f"{where}: cannot parse config: {message}") from None
  return config


def load_config(path: str,
                values: Optional[Mapping[str, str]] = None,
                validate_config: bool = True,
                overrides: Sequence[str] = ()) -> config_pb2.ExperimentOptions:
  """Reads, fills placeholders, parses, overrides, validates `path`.

  Args:
    path: the textproto file.
    values: `${NAME}` values (from --define); the environment comes next.
    validate_config: run `validate` (tools that only build a model skip it).
    overrides: `--config_override` textproto fragments, merged in order.
  """
  try:
    with open(path, encoding="utf-8") as f:
      text = f.read()
  except OSError as e:
    raise ConfigError(f"{path}: cannot read config: {e.strerror}") from None
  config = parse_config(substitute_placeholders(text, values), path)
  config_text.apply_overrides(config, overrides, values)
  if validate_config:
    validate(config, f"{path} with --config_override" if overrides else path)
  return config


@dataclasses.dataclass
class _Checker:
  path: str
  problems: List[str] = dataclasses.field(default_factory=list)

  def require(self, condition: bool, field: str, message: str):
    if not condition:
      self.problems.append(f"field '{field}': {message}")

  def one_of(self, value: str, allowed, field: str):
    self.require(value in allowed, field,
                 f"{value!r} is not one of {', '.join(map(repr, allowed))}")

  def unit_interval(self, value: float, field: str):
    self.require(0.0 <= value <= 1.0, field, f"{value} is not in [0, 1]")

  def positive(self, value, field: str):
    self.require(value > 0, field, f"{value} must be > 0")


def _supported_size(size: int) -> bool:
  return size > 0 and (size % 32 == 0 or (size - 1) % 32 == 0)


def _check_dataset(c: _Checker, options, prefix: str, required: bool):
  if not options.HasField("dataset"):
    c.require(not required, f"{prefix}.dataset", "is required")
    return None
  try:
    info = dataset_registry.get(options.dataset)
  except ValueError as e:
    c.problems.append(f"field '{prefix}.dataset': {e}")
    info = None
  c.positive(options.batch_size, f"{prefix}.batch_size")
  c.require(len(options.crop_size) == 2, f"{prefix}.crop_size",
            f"needs exactly 2 values (height, width), got "
            f"{list(options.crop_size)}")
  for size in options.crop_size:
    c.require(_supported_size(size), f"{prefix}.crop_size",
              f"{size} is not supported: use 32k+1 (e.g. 641, 1281) or a "
              "multiple of 32")
  for name in ("min_resize_value", "max_resize_value"):
    values = list(getattr(options, name))
    c.require(len(values) <= 2, f"{prefix}.{name}",
              f"takes at most 2 values, got {values}")
  aug = options.augmentations
  c.positive(aug.min_scale_factor, f"{prefix}.augmentations.min_scale_factor")
  c.require(aug.max_scale_factor >= aug.min_scale_factor,
            f"{prefix}.augmentations.max_scale_factor",
            f"{aug.max_scale_factor} < min_scale_factor {aug.min_scale_factor}")
  if aug.HasField("panoptic_copy_paste"):
    cp = aug.panoptic_copy_paste
    cp_prefix = f"{prefix}.augmentations.panoptic_copy_paste"
    c.require(0.0 < cp.panoptic_copy_paste_scale <= 1.0,
              f"{cp_prefix}.panoptic_copy_paste_scale",
              f"{cp.panoptic_copy_paste_scale} is not in (0, 1]")
    for name in ("thing", "stuff", "void"):
      field = f"panoptic_copy_paste_{name}_option"
      c.one_of(getattr(cp, field), COPY_PASTE_OPTIONS, f"{cp_prefix}.{field}")
  c.positive(options.max_thing_id, f"{prefix}.max_thing_id")
  for name in ("decode_groundtruth_label", "thing_id_mask_annotations"):
    c.require(getattr(options, name), f"{prefix}.{name}",
              "false is not supported (kMaX needs the panoptic ground truth "
              "with thing-id masks)")
  return info


def _check_eval_images_fit(c: _Checker, options, info):
  """Evaluation pads each image to the crop: no image may exceed it."""
  if len(options.crop_size) != 2:
    return
  largest = [v for v in options.max_resize_value if v > 0]
  if largest:  # Resized to fit inside (max, max) or (max_h, max_w).
    size = tuple(largest * 2)[:2] if len(largest) == 1 else tuple(largest)
    source = f"max_resize_value {list(options.max_resize_value)}"
  elif info.max_image_size and not any(
      v > 0 for v in options.min_resize_value):
    size = info.max_image_size
    source = f"{info.name}'s images (up to {size[0]}x{size[1]}, no resize)"
  else:
    return
  crop = tuple(options.crop_size)
  c.require(crop[0] >= size[0] and crop[1] >= size[1],
            "eval_dataset_options.crop_size",
            f"{list(crop)} is smaller than {source}; evaluation pads every "
            f"image to the crop, so it needs at least {size[0]}x{size[1]}")


def _check_losses(c: _Checker, loss_options):
  for name in ("semantic_loss", "pq_style_loss", "mask_id_cross_entropy_loss",
               "instance_discrimination_loss"):
    loss = getattr(loss_options, name)
    field = f"trainer_options.loss_options.{name}"
    c.require(loss.weight >= 0, f"{field}.weight", f"{loss.weight} must be >= 0")
    c.require(0.0 < loss.top_k_percent <= 1.0, f"{field}.top_k_percent",
              f"{loss.top_k_percent} is not in (0, 1]")
  # DeepLab2's PQ-style loss has no hard-pixel mining (and ignores the field).
  c.require(loss_options.pq_style_loss.top_k_percent == 1.0,
            "trainer_options.loss_options.pq_style_loss.top_k_percent",
            f"{loss_options.pq_style_loss.top_k_percent} is not supported "
            "(only 1.0)")
  c.one_of(loss_options.semantic_loss.name or "softmax_cross_entropy",
           ("softmax_cross_entropy",),
           "trainer_options.loss_options.semantic_loss.name")
  # The other losses are defined by their field; a name would be ignored.
  for name in ("pq_style_loss", "mask_id_cross_entropy_loss",
               "instance_discrimination_loss"):
    loss_name = getattr(loss_options, name).name
    c.require(not loss_name, f"trainer_options.loss_options.{name}.name",
              f"{loss_name!r} is not used (the field names the loss); "
              "leave it empty")


def _check_model(c: _Checker, config, info):
  """The model's fields, by the checks of the specs the model is built from
  (`model_options`), and the trainer's batch-norm and recompute fields."""
  c.problems.extend(model_options.check(
      config, info.num_classes if info is not None else None))


def _check_trainer(c: _Checker, trainer, batch_size: int):
  solver = trainer.solver_options
  steps = trainer.gradient_accumulation_steps
  c.require(steps >= 1 and batch_size % steps == 0,
            "trainer_options.gradient_accumulation_steps",
            f"{steps} must be >= 1 and divide the train batch_size {batch_size}")
  c.one_of(solver.optimizer, OPTIMIZERS,
           "trainer_options.solver_options.optimizer")
  c.one_of(solver.learning_policy, LEARNING_POLICIES,
           "trainer_options.solver_options.learning_policy")
  c.require(solver.base_learning_rate > 0,
            "trainer_options.solver_options.base_learning_rate",
            f"{solver.base_learning_rate} must be > 0")
  c.positive(solver.training_number_of_steps,
             "trainer_options.solver_options.training_number_of_steps")
  c.require(solver.warmup_steps >= 0,
            "trainer_options.solver_options.warmup_steps",
            f"{solver.warmup_steps} must be >= 0")
  c.require(solver.adamw_weight_decay >= 0,
            "trainer_options.solver_options.adamw_weight_decay",
            f"{solver.adamw_weight_decay} must be >= 0")
  c.require(solver.backbone_learning_rate_multiplier >= 0,
            "trainer_options.solver_options.backbone_learning_rate_multiplier",
            f"{solver.backbone_learning_rate_multiplier} must be >= 0")
  for name in ("save_checkpoints_steps", "save_summaries_steps",
               "steps_per_loop", "num_checkpoints_to_keep"):
    c.positive(getattr(trainer, name), f"trainer_options.{name}")
  if trainer.steps_per_loop > 0:
    # Orbit writes summaries at the end of a loop and refuses otherwise.
    c.require(trainer.save_summaries_steps % trainer.steps_per_loop == 0,
              "trainer_options.save_summaries_steps",
              f"{trainer.save_summaries_steps} must be a multiple of "
              f"steps_per_loop {trainer.steps_per_loop} (summaries are "
              "written at the end of a loop)")
  c.require(trainer.save_prediction_images_steps >= 0,
            "trainer_options.save_prediction_images_steps",
            f"{trainer.save_prediction_images_steps} must be >= 0 (0: never)")
  c.require(trainer.max_skipped_non_finite_steps >= 0,
            "trainer_options.max_skipped_non_finite_steps",
            f"{trainer.max_skipped_non_finite_steps} must be >= 0 (0: stop "
            "at the first non-finite step)")
  c.one_of(trainer.mixed_precision, MIXED_PRECISION,
           "trainer_options.mixed_precision")
  c.one_of(trainer.loss_options.matching_implementation,
           tuple(matching_registry.MATCHING_IMPLEMENTATIONS),
           "trainer_options.loss_options.matching_implementation")
  _check_losses(c, trainer.loss_options)


def _check_saving(c: _Checker, evaluator, info):
  c.require(evaluator.num_vis_samples >= 0, "evaluator_options.num_vis_samples",
            f"{evaluator.num_vis_samples} must be >= 0")
  c.one_of(evaluator.raw_panoptic_format, RAW_PANOPTIC_FORMATS,
           "evaluator_options.raw_panoptic_format")
  if (evaluator.save_raw_predictions and evaluator.convert_raw_to_eval_ids and
      info is not None):
    c.require(info.name in EVAL_ID_DATASETS,
              "evaluator_options.convert_raw_to_eval_ids",
              f"{info.name} has no evaluation ids (only "
              f"{', '.join(EVAL_ID_DATASETS)}): set it to false to save raw "
              "predictions")


def _check_evaluator(c: _Checker, evaluator):
  c.require(evaluator.use_tf_function, "evaluator_options.use_tf_function",
            "false is not supported (evaluation always runs in tf.function)")
  c.one_of(evaluator.transformer_post_processing, ("maskwise",),
           "evaluator_options.transformer_post_processing")
  c.unit_interval(evaluator.pixel_confidence_threshold,
                  "evaluator_options.pixel_confidence_threshold")
  maskwise = evaluator.maskwise_postprocessing
  for name in ("transformer_class_confidence_threshold_thing",
               "transformer_class_confidence_threshold_stuff",
               "overlapping_threshold"):
    c.unit_interval(getattr(maskwise, name),
                    f"evaluator_options.maskwise_postprocessing.{name}")
  for name in ("reorder_class_weight", "reorder_mask_weight"):
    c.require(getattr(maskwise, name) >= 0,
              f"evaluator_options.maskwise_postprocessing.{name}",
              f"{getattr(maskwise, name)} must be >= 0")
  for name in ("thing_area_limit", "stuff_area_limit"):
    c.require(getattr(evaluator, name) >= 0, f"evaluator_options.{name}",
              f"{getattr(evaluator, name)} must be >= 0")
  for metric in evaluator.metrics:
    c.one_of(metric, METRICS, "evaluator_options.metrics")
  c.one_of(evaluator.precision, precision.PRECISIONS,
           "evaluator_options.precision")


def validate(config: config_pb2.ExperimentOptions, path: str = "<config>"):
  """Checks the meaning of `config`; raises one ConfigError listing all problems."""
  c = _Checker(path)
  train_info = _check_dataset(c, config.train_dataset_options,
                              "train_dataset_options", required=False)
  eval_info = _check_dataset(c, config.eval_dataset_options,
                             "eval_dataset_options", required=False)
  if eval_info is not None:
    _check_eval_images_fit(c, config.eval_dataset_options, eval_info)
  c.require(train_info is not None or eval_info is not None,
            "train_dataset_options.dataset",
            "at least one of train/eval dataset options must name a dataset")
  if train_info and eval_info:
    c.require(train_info.name == eval_info.name, "eval_dataset_options.dataset",
              f"{eval_info.name!r} differs from the training dataset "
              f"{train_info.name!r}")
  info = train_info or eval_info

  _check_model(c, config, info)
  _check_trainer(c, config.trainer_options,
                 config.train_dataset_options.batch_size)
  _check_evaluator(c, config.evaluator_options)
  _check_saving(c, config.evaluator_options, info)

  for size in config.export_options.crop_size:
    c.require(_supported_size(size), "export_options.crop_size",
              f"{size} is not supported: use 32k+1 or a multiple of 32")
  c.one_of(config.export_options.precision, precision.PRECISIONS,
           "export_options.precision")

  if c.problems:
    details = "\n  ".join(c.problems)
    raise ConfigError(f"{path}: invalid config:\n  {details}")
