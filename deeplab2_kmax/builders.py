"""Config -> plain-argument builders: the one place that reads protos.

Everything below the edge (model, loss, data, post-processing, evaluators)
takes plain Python arguments; these functions translate an
`ExperimentOptions` into them.
"""

import dataclasses
from typing import Dict
from typing import Optional

import tensorflow as tf

from deeplab2_kmax import model_options
from deeplab2_kmax.data import dataset_registry
from deeplab2_kmax.data import input_pipeline
from deeplab2_kmax.losses import max_deeplab_loss
from deeplab2_kmax.model import kmax_deeplab
from deeplab2_kmax.model import kmax_deeplab_spec
from deeplab2_kmax.post_processing import max_deeplab as post_processing


def dataset_info(config) -> dataset_registry.DatasetInfo:
  name = (config.train_dataset_options.dataset or
          config.eval_dataset_options.dataset)
  return dataset_registry.get(name)


def class_ids(info: dataset_registry.DatasetInfo):
  """(thing ids, stuff ids) in class-logit order."""
  ordered = max_deeplab_loss.thing_stuff_class_ids(
      info.num_classes, info.ignore_label, info.thing_class_ids)
  things = list(info.thing_class_ids)
  return things, ordered[len(things):]


def model_spec(config) -> kmax_deeplab_spec.KMaXDeepLabSpec:
  """The `KMaXDeepLab` spec of `config` (`model_options.model_spec_of`)."""
  info = dataset_info(config)
  things, stuff = class_ids(info)
  return model_options.model_spec_of(config, len(things) + len(stuff),
                                     info.num_classes)


def model_kwargs(config) -> Dict[str, object]:
  """`model_spec` as `KMaXDeepLab`'s flat keywords (to read or change some
  by name: `KMaXDeepLab(**model_kwargs(config))` builds the same model)."""
  return kmax_deeplab_spec.to_flat(model_spec(config))


def build_model(config, crop_size=None) -> kmax_deeplab.KMaXDeepLab:
  """Builds the model and, with `crop_size`, creates its variables.

  The variables are created by tracing one inference call at that size
  (no forward pass is run), so even the official crops build in seconds.
  """
  model = kmax_deeplab.KMaXDeepLab(model_spec(config))
  if crop_size is not None:
    height, width = (int(v) for v in crop_size)
    trace = tf.function(lambda images: model(images, training=False,
                                             return_semantic=True))
    trace.get_concrete_function(tf.TensorSpec([1, height, width, 3],
                                              tf.float32))
  return model


def loss_kwargs(config, seed: Optional[tf.Tensor] = None
                ) -> Dict[str, object]:
  """The `MaXDeepLabLoss` constructor arguments for `config`."""
  info = dataset_info(config)
  loss_options = config.trainer_options.loss_options
  kmax = config.model_options.max_deeplab

  def weight(name):
    return (getattr(loss_options, name).weight
            if loss_options.HasField(name) else 0.0)

  def top_k(name):
    return getattr(loss_options, name).top_k_percent

  matching = loss_options.matching_implementation
  if matching == "auto" and config.trainer_options.jit_compile:
    matching = "tensorflow"  # The host matcher cannot run inside XLA.
  spec = max_deeplab_loss.LossSpec(
      pq_style_loss_weight=weight("pq_style_loss"),
      mask_id_cross_entropy_loss_weight=weight("mask_id_cross_entropy_loss"),
      instance_discrimination_loss_weight=weight(
          "instance_discrimination_loss"),
      semantic_loss_weight=weight("semantic_loss"),
      instance_discrimination_sample_k=kmax.instance_discrimination_sample_k,
      instance_discrimination_sample_temperature=(
          kmax.instance_discrimination_sample_temperature),
      semantic_sample_k=kmax.semantic_sample_k,
      semantic_sample_temperature=kmax.semantic_sample_temperature,
      semantic_top_k_percent=top_k("semantic_loss"),
      mask_id_cross_entropy_top_k_percent=top_k("mask_id_cross_entropy_loss"),
      instance_discrimination_top_k_percent=top_k(
          "instance_discrimination_loss"),
      matching_implementation=matching)
  return dict(num_classes=info.num_classes, ignore_label=info.ignore_label,
              thing_class_ids=info.thing_class_ids, spec=spec, seed=seed)


def build_loss(config, seed: Optional[tf.Tensor] = None
               ) -> max_deeplab_loss.MaXDeepLabLoss:
  return max_deeplab_loss.MaXDeepLabLoss(**loss_kwargs(config, seed))


def post_processor_kwargs(config) -> Dict[str, object]:
  """The `MaskWiseMerging` constructor arguments for `config`."""
  info = dataset_info(config)
  evaluator = config.evaluator_options
  maskwise = evaluator.maskwise_postprocessing
  things, stuff = class_ids(info)
  return dict(
      thing_class_ids=things, stuff_class_ids=stuff,
      label_divisor=info.panoptic_label_divisor,
      void_label=info.ignore_label,
      pixel_confidence_threshold=evaluator.pixel_confidence_threshold,
      transformer_class_confidence_threshold_thing=(
          maskwise.transformer_class_confidence_threshold_thing),
      transformer_class_confidence_threshold_stuff=(
          maskwise.transformer_class_confidence_threshold_stuff),
      overlapping_threshold=maskwise.overlapping_threshold,
      reorder_class_weight=maskwise.reorder_class_weight,
      reorder_mask_weight=maskwise.reorder_mask_weight,
      thing_area_limit=evaluator.thing_area_limit,
      stuff_area_limit=evaluator.stuff_area_limit)


def build_post_processor(config) -> post_processing.MaskWiseMerging:
  return post_processing.MaskWiseMerging(**post_processor_kwargs(config))


def dataset_options(config, training: bool) -> input_pipeline.PipelineOptions:
  """The training or evaluation dataset's `input_pipeline.PipelineOptions`.

  Evaluation never augments: scale 1, no colour policy, no copy-paste.
  """
  options = (config.train_dataset_options if training
             else config.eval_dataset_options)
  augment = options.augmentations
  copy_paste = augment.panoptic_copy_paste
  size = lambda values: tuple(values) if len(values) else None  # pylint: disable=g-long-lambda
  small = options.increase_small_instance_weights
  return input_pipeline.PipelineOptions(
      batch_size=options.batch_size,
      crop_size=tuple(options.crop_size),
      min_resize_value=size(options.min_resize_value),
      max_resize_value=size(options.max_resize_value),
      resize_factor=options.resize_factor or None,
      min_scale_factor=augment.min_scale_factor if training else 1.0,
      max_scale_factor=augment.max_scale_factor if training else 1.0,
      scale_factor_step=augment.scale_factor_step_size if training else 0.0,
      autoaugment_policy=(augment.autoaugment_policy_name or None)
      if training else None,
      random_flip=augment.random_horizontal_flip,
      copy_paste=augment.HasField("panoptic_copy_paste") and training,
      copy_paste_scale=copy_paste.panoptic_copy_paste_scale,
      copy_paste_thing_option=copy_paste.panoptic_copy_paste_thing_option,
      copy_paste_stuff_option=copy_paste.panoptic_copy_paste_stuff_option,
      copy_paste_void_option=copy_paste.panoptic_copy_paste_void_option,
      max_thing_id=options.max_thing_id,
      small_instance_area=options.small_instance_threshold if small else 0,
      small_instance_weight=options.small_instance_weight if small else 1.0,
      shuffle_buffer=options.shuffle_buffer_size,
      skip_corrupt_records=options.skip_corrupt_records)


def dataset_kwargs(config, training: bool) -> Dict[str, object]:
  """`dataset_options` as a dict of its fields, to compare them by name."""
  return dataclasses.asdict(dataset_options(config, training))


def build_dataset(config, training: bool, seed: Optional[int] = None,
                  batch_size: Optional[int] = None) -> tf.data.Dataset:
  """The training (augmented, repeated) or evaluation dataset."""
  options = (config.train_dataset_options if training
             else config.eval_dataset_options)
  pipeline_options = dataset_options(config, training)
  if batch_size:
    pipeline_options = dataclasses.replace(pipeline_options,
                                           batch_size=batch_size)
  return input_pipeline.build_dataset(
      dataset_registry.get(options.dataset), list(options.file_pattern),
      pipeline_options, is_training=training, seed=seed)
