"""Finite losses and gradients on degenerate ground truth (SPEC §3)."""

import numpy as np
import pytest
import tensorflow as tf

from deeplab2_kmax import common
from deeplab2_kmax.losses import max_deeplab_loss

NUM_SLOTS = 4


def _ground_truth(semantic, thing_id, thing_class):
  semantic = tf.constant(semantic, tf.int32)
  return {
      common.GT_SEMANTIC_KEY: semantic,
      common.GT_THING_ID_MASK_KEY: tf.constant(thing_id, tf.int32),
      common.GT_THING_ID_CLASS_KEY: tf.constant(thing_class, tf.int32),
      common.SEMANTIC_LOSS_WEIGHT_KEY: tf.ones(semantic.shape, tf.float32),
  }


def _cases():
  void = np.zeros((1, 9, 9), np.int32)
  single = void.copy()
  single[0, 4, 4] = 3
  single_id = -np.ones_like(single)
  single_id[0, 4, 4] = 0
  many = np.ones((1, 9, 9), np.int32)
  many_id = -np.ones_like(many)
  for i in range(6):  # 6 thing masks + stuff > 4 slots.
    many[0, i, :] = 3
    many_id[0, i, :] = i
  classes = lambda n: [[3] * n + [-1] * (8 - n)]  # pylint: disable=g-long-lambda
  return {
      "only_void": (void, -np.ones_like(void), classes(0)),
      "single_pixel_thing": (single, single_id, classes(1)),
      "more_masks_than_slots": (many, many_id, classes(6)),
  }


@pytest.mark.parametrize("name", sorted(_cases()))
@pytest.mark.parametrize("sample_k", [0, 16])
@pytest.mark.parametrize("implementation", ["scipy", "tensorflow"])
def test_finite_loss_and_gradients(name, sample_k, implementation):
  semantic, thing_id, thing_class = _cases()[name]
  y_true = _ground_truth(semantic, thing_id, thing_class)
  loss = max_deeplab_loss.MaXDeepLabLoss(
      num_classes=5, ignore_label=0, thing_class_ids=[3, 4],
      spec=max_deeplab_loss.LossSpec(
          instance_discrimination_sample_k=sample_k,
          semantic_sample_k=sample_k,
          matching_implementation=implementation),
      seed=tf.constant([1, 2]))
  rng = np.random.default_rng(0)
  feature = tf.Variable(rng.standard_normal((1, 9, 9, 8)), dtype=tf.float32)
  mask_logits = tf.Variable(rng.standard_normal((1, 9, 9, NUM_SLOTS)),
                            dtype=tf.float32)
  class_logits = tf.Variable(rng.standard_normal((1, NUM_SLOTS, 5)),
                             dtype=tf.float32)
  semantic_logits = tf.Variable(rng.standard_normal((1, 9, 9, 5)),
                                dtype=tf.float32)
  variables = [feature, mask_logits, class_logits, semantic_logits]
  with tf.GradientTape() as tape:
    y_pred = {
        common.PRED_PIXEL_SPACE_NORMALIZED_FEATURE_KEY:
            tf.math.l2_normalize(feature, -1),
        common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY: mask_logits,
        common.PRED_TRANSFORMER_CLASS_LOGITS_KEY: class_logits,
        common.PRED_SEMANTIC_LOGITS_KEY: semantic_logits,
    }
    losses = loss(y_true, y_pred)
    total = tf.reduce_sum(losses[max_deeplab_loss.TOTAL])
  for value in losses.values():
    assert np.isfinite(value.numpy()).all()
  for gradient in tape.gradient(total, variables):
    assert gradient is None or np.isfinite(gradient.numpy()).all()
  if name == "only_void":
    # No mask: only the class term (every slot -> void) remains.
    for term in (max_deeplab_loss.PQ_DICE, max_deeplab_loss.MASK_ID_CE,
                 max_deeplab_loss.INSTANCE_DISCRIMINATION):
      assert losses[term].numpy()[0] == 0.0
    assert losses[max_deeplab_loss.PQ_CLASS].numpy()[0] > 0


def test_term_names_match_the_returned_terms():
  loss = max_deeplab_loss.MaXDeepLabLoss(
      5, 0, [3, 4], max_deeplab_loss.LossSpec(
          instance_discrimination_sample_k=0, semantic_sample_k=0))
  semantic, thing_id, thing_class = _cases()["single_pixel_thing"]
  rng = np.random.default_rng(1)
  aux = {
      common.PRED_PIXEL_SPACE_NORMALIZED_FEATURE_KEY:
          tf.math.l2_normalize(tf.constant(rng.standard_normal((1, 9, 9, 8)),
                                           tf.float32), -1),
      common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY:
          tf.constant(rng.standard_normal((1, 9, 9, 4)), tf.float32),
      common.PRED_TRANSFORMER_CLASS_LOGITS_KEY:
          tf.constant(rng.standard_normal((1, 4, 5)), tf.float32),
  }
  y_pred = dict(aux)
  y_pred[common.PRED_SEMANTIC_LOGITS_KEY] = tf.zeros([1, 9, 9, 5])
  y_pred[common.PRED_AUXILIARY_OUTPUTS] = [aux, aux]
  losses = loss(_ground_truth(semantic, thing_id, thing_class), y_pred)
  assert sorted(losses) == sorted(max_deeplab_loss.term_names(2, True))
