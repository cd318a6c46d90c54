"""Each loss term of `loss_terms` against a small NumPy reference.

The references are written, in float64 and pixel by pixel, from the
definitions: MaX-DeepLab's PQ-style loss (similarity p^_j(c_i) x
Dice(m_i, m^_j), α L_PQ^pos + (1 - α) L_PQ^neg) and auxiliary losses
(mask-id cross-entropy, instance discrimination, semantic), CMT-DeepLab's
pixel-wise instance discrimination, kMaX-DeepLab §4.1 (deep supervision),
and DeepLab2's constants (1e-5 floors, +1 dice smoothing, -99999 padding
slots, hard-pixel mining over the non-zero kept losses).
"""

import numpy as np
import pytest
import tensorflow as tf

from deeplab2_kmax.losses import loss_terms

B, P, M, N, C, D = 2, 20, 4, 3, 3, 5


def _softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _logsumexp(x):
  return np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1)) + x.max(-1)


def _hardest_mean(losses, top_k_percent):
  """Round-half-even(p * n) largest losses, summed / how many are non-zero."""
  losses = np.sort(np.asarray(losses, np.float64).reshape(-1))[::-1]
  kept = losses[:int(np.round(np.float32(top_k_percent) *
                              np.float32(losses.size)))]
  nonzero = np.count_nonzero(kept)
  return kept.sum() / nonzero if nonzero else 0.0


def _problem(seed=0):
  """Pixels labelled with a gt mask (-1: none), one mask absent in image 1."""
  rng = np.random.default_rng(seed)
  mask_of_pixel = rng.integers(-1, M, size=(B, P))
  mask_of_pixel[1][mask_of_pixel[1] == M - 1] = 0  # Mask M - 1 absent.
  gt_masks = (mask_of_pixel[..., None] == np.arange(M)).astype(np.float64)
  # Non-void: every pixel of a mask, and a few that are in none.
  non_void = ((mask_of_pixel >= 0) | (rng.random((B, P)) < 0.3)).astype(
      np.float64)
  mask_class = rng.integers(0, C, size=(B, M))
  class_one_hot = (mask_class[..., None] == np.arange(C)) * (
      gt_masks.sum(1) > 0)[..., None]
  return dict(
      mask_of_pixel=mask_of_pixel, gt_masks=gt_masks, non_void=non_void,
      mask_class=mask_class, class_one_hot=class_one_hot.astype(np.float64),
      valid=gt_masks.sum(1) > 0,
      mask_logits=rng.normal(0.0, 2.0, (B, P, N)),
      class_logits=rng.normal(0.0, 2.0, (B, N, C + 1)),
      features=_unit(rng.normal(size=(B, P, D))))


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _f32(x):
  return tf.constant(x, tf.float32)


def _matching(problem):
  """Image 0: masks 0, 1, 2 -> slots 2, 0, 1 (3 unmatched); image 1: 0 -> 1,
  1 -> 2 (mask 2 unmatched, 3 absent)."""
  permutation = np.zeros((B, M, N))
  permutation[0, [0, 1, 2], [2, 0, 1]] = 1
  permutation[1, [0, 1], [1, 2]] = 1
  del problem
  return permutation


def test_matching_cost_is_minus_class_probability_times_dice():
  problem = _problem()
  probs = _softmax(problem["mask_logits"])
  class_probs = _softmax(problem["class_logits"])
  expected = np.zeros((B, M, N))
  expected_dice = np.zeros((B, M, N))
  for b in range(B):
    soft = probs[b] * problem["non_void"][b][:, None]  # Void pixels removed.
    for i in range(M):
      gt = problem["gt_masks"][b, :, i]
      for j in range(N):
        dice = 2 * (gt * soft[:, j]).sum() / (gt.sum() + soft[:, j].sum() +
                                              2e-5)
        expected_dice[b, i, j] = dice
        probability = (class_probs[b, j, problem["mask_class"][b, i]]
                       if problem["valid"][b, i] else 0.0)
        expected[b, i, j] = -probability * dice
  cost, dice, class_probability = loss_terms.matching_cost(
      _f32(problem["gt_masks"]), _f32(problem["class_one_hot"]),
      _f32(probs), _f32(problem["class_logits"]), _f32(problem["non_void"]))
  np.testing.assert_allclose(cost, expected, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(dice, expected_dice, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(cost, -dice * class_probability, rtol=1e-6)


def test_pq_style_targets_follow_the_matching():
  problem = _problem(1)
  permutation = _matching(problem)
  probs = _softmax(problem["mask_logits"])
  rng = np.random.default_rng(5)
  dice = rng.random((B, M, N))
  class_probability = rng.random((B, M, N))
  class_target, class_weight, mask_weight = loss_terms.pq_style_targets(
      _f32(permutation), _f32(problem["class_one_hot"]),
      tf.constant(problem["valid"]), _f32(dice), _f32(class_probability),
      _f32(probs), _f32(problem["non_void"]))
  for b in range(B):
    for j in range(N):
      matched = np.flatnonzero(permutation[b, :, j])
      target = np.zeros(C + 1)
      if matched.size:
        i = matched[0]
        target[problem["mask_class"][b, i]] = 1
        weight = max(dice[b, i, j], 1e-5)  # L_PQ^pos: weight Dice.
      else:
        target[C] = 1  # L_PQ^neg: void.
        on_void = (probs[b, :, j] * (1 - problem["non_void"][b])).sum()
        weight = max(on_void / (probs[b, :, j].sum() + 1e-5), 1e-5)
      np.testing.assert_array_equal(class_target[b, j], target)
      np.testing.assert_allclose(class_weight[b, j], weight, rtol=1e-5)
    for i in range(M):
      slots = np.flatnonzero(permutation[b, i])
      expected = (max(class_probability[b, i, slots[0]] if slots.size else 0.0,
                      1e-5) if problem["valid"][b, i] else 0.0)
      np.testing.assert_allclose(mask_weight[b, i], expected, rtol=1e-5)


@pytest.mark.parametrize("alpha", [0.75, 0.4])
def test_pq_style_loss_is_weighted_cross_entropy_and_dice(alpha):
  problem = _problem(2)
  permutation = _matching(problem)
  rng = np.random.default_rng(6)
  class_target = np.zeros((B, N, C + 1))
  class_weight = rng.uniform(0.1, 1.0, (B, N))
  mask_weight = rng.uniform(0.1, 1.0, (B, M)) * problem["valid"]
  for b in range(B):
    for j in range(N):
      matched = np.flatnonzero(permutation[b, :, j])
      cls = problem["mask_class"][b, matched[0]] if matched.size else C
      class_target[b, j, cls] = 1
  class_term, dice_term = loss_terms.pq_style_loss(
      _f32(problem["class_logits"]), _f32(problem["mask_logits"]),
      _f32(permutation), _f32(problem["gt_masks"]), _f32(class_target),
      _f32(class_weight), _f32(mask_weight), alpha)
  log_probs = np.log(_softmax(problem["class_logits"]))
  slot_probs = _softmax(problem["mask_logits"])
  for b in range(B):
    slot_losses = []
    for j in range(N):
      negative = class_target[b, j, C] == 1
      balance = (1 - alpha) if negative else alpha
      slot_losses.append(-balance * class_weight[b, j] *
                         log_probs[b, j, class_target[b, j].argmax()])
    np.testing.assert_allclose(class_term[b], np.mean(slot_losses),
                               rtol=1e-5)
    in_a_mask = problem["mask_of_pixel"][b] >= 0
    total = 0.0
    for i in range(M):
      slots = np.flatnonzero(permutation[b, i])
      predicted = (slot_probs[b, :, slots[0]] if slots.size
                   else np.zeros(P)) * in_a_mask
      gt = problem["gt_masks"][b, :, i]
      dice = (2 * (predicted * gt).sum() + 1) / (predicted.sum() + gt.sum() +
                                                 1)
      total += mask_weight[b, i] * (1 - dice)
    np.testing.assert_allclose(dice_term[b], total * alpha / N, rtol=1e-5)


@pytest.mark.parametrize("top_k_percent", [1.0, 0.4])
def test_mask_id_cross_entropy_targets_the_matched_slot(top_k_percent):
  problem = _problem(3)
  permutation = _matching(problem)
  logits = problem["mask_logits"]
  value = loss_terms.mask_id_cross_entropy(
      _f32(logits), _f32(permutation), _f32(problem["gt_masks"]),
      _f32(problem["non_void"]), top_k_percent)
  for b in range(B):
    pixel_losses = np.zeros(P)
    for p in range(P):
      i = problem["mask_of_pixel"][b, p]
      if i < 0:
        continue
      slots = np.flatnonzero(permutation[b, i])
      if slots.size:
        pixel_losses[p] = _logsumexp(logits[b, p]) - logits[b, p, slots[0]]
      else:  # Matched to a padding slot of logit -99999.
        pixel_losses[p] = _logsumexp(logits[b, p]) + 99999.0
    np.testing.assert_allclose(value[b],
                               _hardest_mean(pixel_losses, top_k_percent),
                               rtol=1e-6)


@pytest.mark.parametrize("top_k_percent", [1.0, 0.5])
def test_instance_discrimination_contrasts_sampled_pixels(top_k_percent):
  problem = _problem(4)
  rng = np.random.default_rng(7)
  indices = np.stack([rng.choice(P, 8, replace=False) for _ in range(B)])
  value = loss_terms.instance_discrimination_loss(
      _f32(problem["features"]), _f32(problem["gt_masks"]),
      tf.constant(indices, tf.int32), 0.3, top_k_percent)
  for b in range(B):
    features = problem["features"][b, indices[b]]
    masks = problem["mask_of_pixel"][b, indices[b]]
    log_probs = np.log(_softmax(features @ features.T / 0.3))
    losses = []
    for k, mask in enumerate(masks):
      same = (masks == mask) & (mask >= 0)  # None for a pixel in no mask.
      target = same / max(same.sum(), 1)
      losses.append(-(target * log_probs[k]).sum())
    np.testing.assert_allclose(value[b], _hardest_mean(losses, top_k_percent),
                               rtol=1e-5)


def test_mask_instance_discrimination_uses_mask_average_features():
  problem = _problem(5)
  thing = (problem["mask_of_pixel"] >= 0) & (problem["mask_of_pixel"] < 2)
  value = loss_terms.mask_instance_discrimination_loss(
      _f32(problem["features"]), _f32(problem["gt_masks"]),
      _f32(thing.astype(np.float64)), 0.3, 1.0)
  for b in range(B):
    features = problem["features"][b]
    present = [i for i in range(M) if problem["valid"][b, i]]
    means = _unit(np.stack([
        features[problem["mask_of_pixel"][b] == i].mean(0) for i in present]))
    log_probs = np.log(_softmax(features @ means.T / 0.3))
    losses = [-log_probs[p, present.index(i)] if thing[b, p] else 0.0
              for p, i in enumerate(problem["mask_of_pixel"][b])]
    np.testing.assert_allclose(value[b], _hardest_mean(losses, 1.0),
                               rtol=1e-5)


@pytest.mark.parametrize("sampled", [False, True])
@pytest.mark.parametrize("top_k_percent", [1.0, 0.3])
def test_semantic_loss_is_weighted_cross_entropy(sampled, top_k_percent):
  rng = np.random.default_rng(8)
  ignore_label = 0
  logits = rng.normal(0.0, 2.0, (B, 4, 5, C + 1))
  labels = rng.integers(0, C + 1, (B, 4, 5))
  weights = rng.choice([1.0, 3.0], (B, 4, 5))
  indices = (np.stack([rng.choice(20, 7, replace=False) for _ in range(B)])
             if sampled else None)
  value = loss_terms.semantic_loss(
      _f32(logits), tf.constant(labels, tf.int32), _f32(weights),
      ignore_label, top_k_percent,
      None if indices is None else tf.constant(indices, tf.int32))
  for b in range(B):
    pixels = indices[b] if sampled else np.arange(20)
    flat_logits = logits[b].reshape(20, -1)[pixels]
    flat_labels = labels[b].reshape(20)[pixels]
    losses = [(_logsumexp(z) - z[y]) * w if y != ignore_label else 0.0
              for z, y, w in zip(flat_logits, flat_labels,
                                 weights[b].reshape(20)[pixels])]
    np.testing.assert_allclose(value[b], _hardest_mean(losses, top_k_percent),
                               rtol=1e-5)


def test_aggregate_deep_supervision_names_and_weights_every_output():
  final = {"a": tf.constant([1.0, 2.0]), "b": tf.constant([3.0, 4.0])}
  aux = {"a": tf.constant([5.0, 6.0]), "b": tf.constant([7.0, 8.0])}
  losses = loss_terms.aggregate_deep_supervision(
      [final, aux, aux], {"a": 2.0, "b": 0.5})
  assert list(losses) == ["a", "b", "aux_0a", "aux_0b", "aux_1a", "aux_1b"]
  expected = {"a": [2, 4], "b": [1.5, 2], "aux_0a": [10, 12],
              "aux_0b": [3.5, 4], "aux_1a": [10, 12], "aux_1b": [3.5, 4]}
  for name, values in expected.items():
    np.testing.assert_allclose(losses[name], values)


def test_sample_pixels_follows_inverse_area_and_skips_void():
  """One draw per row: frequencies ∝ inverse_area^T, void never drawn."""
  rows, pixels, temperature = 20000, 5, 1.5
  inverse_area = np.array([1.0, 2.0, 4.0, 1.0, 8.0])
  non_void = np.array([1.0, 1.0, 1.0, 1.0, 0.0])
  indices = loss_terms.sample_pixels(
      _f32(np.tile(inverse_area, (rows, 1))),
      _f32(np.tile(non_void, (rows, 1))), 1, temperature,
      seed=tf.constant([1, 2])).numpy()[:, 0]
  counts = np.bincount(indices, minlength=pixels) / rows
  expected = inverse_area ** temperature * non_void
  np.testing.assert_allclose(counts, expected / expected.sum(), atol=0.015)
  assert counts[4] == 0
  # k distinct pixels, and the same draw for the same seed.
  draw = lambda: loss_terms.sample_pixels(  # pylint: disable=g-long-lambda
      _f32(np.ones((B, P))), _f32(np.ones((B, P))), 6, 1.0,
      seed=tf.constant([3, 4])).numpy()
  first = draw()
  assert first.shape == (B, 6)
  assert all(len(set(row)) == 6 for row in first)
  np.testing.assert_array_equal(first, draw())


@pytest.mark.parametrize("top_k_percent", [1.0, 0.5, 0.2])
def test_hardest_mean_averages_the_kept_non_zero_losses(top_k_percent):
  losses = np.array([[0.0, 3.0, 1.0, 0.0, 2.0, 5.0, 0.0, 4.0, 0.5, 0.0],
                     [0.0] * 10])
  value = loss_terms.hardest_mean(_f32(losses), top_k_percent)
  for b in range(2):
    np.testing.assert_allclose(value[b],
                               _hardest_mean(losses[b], top_k_percent),
                               rtol=1e-6)
