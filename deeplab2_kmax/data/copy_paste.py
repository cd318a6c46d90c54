"""Panoptic copy-paste augmentation (kMaX-DeepLab paper §4, "panoptic
copy-paste"; extends the thing copy-paste of Ghiasi et al., CVPR 2021).

A second training sample (preprocessed with its scale range multiplied by the
copy-paste scale, 0.5 in the paper, and its padding labelled `padding_id`) is
pasted onto the first. With the default options of
`input_pipeline.PipelineOptions` (DeepLab2's kMaX recipe: things 'all', stuff
'random', void 'none') that is every thing segment of the source plus a
random subset of its stuff segments; source void and padding are never
pasted.
Pasted thing ids are mirrored (`instance -> divisor - 1 - instance`) so they
never collide with the canvas ids (both must be below `divisor // 2`), and
canvas segments lose exactly the pixels that were pasted over.
"""

from typing import Sequence

import tensorflow as tf

OPTIONS = ("none", "random", "all")


def _is_in(values: tf.Tensor, members: Sequence[int]) -> tf.Tensor:
  if not members:
    return tf.zeros_like(values, tf.bool)
  return tf.reduce_any(values[:, None] == tf.constant(members)[None], axis=1)


def _apply_option(keep: tf.Tensor, group: tf.Tensor, option: str,
                  name: str) -> tf.Tensor:
  """'none' drops the group, 'all' takes it whole, 'random' leaves the draw."""
  if option not in OPTIONS:
    raise ValueError(f"{name} must be one of {OPTIONS}, got {option!r}.")
  if option == "none":
    return tf.logical_and(keep, tf.logical_not(group))
  if option == "all":
    return tf.logical_or(keep, group)
  return keep


def paste_mask(source_label: tf.Tensor, seed: tf.Tensor, *,
               label_divisor: int, ignore_label: int,
               thing_class_ids: Sequence[int],
               stuff_class_ids: Sequence[int], padding_id: int,
               thing_option: str, stuff_option: str,
               void_option: str) -> tf.Tensor:
  """Boolean [H, W, 1]: the source pixels that will be pasted.

  A random number of the source's segments is drawn, then each group
  (things, stuff, void) is adjusted by its option; padding is never pasted.
  """
  ids, index = tf.unique(tf.reshape(source_label, [-1]))
  num_ids = tf.size(ids)
  seeds = tf.random.experimental.stateless_split(seed, 2)
  num_keep = tf.random.stateless_uniform([], seeds[0], 0, num_ids + 1,
                                         tf.int32)
  order = tf.argsort(tf.random.stateless_uniform([num_ids], seeds[1]))
  rank = tf.scatter_nd(order[:, None], tf.range(num_ids), [num_ids])
  keep = rank < num_keep  # A random subset of the segments.
  classes = ids // label_divisor
  keep = tf.logical_and(keep, ids != padding_id)
  keep = _apply_option(keep, _is_in(classes, thing_class_ids), thing_option,
                       "copy-paste thing option")
  keep = _apply_option(keep, _is_in(classes, stuff_class_ids), stuff_option,
                       "copy-paste stuff option")
  keep = _apply_option(keep, ids == ignore_label * label_divisor, void_option,
                       "copy-paste void option")
  return tf.reshape(tf.gather(keep, index), tf.shape(source_label))


def paste(image: tf.Tensor, label: tf.Tensor, source_image: tf.Tensor,
          source_label: tf.Tensor, seed: tf.Tensor, *, label_divisor: int,
          ignore_label: int, thing_class_ids: Sequence[int],
          stuff_class_ids: Sequence[int], padding_id: int,
          thing_option: str, stuff_option: str, void_option: str):
  """Pastes part of (source_image, source_label) onto (image, label).

  Images are float [H, W, 3], labels int32 panoptic [H, W, 1] of equal size.
  The options are those of `paste_mask`. Returns the new (image, label).
  """
  mask = paste_mask(source_label, seed, label_divisor=label_divisor,
                    ignore_label=ignore_label, thing_class_ids=thing_class_ids,
                    stuff_class_ids=stuff_class_ids, padding_id=padding_id,
                    thing_option=thing_option, stuff_option=stuff_option,
                    void_option=void_option)
  canvas_instance = tf.where(label // label_divisor == ignore_label, 0,
                             label % label_divisor)
  source_instance = tf.where(mask, source_label % label_divisor, 0)
  check = tf.debugging.assert_less(
      tf.maximum(tf.reduce_max(canvas_instance), tf.reduce_max(source_instance)),
      label_divisor // 2,
      message="Panoptic copy-paste needs every instance id below "
      f"label_divisor // 2 = {label_divisor // 2}.")
  with tf.control_dependencies([check]):
    instance = source_label % label_divisor
    mirrored = tf.where(instance > 0, label_divisor - 1 - instance, 0)
    pasted = (source_label // label_divisor) * label_divisor + mirrored
    label = tf.where(mask, pasted, label)
  image = tf.where(mask, tf.cast(source_image, image.dtype), image)
  return image, label
