"""The terms of the MaX-DeepLab / kMaX-DeepLab loss, one function each.

MaX-DeepLab: Wang et al., "End-to-End Panoptic Segmentation with Mask
Transformers", CVPR 2021 (its PQ-style loss and auxiliary losses, cited
below by their paragraph names and symbols); CMT-DeepLab: Yu et al., CVPR
2022 (pixel-wise instance discrimination).

kMaX-DeepLab (§3.3, "Loss functions") trains with MaX-DeepLab's losses: the
PQ-style loss, the mask-id cross-entropy, the pixel-wise instance
discrimination loss of CMT-DeepLab and the auxiliary semantic loss; every
kMaX decoder's output is deep-supervised with them, reusing the final
output's Hungarian matching (§4.1, "Training and testing").

Shapes: B images, P pixels (flattened H x W), N mask slots, M ground-truth
masks (one column per mask; void pixels belong to none), C non-void classes
(class logits carry C + 1 channels, void last), D feature channels. Every
term returns one value per image, [B], before its loss weight. Numbers follow
DeepLab2's implementation (checked against it in tests/losses), including
its constants: 1e-5 floors on the PQ-style weights, +1 smoothing in the mask
dice, padding logits of -99999 and hard-pixel mining that averages over the
non-zero losses it keeps.
"""

from typing import Dict
from typing import Mapping
from typing import Optional
from typing import Sequence
from typing import Tuple

import numpy as np
import tensorflow as tf

# The logit of a slot or mask that must take no probability (DeepLab2's).
MASKED_LOGIT = -99999.0


def mean_of_nonzero(x: tf.Tensor) -> tf.Tensor:
  """Per-image sum divided by the count of non-zero entries (0 if none)."""
  x = tf.reshape(x, [tf.shape(x)[0], -1])
  count = tf.reduce_sum(tf.cast(tf.not_equal(x, 0.0), x.dtype), axis=1)
  return tf.math.divide_no_nan(tf.reduce_sum(x, axis=1), count)


def top_k_count(top_k_percent: float, num_elements: int) -> int:
  """Elements kept by hard-pixel mining: round-half-even(p * n) in float32."""
  return int(np.round(np.float32(top_k_percent) * np.float32(num_elements)))


def hardest_mean(x: tf.Tensor, top_k_percent: float) -> tf.Tensor:
  """DeepLab2's hard-pixel mining: `mean_of_nonzero` of each image's
  `top_k_percent` largest entries (1.0 keeps them all)."""
  x = tf.reshape(x, [tf.shape(x)[0], -1])
  if top_k_percent != 1.0:
    x = tf.math.top_k(x, top_k_count(top_k_percent, x.shape[1]),
                      sorted=False).values
  return mean_of_nonzero(x)


def sample_pixels(inverse_area: tf.Tensor, non_void: tf.Tensor, k: int,
                  temperature: float,
                  seed: Optional[tf.Tensor] = None) -> tf.Tensor:
  """[B, min(k, P)] pixel indices drawn without replacement (Gumbel top-k).

  A pixel is drawn with probability proportional to inverse_area^temperature,
  inverse_area being P over its mask's area, so small masks are not drowned
  out; void pixels (non_void 0) are never drawn. This is the sampling of
  CMT-DeepLab's pixel-wise instance discrimination, which DeepLab2 also uses
  for the semantic loss. `seed` ([2] int) makes the draw deterministic.
  """
  logits = (tf.math.log(inverse_area) * temperature +
            (1.0 - non_void) * MASKED_LOGIT)
  k = min(k, logits.shape[1])
  if seed is None:
    uniform = tf.random.uniform(tf.shape(logits), 0, 1)
  else:
    uniform = tf.random.stateless_uniform(tf.shape(logits), seed, 0, 1)
  gumbel = -tf.math.log(-tf.math.log(uniform))
  return tf.math.top_k(logits + gumbel, k).indices


def matching_cost(gt_masks: tf.Tensor, gt_class_one_hot: tf.Tensor,
                  mask_probs: tf.Tensor, class_logits: tf.Tensor,
                  non_void: tf.Tensor
                  ) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
  """The Hungarian matching cost, -sim(y_i, y^_j) (MaX-DeepLab, "Mask
  similarity metric" and "Mask matching" of its PQ-style loss).

  sim(y_i, y^_j) = p^_j(c_i) x Dice(m_i, m^_j): the probability slot j gives
  gt mask i's class, times the dice of the mask with the slot's soft mask
  (its softmax over slots, void pixels removed; 1e-5 in the denominator).

  Args:
    gt_masks: [B, P, M] 0/1 gt masks.
    gt_class_one_hot: [B, M, C] each gt mask's class (all 0 for padding).
    mask_probs: [B, P, N] per-pixel softmax over the slots.
    class_logits: [B, N, C + 1] class logits, void last.
    non_void: [B, P] 1 on non-void pixels.

  Returns:
    (cost, dice, class_probability), each [B, M, N], with cost = -(dice x
    class_probability); the PQ-style loss weights its terms by the factors.
  """
  masked_probs = mask_probs * non_void[:, :, tf.newaxis]
  intersection = tf.einsum("bpm,bpn->bmn", gt_masks, masked_probs)
  area = tf.reduce_sum(gt_masks, axis=1)
  dice = intersection / (
      (area[:, :, tf.newaxis] +
       tf.reduce_sum(masked_probs, axis=1)[:, tf.newaxis, :]) / 2 + 1e-5)
  class_probs = tf.nn.softmax(class_logits, axis=-1)[..., :-1]
  class_probability = tf.einsum("bmc,bnc->bmn", gt_class_one_hot, class_probs)
  return -dice * class_probability, dice, class_probability


def pq_style_targets(permutation: tf.Tensor, gt_class_one_hot: tf.Tensor,
                     gt_valid: tf.Tensor, dice: tf.Tensor,
                     class_probability: tf.Tensor, mask_probs: tf.Tensor,
                     non_void: tf.Tensor
                     ) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
  """Targets and (stop-gradient) weights of the PQ-style loss, from a matching.

  Args:
    permutation: [B, M, N] 0/1 matching of gt masks to slots.
    gt_class_one_hot: [B, M, C].
    gt_valid: [B, M] bool, masks present in the image.
    dice, class_probability: [B, M, N], from `matching_cost`.
    mask_probs: [B, P, N] slot softmax of the output that was matched.
    non_void: [B, P].

  Returns:
    class_target: [B, N, C + 1], the matched mask's class, or void for an
      unmatched slot (the ∅ of L_PQ^neg).
    class_weight: [B, N], the matched dice for a matched slot (L_PQ^pos's
      cross-entropy weight), else the fraction of the slot's mass on void
      pixels (DeepLab2's weight for L_PQ^neg); floored at 1e-5.
    mask_weight: [B, M], the matched class probability p^(c_i) (L_PQ^pos's
      dice weight), floored at 1e-5; 0 for absent masks.
  """
  matched_dice = tf.stop_gradient(tf.reduce_max(dice * permutation, axis=1))
  matched_class_probability = tf.stop_gradient(
      tf.reduce_max(class_probability * permutation, axis=2))
  slot_class = tf.einsum("bmn,bmc->bnc", permutation, gt_class_one_hot)
  positive = tf.cast(tf.reduce_max(slot_class, axis=-1) > 0.5, tf.float32)
  negative = 1.0 - positive
  void_fraction = tf.stop_gradient(tf.math.divide(
      tf.einsum("bp,bpn->bn", 1.0 - non_void, mask_probs),
      tf.reduce_sum(mask_probs, axis=1) + 1e-5))
  class_weight = (positive * tf.maximum(matched_dice, 1e-5) +
                  negative * tf.maximum(void_fraction, 1e-5))
  class_target = tf.concat([slot_class, negative[..., tf.newaxis]], axis=-1)
  mask_weight = tf.cast(gt_valid, tf.float32) * tf.maximum(
      matched_class_probability, 1e-5)
  return class_target, class_weight, mask_weight


def pq_style_loss(class_logits: tf.Tensor, mask_logits: tf.Tensor,
                  permutation: tf.Tensor, gt_masks: tf.Tensor,
                  class_target: tf.Tensor, class_weight: tf.Tensor,
                  mask_weight: tf.Tensor, alpha: float
                  ) -> Tuple[tf.Tensor, tf.Tensor]:
  """MaX-DeepLab's PQ-style loss, L_PQ = α L_PQ^pos + (1 - α) L_PQ^neg.

  L_PQ^pos = Σ_i p^(c_i) [-Dice(m_i, m^_σ(i))] + Dice [-log p^_σ(i)(c_i)] and
  L_PQ^neg = Σ_{unmatched j} -log p^_j(∅), the weights held constant. Split
  as DeepLab2 does into
  * a class term: each slot's cross-entropy against `class_target`, times
    `class_weight` and α (matched) or 1 - α (unmatched), averaged over the
    slots with a non-zero loss;
  * a mask dice term: Σ_i mask_weight_i x (1 - dice of gt mask i with its
    matched slot's softmax mask, +1 smoothing), times α / N.

  Args:
    class_logits: [B, N, C + 1].
    mask_logits: [B, P, N].
    permutation: [B, M, N] 0/1 matching.
    gt_masks: [B, P, M].
    class_target, class_weight, mask_weight: from `pq_style_targets`.
    alpha: α, the positive-vs-negative balance (0.75 in both papers).

  Returns:
    (class_term, mask_dice_term), each [B].
  """
  negative = class_target[..., -1]
  positive = 1.0 - negative
  alpha_weight = alpha * positive + (1 - alpha) * negative
  cross_entropy = tf.nn.softmax_cross_entropy_with_logits(class_target,
                                                          class_logits)
  class_term = mean_of_nonzero(cross_entropy * alpha_weight * class_weight)
  slot_probs = tf.nn.softmax(mask_logits, axis=-1)
  matched_probs = tf.einsum("bpn,bmn->bpm", slot_probs, permutation)
  matched_probs *= tf.reduce_sum(gt_masks, axis=-1)[:, :, tf.newaxis]
  dice_loss = 1.0 - (
      2.0 * tf.reduce_sum(matched_probs * gt_masks, axis=1) + 1.0) / (
          tf.reduce_sum(matched_probs, axis=1) +
          tf.reduce_sum(gt_masks, axis=1) + 1.0)
  num_slots = mask_logits.shape[-1]
  mask_dice_term = tf.reduce_sum(dice_loss * mask_weight, axis=-1) * (
      alpha / num_slots)
  return class_term, mask_dice_term


def mask_id_cross_entropy(mask_logits: tf.Tensor, permutation: tf.Tensor,
                          gt_masks: tf.Tensor, non_void: tf.Tensor,
                          top_k_percent: float = 1.0) -> tf.Tensor:
  """The mask-id cross-entropy (MaX-DeepLab's auxiliary losses).

  Each pixel's softmax over the slots against the slot matched to its gt
  mask, averaged over the hardest `top_k_percent` of the non-void pixels.
  With more gt masks than slots DeepLab2 pads the slots with logits of
  -99999 and matches the masks left over to those; the softmax includes the
  padding (whose probability underflows to 0), so a pixel of an unmatched
  mask costs 99999 + logsumexp(its slot logits).

  Args:
    mask_logits: [B, P, N].
    permutation: [B, M, N] 0/1 matching.
    gt_masks: [B, P, M].
    non_void: [B, P].
    top_k_percent: Fraction of the pixels kept by hard-pixel mining.

  Returns:
    [B].
  """
  slot_target = tf.einsum("bpm,bmn->bpn", gt_masks, permutation)
  in_mask = tf.reduce_sum(gt_masks, axis=-1)
  log_probs = tf.nn.log_softmax(mask_logits, axis=-1)
  cross_entropy = -tf.reduce_sum(slot_target * log_probs, axis=-1)
  unmatched = in_mask - tf.reduce_sum(slot_target, axis=-1)
  padded_slot_cost = tf.reduce_logsumexp(mask_logits, axis=-1) - MASKED_LOGIT
  cross_entropy += unmatched * padded_slot_cost
  return hardest_mean(cross_entropy * non_void, top_k_percent)


def instance_discrimination_loss(pixel_features: tf.Tensor,
                                 gt_masks: tf.Tensor,
                                 pixel_indices: tf.Tensor,
                                 temperature: float,
                                 top_k_percent: float = 1.0) -> tf.Tensor:
  """Pixel-wise instance discrimination (CMT-DeepLab; kMaX-DeepLab §3.3).

  Among the sampled pixels (`sample_pixels`), each pixel's softmax over its
  feature similarity to every sampled pixel (itself included), divided by
  `temperature`, against a uniform target over the sampled pixels of its own
  gt mask (none for a pixel in no mask); averaged over the hardest
  `top_k_percent` of the sampled pixels.

  Args:
    pixel_features: [B, P, D] L2-normalised pixel features.
    gt_masks: [B, P, M].
    pixel_indices: [B, K] sampled pixels.
    temperature: τ of the similarity (0.3).
    top_k_percent: Fraction of the pixels kept by hard-pixel mining.

  Returns:
    [B].
  """
  masks = tf.gather(gt_masks, pixel_indices, batch_dims=1)
  target = tf.einsum("bkm,bjm->bkj", masks, masks)
  target /= tf.maximum(tf.reduce_sum(target, axis=-1, keepdims=True), 1.0)
  features = tf.gather(pixel_features, pixel_indices, batch_dims=1)
  logits = tf.einsum("bkd,bjd->bkj", features, features) / temperature
  return hardest_mean(
      tf.nn.softmax_cross_entropy_with_logits(target, logits), top_k_percent)


def mask_instance_discrimination_loss(pixel_features: tf.Tensor,
                                      gt_masks: tf.Tensor,
                                      thing_pixels: tf.Tensor,
                                      temperature: float,
                                      top_k_percent: float = 1.0
                                      ) -> tf.Tensor:
  """MaX-DeepLab's instance discrimination (auxiliary losses), unsampled.

  t_i is the L2-normalised average feature of gt mask i; each pixel's
  softmax over t_i · g / τ (masks absent from the image excluded) against
  its own mask, averaged over the hardest `top_k_percent` of the thing
  pixels.

  Args:
    pixel_features: [B, P, D] L2-normalised pixel features g.
    gt_masks: [B, P, M].
    thing_pixels: [B, P] 1 on pixels of thing instances.
    temperature: τ (0.3).
    top_k_percent: Fraction of the pixels kept by hard-pixel mining.

  Returns:
    [B].
  """
  area = tf.reduce_sum(gt_masks, axis=1)
  mean = tf.einsum("bpd,bpm->bmd", pixel_features, gt_masks) / tf.maximum(
      area[:, :, tf.newaxis], 1.0)
  mean = tf.math.l2_normalize(mean, axis=-1)
  logits = tf.einsum("bpd,bmd->bpm", pixel_features, mean) / temperature
  present = tf.cast(area > 0.5, tf.float32)[:, tf.newaxis, :]
  logits = present * logits + (1.0 - present) * MASKED_LOGIT
  cross_entropy = tf.nn.softmax_cross_entropy_with_logits(gt_masks, logits)
  return hardest_mean(cross_entropy * thing_pixels, top_k_percent)


def semantic_loss(semantic_logits: tf.Tensor, labels: tf.Tensor,
                  pixel_weights: tf.Tensor, ignore_label: int,
                  top_k_percent: float = 1.0,
                  pixel_indices: Optional[tf.Tensor] = None) -> tf.Tensor:
  """The auxiliary semantic loss (MaX-DeepLab's auxiliary losses).

  Per-pixel softmax cross-entropy against the semantic label, times the
  pixel's weight (the input pipeline up-weights small instances), void
  pixels excluded; over the `pixel_indices` pixels only when given (kMaX's
  configs sample them like instance discrimination); averaged over the
  hardest `top_k_percent` of those pixels.

  Args:
    semantic_logits: [B, H, W, C'] (C' semantic channels, void included when
      it is a class id).
    labels: [B, H, W] int semantic labels at the logits' resolution.
    pixel_weights: [B, H, W] float.
    ignore_label: The void label.
    top_k_percent: Fraction of the pixels kept by hard-pixel mining.
    pixel_indices: Optional [B, K] pixels (flattened H x W) to use.

  Returns:
    [B].
  """
  batch = tf.shape(semantic_logits)[0]
  height, width = semantic_logits.shape[1], semantic_logits.shape[2]
  logits = tf.reshape(semantic_logits, [batch, height * width, -1])
  labels = tf.reshape(labels, [batch, height * width])
  pixel_weights = tf.reshape(pixel_weights, [batch, height * width])
  if pixel_indices is not None:
    logits = tf.gather(logits, pixel_indices, batch_dims=1)
    labels = tf.gather(labels, pixel_indices, batch_dims=1)
    pixel_weights = tf.gather(pixel_weights, pixel_indices, batch_dims=1)
  keep = tf.cast(tf.not_equal(labels, ignore_label), tf.float32)
  one_hot = tf.one_hot(labels, logits.shape[-1])
  cross_entropy = tf.nn.softmax_cross_entropy_with_logits(one_hot, logits)
  return hardest_mean(cross_entropy * pixel_weights * keep, top_k_percent)


def aggregate_deep_supervision(
    per_output_terms: Sequence[Mapping[str, tf.Tensor]],
    weights: Mapping[str, float]) -> Dict[str, tf.Tensor]:
  """Weighted, named terms of every output (kMaX-DeepLab §4.1).

  Every kMaX decoder's output is supervised by the same terms with the same
  weights as the final output. The final output's (first) terms keep their
  names; the i-th auxiliary output's are prefixed "aux_{i}" (DeepLab2's
  names). Each term is multiplied by `weights[name]`.
  """
  losses = {}
  for index, terms in enumerate(per_output_terms):
    prefix = "" if index == 0 else f"aux_{index - 1}"
    for name, value in terms.items():
      losses[prefix + name] = value * weights[name]
  return losses
