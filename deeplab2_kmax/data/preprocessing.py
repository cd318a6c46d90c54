"""Geometric preprocessing and training targets (as DeepLab2).

Training: resize to range -> random scale (discrete steps) -> colour
augmentation -> pad to at least the crop (image with 127.5, label with the
ignore id, at a random offset) -> random crop -> random horizontal flip.
Evaluation: resize to range (shrinking to fit the crop) -> pad bottom/right to
the crop.

Images are float32 in [0, 255] (the model normalises); labels are int32
panoptic ids `[H, W, 1]`. Images use bilinear and labels nearest-neighbour
resizing, both with aligned corners, so the two stay registered. All random
draws are stateless, from a `[2]` int seed per sample.
"""

from typing import Dict
from typing import Optional
from typing import Sequence
from typing import Tuple
from typing import Union

import tensorflow as tf

from deeplab2_kmax import common
from deeplab2_kmax.data import autoaugment

PAD_PIXEL_VALUE = 127.5
_FLIP_PROBABILITY = 0.5
Size = Union[int, Sequence[int], None]


def _as_pair(value: Size) -> Optional[Tuple[int, int]]:
  if value is None or value == 0:
    return None
  if isinstance(value, int):
    return (value, value)
  pair = tuple(int(v) for v in value)
  if len(pair) == 1:
    pair = (pair[0], pair[0])
  return None if not any(pair) else pair


def resize(image: tf.Tensor, label: Optional[tf.Tensor], size: tf.Tensor):
  """Resizes image (bilinear) and label (nearest) to `size` = [h, w]."""
  # The TF1 kernels with aligned corners, as DeepLab2 (no deprecation noise).
  image = tf.raw_ops.ResizeBilinear(images=image[None], size=size,
                                    align_corners=True)[0]
  if label is not None:
    label = tf.raw_ops.ResizeNearestNeighbor(images=label[None], size=size,
                                             align_corners=True)[0]
  return image, label


def _scaled(hw: tf.Tensor, scale: tf.Tensor) -> tf.Tensor:
  return tf.cast(tf.floor(hw * scale), tf.int32)


def range_resized_size(height_width: tf.Tensor, min_size: Size = None,
                       max_size: Size = None,
                       factor: Optional[int] = None) -> tf.Tensor:
  """DeepLab2's resize to range: the [2] int32 size, in two floored steps.

  First scale so both sides reach `min_size` (the short side matches it),
  then shrink, never enlarge, so neither side exceeds `max_size`. Each bound
  is an int or (height, width); None or 0 disables it. With `factor`, sides
  are then rounded up to a multiple of `factor` plus one (the max is first
  lowered to such a value, so it still holds).
  """
  min_pair, max_pair = _as_pair(min_size), _as_pair(max_size)
  hw = tf.cast(height_width, tf.float32)
  if min_pair is not None:
    hw = tf.cast(_scaled(hw, tf.reduce_max(
        tf.constant(min_pair, tf.float32) / hw)), tf.float32)
  if max_pair is not None:
    if factor:
      max_pair = tuple(m - (m - 1) % factor for m in max_pair)
    hw = tf.cast(_scaled(hw, tf.minimum(tf.reduce_min(
        tf.constant(max_pair, tf.float32) / hw), 1.0)), tf.float32)
  size = tf.cast(hw, tf.int32)
  if factor:
    size += (factor - (size - 1) % factor) % factor
  return size


def resize_to_range(image, label, min_size: Size = None,
                    max_size: Size = None, factor: Optional[int] = None):
  """Resizes image and label to `range_resized_size` (no-op if unbounded)."""
  if _as_pair(min_size) is None and _as_pair(max_size) is None:
    return image, label
  return resize(image, label, range_resized_size(
      tf.shape(image)[:2], min_size, max_size, factor))


def random_scale_factor(seed, min_scale: float, max_scale: float,
                        step: float) -> tf.Tensor:
  """A scale from {min, min + step, ..., max} (uniform in [min, max] if 0)."""
  if min_scale == max_scale:
    return tf.constant(float(min_scale))
  if step == 0:
    return tf.random.stateless_uniform([], seed, min_scale, max_scale)
  num = int(round((max_scale - min_scale) / step)) + 1
  index = tf.random.stateless_uniform([], seed, 0, num, tf.int32)
  return min_scale + tf.cast(index, tf.float32) * step


def scale_image_and_label(image, label, scale: tf.Tensor):
  hw = tf.cast(tf.shape(image)[:2], tf.float32)
  return tf.cond(tf.equal(scale, 1.0), lambda: (image, label),
                 lambda: resize(image, label, tf.cast(hw * scale, tf.int32)))


def pad(image, label, offset_h, offset_w, height, width, label_pad_value):
  """Pads to [height, width] with the image at (offset_h, offset_w)."""
  h, w = tf.shape(image)[0], tf.shape(image)[1]
  paddings = [[offset_h, height - offset_h - h],
              [offset_w, width - offset_w - w], [0, 0]]
  image = tf.pad(image - PAD_PIXEL_VALUE, paddings) + PAD_PIXEL_VALUE
  if label is not None:
    label = tf.pad(label, paddings, constant_values=label_pad_value)
  return image, label


def random_pad_and_crop(image, label, crop_size: Tuple[int, int],
                        label_pad_value: int, seed: tf.Tensor):
  """Pads (randomly placed) to at least the crop, then crops randomly."""
  crop_h, crop_w = crop_size
  seeds = tf.random.experimental.stateless_split(seed, 4)
  h, w = tf.shape(image)[0], tf.shape(image)[1]

  def offset(margin, s):
    return tf.random.stateless_uniform([], s, 0, tf.maximum(margin, 1),
                                       tf.int32)

  target_h, target_w = tf.maximum(h, crop_h), tf.maximum(w, crop_w)
  image, label = pad(image, label, offset(crop_h - h, seeds[0]),
                     offset(crop_w - w, seeds[1]), target_h, target_w,
                     label_pad_value)
  top = offset(target_h - crop_h + 1, seeds[2])
  left = offset(target_w - crop_w + 1, seeds[3])
  image = image[top:top + crop_h, left:left + crop_w]
  label = label[top:top + crop_h, left:left + crop_w]
  return (tf.ensure_shape(image, [crop_h, crop_w, 3]),
          tf.ensure_shape(label, [crop_h, crop_w, 1]))


def flip_left_right(image, label, seed):
  """Flips both with probability 0.5."""
  flip = tf.random.stateless_uniform([], seed) < _FLIP_PROBABILITY
  return tf.cond(flip, lambda: (image[:, ::-1], label[:, ::-1]),
                 lambda: (image, label))


def augment(image, label, seed, *, crop_size: Tuple[int, int],
            label_pad_value: int, min_resize_value: Size,
            max_resize_value: Size, resize_factor: Optional[int],
            min_scale_factor: float, max_scale_factor: float,
            scale_factor_step: float, autoaugment_policy: Optional[str],
            random_flip: bool):
  """The training chain; returns a crop-sized (image, label).

  The options are those of `input_pipeline.PipelineOptions`, where their
  defaults are.
  """
  seeds = tf.random.experimental.stateless_split(seed, 4)
  image, label = resize_to_range(image, label, min_resize_value,
                                 max_resize_value, resize_factor)
  scale = random_scale_factor(seeds[0], min_scale_factor, max_scale_factor,
                              scale_factor_step)
  image, label = scale_image_and_label(image, label, scale)
  if autoaugment_policy:
    image = tf.cast(autoaugment.distort(
        tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8),
        autoaugment_policy, seeds[1]), tf.float32)
  image, label = random_pad_and_crop(image, label, crop_size, label_pad_value,
                                     seeds[2])
  if not random_flip:
    return image, label
  return flip_left_right(image, label, seeds[3])


def eval_resized_size(height_width: tf.Tensor, *, crop_size: Tuple[int, int],
                      min_resize_value: Size = None,
                      max_resize_value: Size = None,
                      resize_factor: Optional[int] = None) -> tf.Tensor:
  """[2] int32 size of an image after the evaluation resize (before padding).

  Resize to range with the long-side cap defaulting to the crop, so every
  image fits inside the crop. The evaluator and the SavedModel crop their
  predictions back to this size before resizing them to the original.
  """
  max_resize_value = _as_pair(max_resize_value) or tuple(crop_size)
  if (max_resize_value[0] > crop_size[0] or
      max_resize_value[1] > crop_size[1]):
    raise ValueError(f"max_resize_value {max_resize_value} exceeds "
                     f"crop_size {tuple(crop_size)}.")
  return range_resized_size(height_width, min_resize_value, max_resize_value,
                            resize_factor)


def eval_resize_and_pad(image, label, *, crop_size: Tuple[int, int],
                        label_pad_value: int, min_resize_value: Size = None,
                        max_resize_value: Size = None,
                        resize_factor: Optional[int] = None):
  """The evaluation chain: fit inside the crop, pad bottom/right.

  `label` may be None (inference); then the returned label is None too.
  """
  size = eval_resized_size(
      tf.shape(image)[:2], crop_size=crop_size,
      min_resize_value=min_resize_value, max_resize_value=max_resize_value,
      resize_factor=resize_factor)
  image, label = resize(image, label, size)
  image, label = pad(image, label, 0, 0, crop_size[0], crop_size[1],
                     label_pad_value)
  image = tf.ensure_shape(image, [*crop_size, 3])
  if label is None:
    return image, None
  return image, tf.ensure_shape(label, [*crop_size, 1])


def panoptic_targets(panoptic: tf.Tensor, *, num_classes: int,
                     ignore_label: int, label_divisor: int,
                     class_has_instances: Sequence[bool], max_thing_id: int,
                     small_instance_area: int,
                     small_instance_weight: float) -> Dict[str, tf.Tensor]:
  """Training targets of one panoptic map [H, W] (DeepLab2 conventions).

  Crowd regions (thing class with instance 0) keep their semantic class but
  get no thing id. Thing ids 0, 1, ... follow first appearance in raster
  order; `thing_id_class` lists their classes, -1 padded to `max_thing_id`.
  Non-crowd thing segments smaller than `small_instance_area` pixels get
  `small_instance_weight` in the semantic loss weights.
  """
  semantic = panoptic // label_divisor
  instance = panoptic % label_divisor
  # One extra `False` slot looks up void / out-of-range labels.
  has_instances = tf.constant(list(class_has_instances)[:num_classes] +
                              [False])
  valid = tf.logical_and(semantic >= 0, semantic < num_classes)
  semantic = tf.where(valid, semantic, ignore_label)
  is_thing = tf.logical_and(
      tf.gather(has_instances, tf.where(valid, semantic, num_classes)),
      semantic != ignore_label)
  is_instance = tf.logical_and(is_thing, instance > 0)

  flat = tf.reshape(panoptic, [-1])
  ids, index, areas = tf.unique_with_counts(flat)
  id_is_instance = tf.math.unsorted_segment_max(
      tf.cast(tf.reshape(is_instance, [-1]), tf.int32), index, tf.size(ids)) > 0
  id_rank = tf.cumsum(tf.cast(id_is_instance, tf.int32), exclusive=True)
  num_things = tf.reduce_sum(tf.cast(id_is_instance, tf.int32))
  check = tf.debugging.assert_less_equal(
      num_things, max_thing_id,
      message=f"More thing instances in one crop than max_thing_id="
      f"{max_thing_id}; raise max_thing_id.")
  with tf.control_dependencies([check]):
    thing_id = tf.where(tf.reshape(is_instance, [-1]),
                        tf.gather(id_rank, index), -1)
    thing_classes = tf.boolean_mask(ids // label_divisor, id_is_instance)
    thing_id_class = tf.concat(
        [thing_classes, -tf.ones([max_thing_id - num_things], tf.int32)], 0)

  small = tf.logical_and(id_is_instance, areas < small_instance_area)
  weight = tf.where(tf.gather(small, index), small_instance_weight, 1.0)
  shape = tf.shape(panoptic)
  return {
      common.GT_SEMANTIC_KEY: semantic,
      common.GT_PANOPTIC_KEY: panoptic,
      common.GT_THING_ID_MASK_KEY: tf.reshape(thing_id, shape),
      common.GT_THING_ID_CLASS_KEY: tf.ensure_shape(thing_id_class,
                                                    [max_thing_id]),
      common.SEMANTIC_LOSS_WEIGHT_KEY: tf.reshape(
          tf.cast(weight, tf.float32), shape),
  }
