"""SavedModel export for TF Serving; CLI in `export_model`.

`serving_default(image: uint8 [H, W, 3], any size)` checks its input in the
graph (`validated_images`: rank, 3 channels, H, W > 0) and preprocesses it
exactly as the evaluation pipeline does (`preprocessing.eval_resize_and_pad`:
resize to range with the eval dataset's min/max_resize_value and
resize_factor, the cap never above the export crop, then pad with 127.5),
runs the model and the mask-wise merging (XLA-compiled when
`export_options.jit_compile`), and maps the results back to H x W with the
evaluator's `undo_preprocessing.to_original_size`:
  panoptic_pred, semantic_pred (the threshold-free map: each pixel's argmax
    slot's class), instance_pred: int32 [1, H, W]
  instance_scores (max mask probability), semantic_scores (class confidence
    of the pasted slot): float32 [1, H, W]
  (the keys and meanings of DeepLab2's kMaX-DeepLab SavedModel)
  cluster_assignments: int32 [1, L, h, w], the cluster assignment each kMaX
    layer used (its k-means argmax, paper Eq. 5, at the layer's own
    resolution, nearest-resized to the feature resolution; paper Fig. 4)
  (+ pixel_space_mask_logits / transformer_class_logits with
  include_raw_logits). With `batch_signature`, `serving_batch(images: uint8
  [B, H, W, 3])` does the same for a batch of equal-size images.
With `export_options.precision: 'bfloat16'` the model computes in bfloat16
(`precision`); its outputs are cast to float32 inside the graph before the
merging, so the signatures are the same; the module records the precision
that ran in its `precision` variable.
The SavedModel loads with plain `tf.saved_model.load` (no library import).
"""

import os
from typing import Optional

from absl import logging
import tensorflow as tf

from deeplab2_kmax import builders
from deeplab2_kmax import common
from deeplab2_kmax import precision as precision_lib
from deeplab2_kmax.data import preprocessing
from deeplab2_kmax.model import kmax_deeplab
from deeplab2_kmax.post_processing import undo_preprocessing


class ExportError(ValueError):
  """Bad export arguments; the message names them."""


class _ServingModule(tf.Module):
  """The exported object: model + post-processing + resize logic."""

  def __init__(self, model, post_processor, crop_size, resize_bounds,
               dataset_name, include_raw_logits, jit_compile,
               precision=precision_lib.FLOAT32):
    super().__init__()
    self._hold_untracked(model)
    # The signatures capture the model's variables; these are what the
    # SavedModel keeps of it.
    self.model_variables = list(model.variables)
    self._post_processor = post_processor
    self._crop = tuple(int(v) for v in crop_size)
    self._resize = dict(resize_bounds, crop_size=self._crop)
    self._include_raw = include_raw_logits
    self.dataset_name = tf.Variable(dataset_name, trainable=False)
    self.num_mask_slots = tf.Variable(model.num_mask_slots, trainable=False)
    self.precision = tf.Variable(precision, trainable=False)
    self._core = tf.function(self._core_fn, jit_compile=jit_compile)

  @tf.__internal__.tracking.no_automatic_dependency_tracking
  def _hold_untracked(self, model):
    """Keeps the Keras model out of the saved object graph.

    A tracked Keras model makes `tf.saved_model.save` trace every layer's
    `call` again for Keras' own reloading, which the signatures do not
    need: on the tiny test model an export took 39 s with it, 17 s without.
    """
    self.model = model

  def _core_fn(self, images):
    # The merging and every returned tensor in float32 (bfloat16 models).
    outputs = precision_lib.outputs_to_float32(
        self.model(images, training=False, return_auxiliary=True))
    results = self._post_processor(outputs, self._crop)
    results["cluster_assignments"] = tf.stack(
        [aux[kmax_deeplab.ASSIGNMENT_KEY]
         for aux in outputs[common.PRED_AUXILIARY_OUTPUTS]], axis=1)
    if self._include_raw:
      for key in (common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY,
                  common.PRED_TRANSFORMER_CLASS_LOGITS_KEY):
        results[key] = outputs[key]
    return results

  def _preprocess(self, image):
    """uint8 [H, W, 3] -> float32 crop, as the evaluation pipeline."""
    return preprocessing.eval_resize_and_pad(
        tf.cast(image, tf.float32), None, label_pad_value=0,
        **self._resize)[0]

  def _predict(self, images):
    """images: uint8 [B, H, W, 3] (same size)."""
    crop_h, crop_w = self._crop
    original_size = tf.shape(images)[1:3]
    resized_size = preprocessing.eval_resized_size(original_size,
                                                   **self._resize)
    padded = tf.map_fn(self._preprocess, images, fn_output_signature=(
        tf.TensorSpec([crop_h, crop_w, 3], tf.float32)))
    results = self._core(padded)
    outputs = undo_preprocessing.to_original_size(
        {key: results[key] for key in undo_preprocessing.PER_PIXEL_KEYS},
        resized_size, original_size)
    feature_h, feature_w = results["cluster_assignments"].shape[2:4]
    last_h = (resized_size[0] - 1) * feature_h // crop_h
    last_w = (resized_size[1] - 1) * feature_w // crop_w
    outputs["cluster_assignments"] = results["cluster_assignments"][
        :, :, :last_h + 1, :last_w + 1]
    for key in (common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY,
                common.PRED_TRANSFORMER_CLASS_LOGITS_KEY):
      if key in results:
        outputs[key] = results[key]
    return outputs

  # The inputs are declared without a shape so that any tensor a client
  # sends (TF Serving does not check shapes) reaches the in-graph checks of
  # `validated_images`, which answer with what the signature expects.
  @tf.function(input_signature=[tf.TensorSpec(None, tf.uint8, name="image")])
  def serve(self, image):
    return self._predict(validated_images(image, batched=False)[tf.newaxis])

  @tf.function(input_signature=[tf.TensorSpec(None, tf.uint8, name="images")])
  def serve_batch(self, images):
    return self._predict(validated_images(images, batched=True))


def validated_images(images: tf.Tensor, batched: bool) -> tf.Tensor:
  """In-graph checks of a serving input; returns it with its static shape.

  Args:
    images: uint8 [H, W, 3] (`batched=False`) or [B, H, W, 3] of any shape
      (the signature declares none).
    batched: Whether a batch dimension is expected.

  Returns:
    `images` with the static shape [H, W, 3] or [B, H, W, 3].

  Raises:
    tf.errors.InvalidArgumentError: (when run) the rank is not 3 (4), the
      last dimension is not 3 or an image (or the batch) is empty; the
      message says what is expected and gives the shape received.
  """
  expected = ("a uint8 image batch [B, H, W, 3] with B, H, W > 0" if batched
              else "a uint8 image [H, W, 3] with H, W > 0")
  rank = 4 if batched else 3
  message = f"serving input must be {expected} (RGB); got shape"
  shape = tf.shape(images)
  rank_ok = tf.debugging.Assert(tf.equal(tf.size(shape), rank),
                                [message, shape], summarize=8)
  with tf.control_dependencies([rank_ok]):  # Index the shape once valid.
    dims_ok = tf.debugging.Assert(
        tf.logical_and(tf.equal(shape[-1], 3),
                       tf.reduce_all(shape[:-1] > 0)), [message, shape],
        summarize=8)
  with tf.control_dependencies([dims_ok]):
    return tf.ensure_shape(tf.identity(images), [None] * (rank - 1) + [3])


def resize_options(eval_options, crop_size):
  """The evaluation resize bounds, the long-side cap lowered to the crop.

  With the export crop equal to the eval crop (the default) these are the
  evaluation pipeline's own bounds, so served maps equal the evaluator's.
  """
  cap = [int(v) for v in eval_options.max_resize_value] * 2
  cap = cap[:2] if any(cap) else list(crop_size)  # Unset or 0: the crop.
  return {"min_resize_value": tuple(eval_options.min_resize_value) or None,
          "max_resize_value": tuple(min(c, int(m))
                                    for c, m in zip(cap, crop_size)),
          "resize_factor": eval_options.resize_factor or None}


def serving_module(model, config) -> tf.Module:
  """The object the SavedModel saves; `.serve(image)` is serving_default."""
  options = config.export_options
  crop = (tuple(options.crop_size) or
          tuple(config.eval_dataset_options.crop_size))
  return _ServingModule(
      model, builders.build_post_processor(config), crop,
      resize_options(config.eval_dataset_options, crop),
      builders.dataset_info(config).name, options.include_raw_logits,
      options.jit_compile, precision_lib.model_precision(model))


def export_from_model(model, config, output_path: str):
  """Writes the SavedModel of an already-built (and loaded) model."""
  check_output_path(output_path)
  options = config.export_options
  module = serving_module(model, config)
  signatures = {"serving_default": module.serve.get_concrete_function()}
  if options.batch_signature:
    signatures["serving_batch"] = module.serve_batch.get_concrete_function()
  verbosity = logging.get_verbosity()
  logging.set_verbosity(logging.WARNING)  # SavedModel's per-input chatter.
  try:
    tf.saved_model.save(module, output_path, signatures=signatures)
  finally:
    logging.set_verbosity(verbosity)
  logging.info("Wrote SavedModel to %s", output_path)
  return output_path


def check_output_path(output_path: str) -> None:
  """Refuses an existing, non-empty output folder (never overwritten)."""
  if os.path.isdir(output_path) and os.listdir(output_path):
    raise ExportError(f"--output_path {output_path}: exists and is not "
                      "empty; refusing to overwrite it")


def restore_model(config, checkpoint_path: str,
                  precision: Optional[str] = None):
  """The model built at the export crop with the checkpoint's weights.

  Built in `precision` (default: `export_options.precision`, float32 where
  bfloat16 would be emulated, `precision_lib.resolve`).
  """
  if not tf.io.gfile.exists(checkpoint_path + ".index"):
    raise ExportError(f"--checkpoint_path {checkpoint_path}: no such "
                      f"checkpoint (expected {checkpoint_path}.index)")
  crop = (tuple(config.export_options.crop_size) or
          tuple(config.eval_dataset_options.crop_size))
  try:
    precision = precision_lib.resolve(
        precision or config.export_options.precision,
        "export_options.precision")
  except precision_lib.PrecisionError as e:
    raise ExportError(str(e)) from None
  model = precision_lib.build_model(config, crop, precision)
  tf.train.Checkpoint(model=model).restore(checkpoint_path).expect_partial()
  return model


def export(config, checkpoint_path: str, output_path: str) -> str:
  """Builds the model at the export crop, restores it and exports it."""
  check_output_path(output_path)
  return export_from_model(restore_model(config, checkpoint_path), config,
                           output_path)
