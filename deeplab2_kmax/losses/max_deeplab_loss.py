"""The MaX-DeepLab / kMaX-DeepLab training loss (SPEC §3; MaX-DeepLab §3.2).

Per image, ground-truth masks are one per thing instance (padded to
`max_thing_id`) and one per stuff class; the final output's mask slots are
matched to them by the Hungarian algorithm on -(dice x class probability),
and that one matching is reused for every auxiliary output. Terms (each [B],
already multiplied by its weight):
  * PQ-style class term: weighted softmax cross-entropy of every slot's class
    logits against the matched gt class (positives, weight = matched dice,
    focal alpha 0.75) or void (negatives, weight = overlap with void pixels,
    alpha 0.25), averaged over slots;
  * PQ-style mask dice term: 1 - dice of each matched mask, weighted by the
    matched class probability, summed over masks, times alpha / N;
  * mask-id cross-entropy: each pixel's softmax over slots against its gt
    mask's slot; a pixel whose mask found no slot (more masks than slots)
    targets one of DeepLab2's padding slots, whose logit is -99999, so it
    costs 99999 + logsumexp(its slot logits);
  * instance discrimination: pixel features against mask-average features
    (unsampled, things only) or pixel-to-pixel contrast over k pixels drawn by
    Gumbel top-k with probability ∝ inverse mask area ^ temperature;
  * semantic cross-entropy (all pixels, or k pixels drawn the same way),
    each pixel weighted by the input pipeline's semantic loss weights (small
    instances up-weighted).
The per-pixel terms (mask-id, instance discrimination, semantic) average the
hardest `top_k_percent` of their weighted pixel losses, counting non-zero
ones only (DeepLab2's hard-pixel mining; 1.0 keeps every pixel).
Class logits order classes as thing ids then stuff ids, void last.
"""

from typing import Dict
from typing import List
from typing import Optional
from typing import Sequence

import numpy as np
import tensorflow as tf

from deeplab2_kmax import common
from deeplab2_kmax.losses import matching

PQ_CLASS = "pq_style_loss_class_term"
PQ_DICE = "pq_style_loss_mask_dice_term"
MASK_ID_CE = "mask_id_cross_entropy_loss"
INSTANCE_DISCRIMINATION = "instance_discrimination_loss"
SEMANTIC = "semantic_loss"
TOTAL = "total_loss"
PER_OUTPUT_TERMS = (PQ_CLASS, PQ_DICE, MASK_ID_CE, INSTANCE_DISCRIMINATION)

_MASKED_LOGIT = -99999.0
_VOID_ROW_LOW = -999.0
_VOID_ROW_HIGH = 999.0


def thing_stuff_class_ids(num_classes: int, ignore_label: int,
                          thing_class_ids: Sequence[int]) -> List[int]:
  """Dataset class ids in class-logit order: things, then stuff (no void)."""
  things = list(thing_class_ids)
  total = num_classes if ignore_label < num_classes else num_classes
  stuff = [c for c in range(total) if c not in things and c != ignore_label]
  return things + stuff


def strided_downsample(x: tf.Tensor, size: Sequence[int]) -> tf.Tensor:
  """Picks every s-th pixel from 0, s = (in - 1) // (out - 1) per axis."""
  in_h, in_w = x.shape[1], x.shape[2]
  out_h, out_w = int(size[0]), int(size[1])
  if (in_h, in_w) == (out_h, out_w):
    return x
  stride_h = (in_h - 1) // max(out_h - 1, 1)
  stride_w = (in_w - 1) // max(out_w - 1, 1)
  return x[:, :stride_h * (out_h - 1) + 1:stride_h,
           :stride_w * (out_w - 1) + 1:stride_w]


def _mean_of_nonzero(x: tf.Tensor) -> tf.Tensor:
  """Per-image sum divided by the count of non-zero entries (0 if none)."""
  x = tf.reshape(x, [tf.shape(x)[0], -1])
  count = tf.reduce_sum(tf.cast(tf.not_equal(x, 0.0), x.dtype), axis=1)
  return tf.math.divide_no_nan(tf.reduce_sum(x, axis=1), count)


def top_k_count(top_k_percent: float, num_elements: int) -> int:
  """Elements kept by hard-pixel mining: round-half-even(p * n) in float32."""
  return int(np.round(np.float32(top_k_percent) * np.float32(num_elements)))


def _hardest_mean(x: tf.Tensor, top_k_percent: float) -> tf.Tensor:
  """`_mean_of_nonzero` of each image's `top_k_percent` largest entries."""
  x = tf.reshape(x, [tf.shape(x)[0], -1])
  if top_k_percent != 1.0:
    x = tf.math.top_k(x, top_k_count(top_k_percent, x.shape[1]),
                      sorted=False).values
  return _mean_of_nonzero(x)


def _gumbel_top_k(logits: tf.Tensor, k: int, seed=None) -> tf.Tensor:
  if seed is None:
    uniform = tf.random.uniform(tf.shape(logits), 0, 1)
  else:
    uniform = tf.random.stateless_uniform(tf.shape(logits), seed, 0, 1)
  gumbel = -tf.math.log(-tf.math.log(uniform))
  return tf.math.top_k(logits + gumbel, k).indices


def _mask_id_cross_entropy(logits: tf.Tensor, pixel_slot_target: tf.Tensor,
                           valid_pixel: tf.Tensor) -> tf.Tensor:
  """[B, P] cross-entropy of each pixel's slot softmax against its gt slot.

  With more gt masks than slots, DeepLab2 pads the slots with constant logits
  of -99999 and matches the masks left over to them; the softmax is taken
  over every slot, padding included (whose weight underflows to 0). A pixel
  of such a mask therefore costs 99999 + logsumexp(its real slot logits).
  """
  log_probs = tf.nn.log_softmax(logits, axis=-1)
  pixel_ce = -tf.reduce_sum(pixel_slot_target * log_probs, axis=-1)
  unmatched = valid_pixel - tf.reduce_sum(pixel_slot_target, axis=-1)
  padded_slot_ce = tf.reduce_logsumexp(logits, axis=-1) - _MASKED_LOGIT
  return pixel_ce + unmatched * padded_slot_ce


class MaXDeepLabLoss:
  """Computes the named loss terms; call(y_true, y_pred) -> dict of [B]."""

  def __init__(self,
               num_classes: int,
               ignore_label: int,
               thing_class_ids: Sequence[int],
               pq_style_loss_weight: float = 3.0,
               mask_id_cross_entropy_loss_weight: float = 0.3,
               instance_discrimination_loss_weight: float = 1.0,
               semantic_loss_weight: float = 1.0,
               focal_loss_alpha: float = 0.75,
               instance_discrimination_sample_k: int = 4096,
               instance_discrimination_sample_temperature: float = 1.5,
               instance_discrimination_temperature: float = 0.3,
               semantic_sample_k: int = 4096,
               semantic_sample_temperature: float = 2.0,
               semantic_top_k_percent: float = 1.0,
               mask_id_cross_entropy_top_k_percent: float = 1.0,
               instance_discrimination_top_k_percent: float = 1.0,
               matching_implementation: str = "auto",
               seed: Optional[tf.Tensor] = None):
    """Initialises the loss.

    Args:
      num_classes: Semantic classes of the dataset (incl. an in-range ignore
        label, as COCO's 0).
      ignore_label: Void label of the semantic ground truth.
      thing_class_ids: Dataset ids of the thing classes.
      pq_style_loss_weight: Weight of both PQ-style terms.
      mask_id_cross_entropy_loss_weight: Weight of the mask-id cross-entropy.
      instance_discrimination_loss_weight: Weight of instance discrimination.
      semantic_loss_weight: Weight of the auxiliary semantic loss.
      focal_loss_alpha: Positive-vs-negative balance of the class term.
      instance_discrimination_sample_k: Sampled pixels (0: unsampled form).
      instance_discrimination_sample_temperature: Inverse-area exponent.
      instance_discrimination_temperature: Feature-similarity temperature.
      semantic_sample_k: Sampled pixels for the semantic loss (0: all).
      semantic_sample_temperature: Inverse-area exponent for that sampling.
      semantic_top_k_percent: Fraction of the hardest (weighted) pixels the
        semantic loss averages (after sampling, if any).
      mask_id_cross_entropy_top_k_percent: The same for the mask-id
        cross-entropy.
      instance_discrimination_top_k_percent: The same for instance
        discrimination (over the sampled pixels when sampling).
      matching_implementation: "auto", "scipy" or "tensorflow".
      seed: Optional [2] int seed making the sampling deterministic.
    """
    self._ignore_label = ignore_label
    self._num_classes = num_classes
    self._thing_ids = list(thing_class_ids)
    self._class_ids = thing_stuff_class_ids(num_classes, ignore_label,
                                            thing_class_ids)
    self._stuff_ids = self._class_ids[len(self._thing_ids):]
    self._weights = {PQ_CLASS: pq_style_loss_weight,
                     PQ_DICE: pq_style_loss_weight,
                     MASK_ID_CE: mask_id_cross_entropy_loss_weight,
                     INSTANCE_DISCRIMINATION: instance_discrimination_loss_weight,
                     SEMANTIC: semantic_loss_weight}
    self._alpha = focal_loss_alpha
    self._id_k = instance_discrimination_sample_k
    self._id_sample_temperature = instance_discrimination_sample_temperature
    self._id_temperature = instance_discrimination_temperature
    self._semantic_k = semantic_sample_k
    self._semantic_temperature = semantic_sample_temperature
    self._top_k = {SEMANTIC: semantic_top_k_percent,
                   MASK_ID_CE: mask_id_cross_entropy_top_k_percent,
                   INSTANCE_DISCRIMINATION:
                       instance_discrimination_top_k_percent}
    for name, value in self._top_k.items():
      if not 0.0 < value <= 1.0:
        raise ValueError(f"{name} top_k_percent must be in (0, 1], got "
                         f"{value}.")
    self._matching = matching_implementation
    self._seed = seed

  @property
  def num_thing_stuff_classes(self) -> int:
    """Non-void class logits the model must predict."""
    return len(self._class_ids)

  def _seed_for(self, salt: int):
    if self._seed is None:
      return None
    return tf.cast(self._seed, tf.int32) + tf.constant([0, salt], tf.int32)

  def _ground_truth(self, y_true, height, width):
    """Masks and classes at the prediction's resolution."""
    batch = tf.shape(y_true[common.GT_SEMANTIC_KEY])[0]
    size = [height, width]
    semantic = tf.reshape(
        strided_downsample(y_true[common.GT_SEMANTIC_KEY], size),
        [batch, height * width])
    thing_id = tf.reshape(
        strided_downsample(y_true[common.GT_THING_ID_MASK_KEY], size),
        [batch, height * width])
    max_thing_id = y_true[common.GT_THING_ID_CLASS_KEY].shape[-1]
    non_void = tf.cast(tf.not_equal(semantic, self._ignore_label), tf.float32)
    depth = max(self._class_ids) + 1
    stuff_one_hot = tf.gather(tf.one_hot(semantic, depth), self._stuff_ids,
                              axis=-1)
    thing_one_hot = tf.one_hot(thing_id, max_thing_id)
    pixel_mask_one_hot = tf.concat([thing_one_hot, stuff_one_hot], axis=-1)
    area = tf.reduce_sum(pixel_mask_one_hot, axis=1)  # [B, M]
    thing_classes = tf.cast(y_true[common.GT_THING_ID_CLASS_KEY], tf.int32)
    stuff_classes = tf.tile(tf.constant([self._stuff_ids], tf.int32),
                            [batch, 1])
    mask_class = tf.concat([thing_classes, stuff_classes], axis=-1)
    present = area > 0.5
    mask_class = tf.where(present, mask_class, -1)
    mask_class_one_hot = tf.gather(tf.one_hot(mask_class, depth),
                                   self._class_ids, axis=-1)
    pixel_area = tf.einsum("bpm,bm->bp", pixel_mask_one_hot, area)
    inverse_area = (height * width) / tf.maximum(pixel_area, 1.0)
    return {
        "thing": tf.cast(tf.not_equal(thing_id, -1), tf.float32),
        "non_void": non_void,
        "masks": pixel_mask_one_hot,
        "area": area,
        "valid": present,
        "class_one_hot": mask_class_one_hot,
        "inverse_area": inverse_area,
    }

  def _match(self, gt, probs, class_logits):
    """Hungarian matching of gt masks to slots on -(dice x class prob).

    Returns the [B, M, N] permutation, each slot's matched dice [B, N] and
    each gt mask's matched class probability [B, M] (no gradients).
    """
    masked_probs = probs * gt["non_void"][:, :, tf.newaxis]
    intersection = tf.einsum("bpm,bpn->bmn", gt["masks"], masked_probs)
    dice = intersection / (
        (gt["area"][:, :, tf.newaxis] +
         tf.reduce_sum(masked_probs, axis=1)[:, tf.newaxis, :]) / 2 + 1e-5)
    class_probs = tf.nn.softmax(class_logits, axis=-1)[..., :-1]
    class_similarity = tf.einsum("bmc,bnc->bmn", gt["class_one_hot"],
                                 class_probs)
    permutation = tf.stop_gradient(matching.match(
        tf.stop_gradient(-dice * class_similarity), gt["valid"],
        self._matching))  # [B, M, N]
    matched_dice = tf.stop_gradient(
        tf.reduce_max(dice * permutation, axis=1))  # [B, N]
    matched_class_prob = tf.stop_gradient(
        tf.reduce_max(class_similarity * permutation, axis=2))  # [B, M]
    return permutation, matched_dice, matched_class_prob

  def __call__(self, y_true: Dict[str, tf.Tensor],
               y_pred: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
    feature = y_pred[common.PRED_PIXEL_SPACE_NORMALIZED_FEATURE_KEY]
    _, height, width, _ = feature.shape.as_list()
    gt = self._ground_truth(y_true, height, width)
    outputs = [y_pred] + list(y_pred.get(common.PRED_AUXILIARY_OUTPUTS, []))

    flat = lambda x: tf.reshape(x, [tf.shape(x)[0], height * width, -1])  # pylint: disable=g-long-lambda
    mask_logits = [flat(o[common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY])
                   for o in outputs]
    class_logits = [o[common.PRED_TRANSFORMER_CLASS_LOGITS_KEY] for o in outputs]
    num_slots = mask_logits[0].shape[-1]

    # Matching on the final output only.
    probs = tf.nn.softmax(mask_logits[0], axis=-1)
    permutation, matched_dice, matched_class_prob = self._match(
        gt, probs, class_logits[0])
    slot_of_mask = permutation  # [B, M, N]
    # Pixel -> slot target: the slot matched to the pixel's gt mask.
    pixel_slot_target = tf.einsum("bpm,bmn->bpn", gt["masks"], slot_of_mask)

    # Class targets per slot.
    slot_class = tf.einsum("bmn,bmc->bnc", permutation, gt["class_one_hot"])
    positive = tf.cast(tf.reduce_max(slot_class, axis=-1) > 0.5, tf.float32)
    negative = 1.0 - positive
    void_ratio = tf.stop_gradient(tf.math.divide(
        tf.einsum("bp,bpn->bn", 1.0 - gt["non_void"], probs),
        tf.reduce_sum(probs, axis=1) + 1e-5))
    class_weight = (positive * tf.maximum(matched_dice, 1e-5) +
                    negative * tf.maximum(void_ratio, 1e-5))
    class_target = tf.concat([slot_class, negative[..., tf.newaxis]], axis=-1)
    alpha_weight = self._alpha * positive + (1 - self._alpha) * negative
    dice_weight = tf.cast(gt["valid"], tf.float32) * tf.maximum(
        matched_class_prob, 1e-5)
    # Pixels inside some gt mask (non-void and still present after
    # downsampling).
    valid_pixel = tf.reduce_sum(gt["masks"], axis=-1)

    losses = {}
    for index, (logits, cls_logits, out) in enumerate(
        zip(mask_logits, class_logits, outputs)):
      prefix = "" if index == 0 else f"aux_{index - 1}"
      terms = {}
      ce = tf.nn.softmax_cross_entropy_with_logits(class_target, cls_logits)
      terms[PQ_CLASS] = _mean_of_nonzero(ce * alpha_weight * class_weight)
      slot_probs = tf.nn.softmax(logits, axis=-1)
      mask_probs = tf.einsum("bpn,bmn->bpm", slot_probs, slot_of_mask)
      mask_probs *= valid_pixel[:, :, tf.newaxis]
      mask_dice = 1.0 - (
          2.0 * tf.reduce_sum(mask_probs * gt["masks"], axis=1) + 1.0) / (
              tf.reduce_sum(mask_probs, axis=1) +
              tf.reduce_sum(gt["masks"], axis=1) + 1.0)
      terms[PQ_DICE] = tf.reduce_sum(mask_dice * dice_weight, axis=-1) * (
          self._alpha / num_slots)
      terms[MASK_ID_CE] = _hardest_mean(
          _mask_id_cross_entropy(logits, pixel_slot_target, valid_pixel) *
          gt["non_void"], self._top_k[MASK_ID_CE])
      terms[INSTANCE_DISCRIMINATION] = self._instance_discrimination(
          flat(out[common.PRED_PIXEL_SPACE_NORMALIZED_FEATURE_KEY]), gt, index)
      for name, value in terms.items():
        losses[prefix + name] = value * self._weights[name]

    if common.PRED_SEMANTIC_LOGITS_KEY in y_pred and self._weights[SEMANTIC]:
      losses[SEMANTIC] = self._semantic_loss(
          y_pred[common.PRED_SEMANTIC_LOGITS_KEY], y_true, gt, height,
          width) * self._weights[SEMANTIC]
    losses[TOTAL] = tf.add_n(list(losses.values()))
    return losses

  def _instance_discrimination(self, feature, gt, index):
    if self._id_k <= 0:
      mean = tf.einsum("bpd,bpm->bmd", feature, gt["masks"]) / tf.maximum(
          gt["area"][:, :, tf.newaxis], 1.0)
      mean = tf.math.l2_normalize(mean, axis=-1)
      logits = tf.einsum("bpd,bmd->bpm", feature, mean) / self._id_temperature
      valid = tf.cast(gt["valid"], tf.float32)[:, tf.newaxis, :]
      logits = valid * logits + (1.0 - valid) * _MASKED_LOGIT
      ce = tf.nn.softmax_cross_entropy_with_logits(gt["masks"], logits)
      return _hardest_mean(ce * gt["thing"],
                           self._top_k[INSTANCE_DISCRIMINATION])
    k = min(self._id_k, feature.shape[1])
    sample_logits = (tf.math.log(gt["inverse_area"]) *
                     self._id_sample_temperature +
                     (1.0 - gt["non_void"]) * _MASKED_LOGIT)
    indices = _gumbel_top_k(sample_logits, k, self._seed_for(2 * index + 1))
    gt_sampled = tf.gather(gt["masks"], indices, batch_dims=1)
    target = tf.einsum("bkm,bjm->bkj", gt_sampled, gt_sampled)
    target /= tf.maximum(tf.reduce_sum(target, axis=-1, keepdims=True), 1.0)
    sampled = tf.gather(feature, indices, batch_dims=1)
    logits = tf.einsum("bkd,bjd->bkj", sampled, sampled) / self._id_temperature
    return _hardest_mean(
        tf.nn.softmax_cross_entropy_with_logits(target, logits),
        self._top_k[INSTANCE_DISCRIMINATION])

  def _semantic_loss(self, logits, y_true, gt, height, width):
    sem_h, sem_w = logits.shape[1], logits.shape[2]
    labels = strided_downsample(y_true[common.GT_SEMANTIC_KEY], [sem_h, sem_w])
    weights = strided_downsample(
        tf.cast(y_true[common.SEMANTIC_LOSS_WEIGHT_KEY], tf.float32),
        [sem_h, sem_w])
    batch = tf.shape(logits)[0]
    logits = tf.reshape(logits, [batch, sem_h * sem_w, -1])
    labels = tf.reshape(labels, [batch, sem_h * sem_w])
    weights = tf.reshape(weights, [batch, sem_h * sem_w])
    if self._semantic_k > 0 and (sem_h, sem_w) == (height, width):
      k = min(self._semantic_k, sem_h * sem_w)
      sample_logits = (tf.math.log(gt["inverse_area"]) *
                       self._semantic_temperature +
                       (1.0 - gt["non_void"]) * _MASKED_LOGIT)
      indices = _gumbel_top_k(sample_logits, k, self._seed_for(1000))
      logits = tf.gather(logits, indices, batch_dims=1)
      labels = tf.gather(labels, indices, batch_dims=1)
      weights = tf.gather(weights, indices, batch_dims=1)
    keep = tf.cast(tf.not_equal(labels, self._ignore_label), tf.float32)
    one_hot = tf.one_hot(labels, logits.shape[-1])
    ce = tf.nn.softmax_cross_entropy_with_logits(one_hot, logits)
    return _hardest_mean(ce * weights * keep, self._top_k[SEMANTIC])


def term_names(num_auxiliary_outputs: int, with_semantic: bool) -> List[str]:
  """Names of the terms `MaXDeepLabLoss` returns, total included."""
  names = list(PER_OUTPUT_TERMS)
  for index in range(num_auxiliary_outputs):
    names += [f"aux_{index}{term}" for term in PER_OUTPUT_TERMS]
  if with_semantic:
    names.append(SEMANTIC)
  return names + [TOTAL]
