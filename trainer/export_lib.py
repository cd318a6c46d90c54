"""SavedModel export for TF Serving (SPEC §8); CLI in `export_model`.

`serving_default(image: uint8 [H, W, 3], any size)` resizes the image to fit
the export crop (aspect kept, padded with 127.5 like the data pipeline), runs
the model and the mask-wise merging (XLA-compiled when
`export_options.jit_compile`), and maps the results back to H x W:
  panoptic_pred, semantic_pred, instance_pred: int32 [1, H, W]
  semantic_probs (per-pixel confidence), instance_scores: float32 [1, H, W]
  cluster_assignments: int32 [1, L, h, w], the argmax over cluster centres of
    each kMaX layer at the feature resolution (paper Fig. 4)
  (+ pixel_space_mask_logits / transformer_class_logits with
  include_raw_logits). With `batch_signature`, `serving_batch(images: uint8
  [B, H, W, 3])` does the same for a batch of equal-size images.
The SavedModel loads with plain `tf.saved_model.load` (no library import).
"""

import os

from absl import logging
import tensorflow as tf

from deeplab2_kmax import builders
from deeplab2_kmax import common

PAD_VALUE = 127.5


class ExportError(ValueError):
  """Bad export arguments; the message names them."""


class _ServingModule(tf.Module):
  """The exported object: model + post-processing + resize logic."""

  def __init__(self, model, post_processor, crop_size, dataset_name,
               include_raw_logits, jit_compile):
    super().__init__()
    self.model = model
    self._post_processor = post_processor
    self._crop = tuple(int(v) for v in crop_size)
    self._include_raw = include_raw_logits
    self.dataset_name = tf.Variable(dataset_name, trainable=False)
    self.num_mask_slots = tf.Variable(model.num_mask_slots, trainable=False)
    self._core = tf.function(self._core_fn, jit_compile=jit_compile)

  def _core_fn(self, images):
    outputs = self.model(images, training=False, return_auxiliary=True)
    results = self._post_processor(outputs, self._crop)
    assignments = [tf.argmax(aux[common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY],
                             axis=-1, output_type=tf.int32)
                   for aux in outputs[common.PRED_AUXILIARY_OUTPUTS]]
    results["cluster_assignments"] = tf.stack(assignments, axis=1)
    if self._include_raw:
      for key in (common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY,
                  common.PRED_TRANSFORMER_CLASS_LOGITS_KEY):
        results[key] = outputs[key]
    return results

  def _predict(self, images):
    """images: uint8 [B, H, W, 3] (same size)."""
    crop_h, crop_w = self._crop
    shape = tf.shape(images)
    height, width = shape[1], shape[2]
    scale = tf.minimum(crop_h / tf.cast(height, tf.float64),
                       crop_w / tf.cast(width, tf.float64))
    new_h = tf.maximum(1, tf.minimum(crop_h, tf.cast(
        tf.round(tf.cast(height, tf.float64) * scale), tf.int32)))
    new_w = tf.maximum(1, tf.minimum(crop_w, tf.cast(
        tf.round(tf.cast(width, tf.float64) * scale), tf.int32)))
    resized = tf.image.resize(tf.cast(images, tf.float32), [new_h, new_w])
    padded = tf.pad(resized - PAD_VALUE,
                    [[0, 0], [0, crop_h - new_h], [0, crop_w - new_w], [0, 0]])
    padded = tf.ensure_shape(padded + PAD_VALUE, [None, crop_h, crop_w, 3])
    results = self._core(padded)
    outputs = {}
    for key in (common.PRED_PANOPTIC_KEY, common.PRED_SEMANTIC_KEY,
                common.PRED_INSTANCE_KEY, common.PRED_SEMANTIC_PROBS_KEY,
                common.PRED_INSTANCE_SCORES_KEY):
      valid = results[key][:, :new_h, :new_w, tf.newaxis]
      back = tf.image.resize(valid, [height, width], method="nearest")
      outputs[key] = back[..., 0]
    feature_h = (new_h - 1) * results["cluster_assignments"].shape[2] // crop_h
    feature_w = (new_w - 1) * results["cluster_assignments"].shape[3] // crop_w
    outputs["cluster_assignments"] = results["cluster_assignments"][
        :, :, :feature_h + 1, :feature_w + 1]
    for key in (common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY,
                common.PRED_TRANSFORMER_CLASS_LOGITS_KEY):
      if key in results:
        outputs[key] = results[key]
    return outputs

  @tf.function(input_signature=[
      tf.TensorSpec([None, None, 3], tf.uint8, name="image")])
  def serve(self, image):
    return self._predict(image[tf.newaxis])

  @tf.function(input_signature=[
      tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
  def serve_batch(self, images):
    return self._predict(images)


def export_from_model(model, config, output_path: str):
  """Writes the SavedModel of an already-built (and loaded) model."""
  if os.path.isdir(output_path) and os.listdir(output_path):
    raise ExportError(f"--output_path {output_path}: exists and is not "
                      "empty; refusing to overwrite it")
  options = config.export_options
  crop = (tuple(options.crop_size) or
          tuple(config.eval_dataset_options.crop_size))
  module = _ServingModule(
      model, builders.build_post_processor(config), crop,
      builders.dataset_info(config).name, options.include_raw_logits,
      options.jit_compile)
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


def export(config, checkpoint_path: str, output_path: str) -> str:
  """Builds the model at the export crop, restores it and exports it."""
  if os.path.isdir(output_path) and os.listdir(output_path):
    raise ExportError(f"--output_path {output_path}: exists and is not "
                      "empty; refusing to overwrite it")
  if not tf.io.gfile.exists(checkpoint_path + ".index"):
    raise ExportError(f"--checkpoint_path {checkpoint_path}: no such "
                      f"checkpoint (expected {checkpoint_path}.index)")
  crop = (tuple(config.export_options.crop_size) or
          tuple(config.eval_dataset_options.crop_size))
  model = builders.build_model(config, crop_size=crop)
  tf.train.Checkpoint(model=model).restore(checkpoint_path).expect_partial()
  return export_from_model(model, config, output_path)
