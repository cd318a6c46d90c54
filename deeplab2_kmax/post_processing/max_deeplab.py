"""Mask-wise merging (paper Sec. 4.1, as in MaskFormer / CMT-DeepLab).

Static shapes and TensorFlow ops only, so it runs inside `tf.function`, XLA
and a SavedModel. Per image:
  1. each slot's class = argmax of its non-void class probabilities, its
     class confidence = that probability;
  2. each slot's mask score = mean mask probability over the pixels where it
     exceeds `pixel_confidence_threshold` (at the logits' resolution);
  3. slots are sorted by confidence^reorder_class_weight x
     mask_score^reorder_mask_weight (descending, stable);
  4. mask logits are resized (bilinear, aligned corners) to the image; in
     sorted order each confident slot (class threshold for things / stuff)
     pastes its binary mask (probability > pixel threshold) onto the free
     pixels, unless fewer than `overlapping_threshold` of its pixels are free
     (above a pixel threshold of 1/3 these decisions come from the masks'
     areas and pairwise overlaps in one pass over the image, see
     `_paste_by_pair_counts`; the maps are the same);
  5. thing segments smaller than `thing_area_limit` and stuff classes smaller
     than `stuff_area_limit` become void.
Outputs, under DeepLab2's keys with DeepLab2's meanings (`common`):
  panoptic_pred: class x label_divisor + instance, where instance = 1 +
    rank of the slot among the sorted slots (things only), void where no
    slot is pasted or an area limit applies;
  semantic_pred: as DeepLab2's second, threshold-free pixel-wise pass, every
    pixel takes the class of the slot with the largest resized mask logit
    (no thresholds, no area limits, no void); mIoU is computed on it;
  instance_pred: the panoptic map's instance ids;
  instance_scores: max mask probability over slots (0 without detections);
  semantic_scores: class confidence of the slot pasted at the pixel, before
    the area limits (0 where none is).
An instance's AP score is mean(semantic_scores) x mean(instance_scores)
over its segment, as DeepLab2's.
"""

from typing import Dict
from typing import Sequence

import numpy as np
import tensorflow as tf

from deeplab2_kmax import common
from deeplab2_kmax.model.layers import resized_fuse

PRED_MASK_ID_KEY = "mask_id_pred"
# Above this pixel threshold no pixel can lie in three masks (3 x 0.34 > 1,
# with room for softmax rounding).
_AT_MOST_TWO_MASKS_ABOVE = 0.34


class MaskWiseMerging:
  """Callable: model outputs -> panoptic / semantic / instance maps."""

  def __init__(self,
               thing_class_ids: Sequence[int],
               stuff_class_ids: Sequence[int],
               label_divisor: int,
               void_label: int,
               pixel_confidence_threshold: float = 0.4,
               transformer_class_confidence_threshold_thing: float = 0.7,
               transformer_class_confidence_threshold_stuff: float = 0.5,
               overlapping_threshold: float = 0.8,
               reorder_class_weight: float = 1.0,
               reorder_mask_weight: float = 1.0,
               thing_area_limit: int = 0,
               stuff_area_limit: int = 0):
    """Initialises the post-processor.

    Args:
      thing_class_ids: Dataset ids of thing classes (class-logit order).
      stuff_class_ids: Dataset ids of stuff classes, after the things.
      label_divisor: Panoptic label divisor.
      void_label: Semantic label of unassigned pixels.
      pixel_confidence_threshold: Mask probability for a pixel to join a mask.
      transformer_class_confidence_threshold_thing: Keeps thing slots above.
      transformer_class_confidence_threshold_stuff: Keeps stuff slots above.
      overlapping_threshold: Minimum fraction of a mask left after occlusion.
      reorder_class_weight: Exponent of the class confidence in the order.
      reorder_mask_weight: Exponent of the mask score in the order.
      thing_area_limit: Minimum pixels of a thing segment (0: no limit).
      stuff_area_limit: Minimum pixels of a stuff class (0: no limit).
    """
    self._class_ids = list(thing_class_ids) + list(stuff_class_ids)
    self._num_things = len(thing_class_ids)
    self._label_divisor = label_divisor
    self._void_label = void_label
    self._pixel_threshold = pixel_confidence_threshold
    self._thing_threshold = transformer_class_confidence_threshold_thing
    self._stuff_threshold = transformer_class_confidence_threshold_stuff
    self._overlap = overlapping_threshold
    self._class_weight = reorder_class_weight
    self._mask_weight = reorder_mask_weight
    self._thing_area_limit = thing_area_limit
    self._stuff_area_limit = stuff_area_limit

  def __call__(self, outputs: Dict[str, tf.Tensor],
               image_size: Sequence[int] = None) -> Dict[str, tf.Tensor]:
    """Args: model outputs; image_size (H, W) to resize logits to."""
    mask_logits = outputs[common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY]
    class_logits = outputs[common.PRED_TRANSFORMER_CLASS_LOGITS_KEY]
    if image_size is None:
      raise ValueError("image_size (the model input's H, W) is required.")
    height, width = int(image_size[0]), int(image_size[1])
    num_slots = mask_logits.shape[-1]
    class_ids = tf.constant(self._class_ids, tf.int32)

    slot_class, order = self._rank_slots(mask_logits, class_logits)
    class_pred = tf.gather(slot_class[0], order, batch_dims=1)
    confidence = tf.gather(slot_class[1], order, batch_dims=1)
    is_thing = class_pred < self._num_things
    confident = tf.where(is_thing, confidence >= self._thing_threshold,
                         confidence >= self._stuff_threshold)
    any_detection = tf.reduce_any(
        tf.logical_or(confidence >= self._thing_threshold,
                      confidence >= self._stuff_threshold), axis=-1)

    logits = resized_fuse.resize_bilinear_align_corners(mask_logits,
                                                        [height, width])
    # DeepLab2's semantic prediction: the argmax slot's class at every pixel.
    semantic_pred = tf.gather(class_ids, tf.gather(
        slot_class[0], tf.argmax(logits, axis=-1, output_type=tf.int32),
        batch_dims=1))
    probs = tf.nn.softmax(logits, axis=-1)
    if self._pixel_threshold > _AT_MOST_TWO_MASKS_ABOVE:
      canvas = self._paste_by_pair_counts(probs, order, confident)
    else:
      canvas = self._paste_slot_by_slot(probs, order, confident)

    assigned = canvas > 0
    slot = tf.maximum(canvas - 1, 0)
    class_score = tf.where(assigned,
                           tf.gather(confidence, slot, batch_dims=1), 0.0)
    class_index = tf.gather(class_pred, slot, batch_dims=1)
    semantic = tf.gather(class_ids, class_index)
    thing_pixels = tf.logical_and(assigned, class_index < self._num_things)
    stuff_pixels = tf.logical_and(assigned, class_index >= self._num_things)
    instance = tf.where(thing_pixels, slot + 1, 0)
    if self._thing_area_limit > 0:
      thing_pixels = tf.logical_and(
          thing_pixels, _area_at_least(instance, self._thing_area_limit, num_slots + 1))
      instance = tf.where(thing_pixels, instance, 0)
    if self._stuff_area_limit > 0:
      stuff_semantic = tf.where(stuff_pixels, semantic + 1, 0)
      stuff_pixels = tf.logical_and(
          stuff_pixels, _area_at_least(stuff_semantic, self._stuff_area_limit,
                                        max(self._class_ids) + 2))
    kept = tf.logical_and(tf.logical_or(thing_pixels, stuff_pixels),
                          any_detection[:, tf.newaxis, tf.newaxis])
    semantic = tf.where(kept, semantic, self._void_label)
    instance = tf.where(kept, instance, 0)
    panoptic = semantic * self._label_divisor + instance
    # As DeepLab2, both score maps are all 0 when no slot is confident.
    mask_score = tf.where(any_detection[:, tf.newaxis, tf.newaxis],
                          tf.reduce_max(probs, axis=-1), 0.0)
    return {
        common.PRED_PANOPTIC_KEY: panoptic,
        common.PRED_SEMANTIC_KEY: semantic_pred,
        common.PRED_INSTANCE_KEY: instance,
        common.PRED_INSTANCE_SCORES_KEY: mask_score,
        common.PRED_SEMANTIC_SCORES_KEY: class_score,
        PRED_MASK_ID_KEY: tf.where(kept, canvas, 0),
    }

  def _rank_slots(self, mask_logits, class_logits):
    """((class index, confidence) per slot, slots in descending score).

    The class is the argmax of the non-void class probabilities; the score is
    confidence^class_weight x mask_score^mask_weight, the mask score being
    the mean mask probability where it exceeds the pixel threshold (at the
    logits' resolution); ties keep the slot order.
    """
    class_probs = tf.nn.softmax(class_logits, axis=-1)[..., :-1]
    class_pred = tf.argmax(class_probs, axis=-1, output_type=tf.int32)
    confidence = tf.reduce_max(class_probs, axis=-1)  # [B, N]
    low_res_probs = tf.nn.softmax(mask_logits, axis=-1)
    low_res_detected = tf.cast(low_res_probs > self._pixel_threshold,
                               tf.float32)
    mask_score = tf.math.divide_no_nan(
        tf.reduce_sum(low_res_probs * low_res_detected, axis=[1, 2]),
        tf.reduce_sum(low_res_detected, axis=[1, 2]))
    order = tf.argsort(
        confidence**self._class_weight * mask_score**self._mask_weight,
        axis=-1, direction="DESCENDING", stable=True)
    return (class_pred, confidence), order

  def _paste_slot_by_slot(self, probs, order, confident):
    """Canvas [B, H, W]: 1 + sorted rank of the pasted slot, 0 where none.

    The direct form: one pass over the image per slot, in sorted order.
    """
    num_slots = probs.shape[-1]
    detected = tf.gather(probs > self._pixel_threshold, order, axis=-1,
                         batch_dims=1)  # [B, H, W, N] in sorted order.
    detected = tf.transpose(tf.cast(detected, tf.float32), [3, 0, 1, 2])

    def paste(index, canvas):
      mask = detected[index]
      free = mask * tf.cast(tf.equal(canvas, 0), tf.float32)
      before = tf.reduce_sum(mask, axis=[1, 2])
      after = tf.reduce_sum(free, axis=[1, 2])
      keep = tf.logical_and(confident[:, index], after > before * self._overlap)
      free *= tf.cast(keep, tf.float32)[:, tf.newaxis, tf.newaxis]
      return index + 1, canvas + tf.cast(free, tf.int32) * (index + 1)

    shape = tf.shape(probs)
    _, canvas = tf.while_loop(
        lambda i, _: i < num_slots, paste,
        (tf.constant(0), tf.zeros(shape[:3], tf.int32)),
        maximum_iterations=num_slots)
    return canvas

  def _paste_by_pair_counts(self, probs, order, confident):
    """Same canvas as `_paste_slot_by_slot`, from each pixel's (<= 2) masks.

    With a pixel threshold above 1/3 a pixel lies in at most two masks (three
    probabilities above it would sum past 1). So the pixels of mask r already
    taken by earlier kept slots are exactly its pixels shared with one of
    them, and the whole sequential decision needs only the mask areas and the
    N x N pairwise overlaps: one pass over the image instead of N.
    """
    num_slots = probs.shape[-1]
    batch = tf.shape(probs)[0]
    # Each pixel's masks {a, b} from the count, sum and sum of squares of the
    # slot indices above the threshold: one small matmul instead of two
    # argmax passes. Exact: the sums are integers below 2^24.
    ids = np.arange(num_slots, dtype=np.float32)
    moments = tf.einsum(
        "bhwn,nk->bhwk", tf.cast(probs > self._pixel_threshold, tf.float32),
        tf.constant(np.stack([np.ones_like(ids), ids, ids**2], 1)))
    count, total, squares = tf.unstack(moments, axis=-1)
    gap = tf.sqrt(tf.maximum(2.0 * squares - total**2, 0.0))  # |a - b|.
    slots = [tf.cast(tf.round(tf.where(count > 1.5, (total + sign * gap) / 2,
                                       total)), tf.int32)
             for sign in (-1.0, 1.0)]
    inside = [count > 0.5, count > 1.5]
    rank_of_slot = tf.argsort(order, axis=-1, stable=True)  # [B, N]
    ranks = [tf.gather(rank_of_slot, s, batch_dims=1) for s in slots]

    image = tf.range(batch)[:, tf.newaxis, tf.newaxis]
    weights = [tf.cast(m, tf.float32) for m in inside]
    area = tf.math.unsorted_segment_sum(
        tf.concat([tf.reshape(w, [-1]) for w in weights], 0),
        tf.concat([tf.reshape(image * num_slots + r, [-1]) for r in ranks], 0),
        batch * num_slots)
    area = tf.reshape(area, [batch, num_slots])
    both = tf.reshape(weights[0] * weights[1], [-1])
    pair_ids = [image * num_slots**2 + a * num_slots + b
                for a, b in ((ranks[0], ranks[1]), (ranks[1], ranks[0]))]
    overlap = tf.math.unsorted_segment_sum(
        tf.concat([both, both], 0),
        tf.concat([tf.reshape(i, [-1]) for i in pair_ids], 0),
        batch * num_slots**2)
    overlap = tf.reshape(overlap, [batch, num_slots, num_slots])

    def decide(index, kept):
      taken = tf.reduce_sum(overlap[:, index] * kept, axis=-1)
      before = area[:, index]
      keep = tf.logical_and(confident[:, index],
                            before - taken > before * self._overlap)
      return index + 1, kept + tf.one_hot(index, num_slots) * tf.cast(
          keep, tf.float32)[:, tf.newaxis]

    _, kept = tf.while_loop(
        lambda i, _: i < num_slots, decide,
        (tf.constant(0), tf.zeros([batch, num_slots])),
        maximum_iterations=num_slots)
    kept = kept > 0
    owner = num_slots  # The earliest kept slot among a pixel's (<= 2) masks.
    for rank, mask in zip(ranks, inside):
      candidate = tf.logical_and(mask, tf.gather(kept, rank, batch_dims=1))
      owner = tf.minimum(owner, tf.where(candidate, rank, num_slots))
    return tf.where(owner < num_slots, owner + 1, 0)


def _area_at_least(ids: tf.Tensor, limit: int, length: int) -> tf.Tensor:
  """[B, H, W] bool: the pixel's id (< length) covers at least `limit` px."""
  batch = tf.shape(ids)[0]
  flat = tf.reshape(ids, [batch, -1])
  counts = tf.raw_ops.DenseBincount(
      input=flat, size=tf.constant(length, tf.int32),
      weights=tf.zeros([0], tf.int32), binary_output=False)
  area = tf.gather(counts, flat, batch_dims=1)
  return tf.reshape(area >= limit, tf.shape(ids))
