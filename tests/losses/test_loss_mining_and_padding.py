"""Hard-pixel mining and the more-masks-than-slots case against NumPy.

The references below are written from DeepLab2's definitions
(`model/loss/max_deeplab_loss.py`, `model/loss/base_loss.py`), in float64:
* mask-id cross-entropy with more gt masks than slots: the slot logits are
  padded with -99999 up to the number of gt masks, each gt mask takes a
  column of the (square) matching, the left-over ones a padding column, and
  the softmax runs over all columns;
* top-k mining: per image, the round-half-even(p * n) largest weighted pixel
  losses, summed and divided by how many of them are non-zero.
"""

import itertools

import numpy as np
import pytest
import tensorflow as tf

from deeplab2_kmax import common
from deeplab2_kmax.losses import loss_terms
from deeplab2_kmax.losses import max_deeplab_loss

THINGS = [3, 4]
CLASS_ORDER = [3, 4, 1, 2]  # Things, then stuff (void 0 has no logit).
MAX_THING_ID = 8
NUM_SLOTS = 3
SIZE = 9


def _ground_truth():
  """4 thing instances and both stuff classes on a 9x9 image (6 masks)."""
  semantic = np.full((SIZE, SIZE), 1, np.int32)
  semantic[5:, :] = 2
  semantic[0, :] = 0  # A void row.
  thing_id = -np.ones_like(semantic)
  boxes = [(1, 3, 0, 3, 3), (1, 3, 4, 7, 4), (5, 8, 1, 4, 3), (6, 9, 5, 8, 4)]
  for index, (y0, y1, x0, x1, cls) in enumerate(boxes):
    semantic[y0:y1, x0:x1] = cls
    thing_id[y0:y1, x0:x1] = index
  thing_class = [b[-1] for b in boxes] + [-1] * (MAX_THING_ID - len(boxes))
  # Mask index per pixel in DeepLab2's order: thing ids, then stuff classes.
  mask_of_pixel = np.where(thing_id >= 0, thing_id, -1)
  for offset, stuff in enumerate([1, 2]):
    mask_of_pixel[semantic == stuff] = MAX_THING_ID + offset
  mask_class = np.array(thing_class + [1, 2])
  return semantic, thing_id, np.array([thing_class]), mask_of_pixel, mask_class


def _predictions(mask_of_pixel, rng):
  """Slots that clearly prefer gt masks 0, 1 and 2, with random noise.

  The logits sit around 10 (softmax does not care), so the logsumexp that an
  unmatched pixel adds to 99999 is large.
  """
  logits = rng.normal(10.0, 2.0, (SIZE, SIZE, NUM_SLOTS))
  class_logits = rng.normal(0.0, 1.0, (NUM_SLOTS, len(CLASS_ORDER) + 1))
  for slot, cls in enumerate([3, 4, 3]):
    logits[..., slot] += 6.0 * (mask_of_pixel == slot)
    class_logits[slot, CLASS_ORDER.index(cls)] += 4.0
  return logits, class_logits


def _softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _best_matching(logits, class_logits, mask_of_pixel, mask_class,
                   non_void):
  """{gt mask: slot} maximising sum of dice x class probability (brute force)."""
  probs = _softmax(logits).reshape(-1, NUM_SLOTS) * non_void.reshape(-1, 1)
  class_probs = _softmax(class_logits)[:, :-1]
  present = [m for m in np.unique(mask_of_pixel) if m >= 0]
  similarity = {}
  for mask in present:
    gt = (mask_of_pixel.reshape(-1) == mask).astype(np.float64)
    for slot in range(NUM_SLOTS):
      dice = gt @ probs[:, slot] / ((gt.sum() + probs[:, slot].sum()) / 2 +
                                    1e-5)
      similarity[mask, slot] = dice * class_probs[
          slot, CLASS_ORDER.index(mask_class[mask])]
  scored = []
  for masks in itertools.permutations(present, NUM_SLOTS):
    scored.append((sum(similarity[m, s] for s, m in enumerate(masks)), masks))
  scored.sort(reverse=True)
  assert scored[0][0] - scored[1][0] > 1e-3  # A unique optimum.
  return {mask: slot for slot, mask in enumerate(scored[0][1])}


def _top_k_mean(losses, top_k_percent):
  losses = np.sort(np.asarray(losses, np.float64).reshape(-1))[::-1]
  count = int(np.round(np.float32(top_k_percent) * np.float32(losses.size)))
  kept = losses[:count]
  nonzero = np.count_nonzero(kept)
  return kept.sum() / nonzero if nonzero else 0.0


def _mask_id_reference(logits, mask_of_pixel, non_void, matching,
                       top_k_percent, without_log_norm=False):
  num_masks = MAX_THING_ID + 2
  width = max(num_masks, NUM_SLOTS)
  padded = np.full((SIZE * SIZE, width), -99999.0)
  padded[:, :NUM_SLOTS] = logits.reshape(-1, NUM_SLOTS)
  spare = iter(range(NUM_SLOTS, width))
  column = {m: matching[m] if m in matching else next(spare)
            for m in range(num_masks)}
  log_norm = np.log(np.exp(padded - padded.max(-1, keepdims=True)).sum(-1))
  log_norm += padded.max(-1)
  if without_log_norm:  # The former flat 99999 per unmatched pixel.
    log_norm = np.where(np.isin(mask_of_pixel.reshape(-1), list(matching)),
                        log_norm, 0.0)
  ce = np.zeros(SIZE * SIZE)
  for p, mask in enumerate(mask_of_pixel.reshape(-1)):
    if mask >= 0:
      ce[p] = log_norm[p] - padded[p, column[mask]]
  return _top_k_mean(ce * non_void.reshape(-1), top_k_percent)


def _y_true(semantic, thing_id, thing_class, weights=None):
  weights = np.ones(semantic.shape) if weights is None else weights
  return {
      common.GT_SEMANTIC_KEY: tf.constant(semantic[None], tf.int32),
      common.GT_THING_ID_MASK_KEY: tf.constant(thing_id[None], tf.int32),
      common.GT_THING_ID_CLASS_KEY: tf.constant(thing_class, tf.int32),
      common.SEMANTIC_LOSS_WEIGHT_KEY: tf.constant(weights[None], tf.float32),
  }


def _loss(**kwargs):
  defaults = dict(pq_style_loss_weight=1.0,
                  mask_id_cross_entropy_loss_weight=1.0,
                  instance_discrimination_loss_weight=1.0,
                  semantic_loss_weight=1.0,
                  instance_discrimination_sample_k=0, semantic_sample_k=0)
  defaults.update(kwargs)
  return max_deeplab_loss.MaXDeepLabLoss(
      num_classes=5, ignore_label=0, thing_class_ids=THINGS,
      spec=max_deeplab_loss.LossSpec(**defaults))


@pytest.mark.parametrize("implementation", ["scipy", "tensorflow"])
@pytest.mark.parametrize("top_k_percent", [1.0, 0.3])
def test_mask_id_cross_entropy_with_more_masks_than_slots(implementation,
                                                          top_k_percent):
  semantic, thing_id, thing_class, mask_of_pixel, mask_class = _ground_truth()
  assert len(np.unique(mask_of_pixel[mask_of_pixel >= 0])) == 6 > NUM_SLOTS
  logits, class_logits = _predictions(mask_of_pixel,
                                      np.random.default_rng(0))
  non_void = (semantic != 0).astype(np.float64)
  matching = _best_matching(logits, class_logits, mask_of_pixel, mask_class,
                            non_void)
  y_pred = {
      common.PRED_PIXEL_SPACE_NORMALIZED_FEATURE_KEY: tf.math.l2_normalize(
          tf.ones([1, SIZE, SIZE, 4]), -1),
      common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY: tf.constant(logits[None],
                                                           tf.float32),
      common.PRED_TRANSFORMER_CLASS_LOGITS_KEY: tf.constant(class_logits[None],
                                                            tf.float32),
  }
  loss = _loss(matching_implementation=implementation,
               mask_id_cross_entropy_top_k_percent=top_k_percent)
  value = loss(_y_true(semantic, thing_id, thing_class),
               y_pred)[max_deeplab_loss.MASK_ID_CE].numpy()[0]
  expected = _mask_id_reference(logits, mask_of_pixel, non_void, matching,
                                top_k_percent)
  np.testing.assert_allclose(value, expected, rtol=2e-6)
  # The logsumexp of the real slots is part of the unmatched pixels' cost:
  # without it the value is off by far more than the tolerance.
  flat = _mask_id_reference(logits, mask_of_pixel, non_void, matching,
                            top_k_percent, without_log_norm=True)
  assert abs(flat - expected) > 10 * 2e-6 * expected


def test_semantic_mining_uses_the_small_instance_weights():
  """All-pixel semantic loss (Cityscapes: k = 0), top 20%, weighted pixels."""
  rng = np.random.default_rng(1)
  semantic, thing_id, thing_class, _, _ = _ground_truth()
  weights = np.where(thing_id >= 0, 3.0, 1.0)  # Every instance is "small".
  logits = rng.normal(0.0, 2.0, (1, 5, 5, 5))  # Stride 2 below the labels.
  y_pred = {
      common.PRED_PIXEL_SPACE_NORMALIZED_FEATURE_KEY: tf.math.l2_normalize(
          tf.ones([1, SIZE, SIZE, 4]), -1),
      common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY: tf.zeros(
          [1, SIZE, SIZE, NUM_SLOTS]),
      common.PRED_TRANSFORMER_CLASS_LOGITS_KEY: tf.zeros([1, NUM_SLOTS, 5]),
      common.PRED_SEMANTIC_LOGITS_KEY: tf.constant(logits, tf.float32),
  }
  loss = _loss(semantic_top_k_percent=0.2)
  value = loss(_y_true(semantic, thing_id, thing_class, weights),
               y_pred)[max_deeplab_loss.SEMANTIC].numpy()[0]
  labels, pixel_weights = semantic[::2, ::2], weights[::2, ::2]
  log_probs = np.log(_softmax(logits[0]))
  ce = -np.take_along_axis(log_probs, labels[..., None], -1)[..., 0]
  per_pixel = ce * pixel_weights * (labels != 0)
  np.testing.assert_allclose(value, _top_k_mean(per_pixel, 0.2), rtol=1e-5)
  unweighted = _top_k_mean(ce * (labels != 0), 0.2)
  assert abs(unweighted - value) > 1e-3 * value  # The weights matter.


def test_instance_discrimination_mining_on_thing_pixels():
  rng = np.random.default_rng(2)
  semantic, thing_id, thing_class, mask_of_pixel, _ = _ground_truth()
  feature = rng.normal(size=(SIZE, SIZE, 4))
  feature /= np.linalg.norm(feature, axis=-1, keepdims=True)
  y_pred = {
      common.PRED_PIXEL_SPACE_NORMALIZED_FEATURE_KEY: tf.constant(
          feature[None], tf.float32),
      common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY: tf.zeros(
          [1, SIZE, SIZE, NUM_SLOTS]),
      common.PRED_TRANSFORMER_CLASS_LOGITS_KEY: tf.zeros([1, NUM_SLOTS, 5]),
  }
  loss = _loss(instance_discrimination_top_k_percent=0.5)
  value = loss(_y_true(semantic, thing_id, thing_class),
               y_pred)[max_deeplab_loss.INSTANCE_DISCRIMINATION].numpy()[0]
  flat_feature = feature.reshape(-1, 4)
  flat_mask = mask_of_pixel.reshape(-1)
  masks = sorted(m for m in np.unique(flat_mask) if m >= 0)
  means = np.stack([flat_feature[flat_mask == m].mean(0) for m in masks])
  means /= np.linalg.norm(means, axis=-1, keepdims=True)
  logits = flat_feature @ means.T / 0.3
  target = np.array([masks.index(m) if m >= 0 else 0 for m in flat_mask])
  ce = -np.take_along_axis(np.log(_softmax(logits)), target[:, None], -1)[:, 0]
  per_pixel = ce * (thing_id.reshape(-1) >= 0)
  np.testing.assert_allclose(value, _top_k_mean(per_pixel, 0.5), rtol=1e-5)


def test_top_k_count_rounds_half_to_even_like_deeplab2():
  assert loss_terms.top_k_count(0.5, 5) == 2  # 2.5 -> 2.
  assert loss_terms.top_k_count(0.5, 7) == 4  # 3.5 -> 4.
  assert loss_terms.top_k_count(0.2, 81) == 16
  with pytest.raises(ValueError, match="top_k_percent"):
    _loss(semantic_top_k_percent=0.0)
