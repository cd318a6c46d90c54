"""Mask-wise merging against a NumPy re-implementation (SPEC §4).

Every output key is checked for the meaning DeepLab2's key of the same name
has: `semantic_pred` the threshold-free argmax-slot class, `instance_scores`
the max mask probability, `semantic_scores` the pasted slot's class
confidence.
"""

import numpy as np
import pytest
import tensorflow as tf

from deeplab2_kmax import common
from deeplab2_kmax.post_processing import max_deeplab

THINGS, STUFF = [4, 5], [1, 2]  # Class-logit order: 4, 5, 1, 2, void.
DIVISOR, VOID = 100, 0


def _softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _reference(mask_logits, class_logits, resized_logits, *, pixel_t, thing_t,
               stuff_t, overlap, thing_limit, stuff_limit):
  """Straightforward per-image loops over slots and pixels.

  Returns:
    (panoptic map, class confidence of the slot pasted at each pixel before
    the area limits, 0 where none is).
  """
  ids = THINGS + STUFF
  class_probs = _softmax(class_logits)[:, :-1]
  pred = class_probs.argmax(-1)
  conf = class_probs.max(-1)
  probs_low = _softmax(mask_logits)
  scores = []
  for n in range(mask_logits.shape[-1]):
    selected = probs_low[..., n][probs_low[..., n] > pixel_t]
    scores.append(selected.mean() if selected.size else 0.0)
  order = sorted(range(len(conf)), key=lambda n: -(conf[n] * scores[n]))
  probs = _softmax(resized_logits)
  canvas = np.zeros(probs.shape[:2], np.int64)
  for rank, n in enumerate(order):
    is_thing = pred[n] < len(THINGS)
    if conf[n] < (thing_t if is_thing else stuff_t):
      continue
    mask = probs[..., n] > pixel_t
    free = mask & (canvas == 0)
    if free.sum() > mask.sum() * overlap:
      canvas[free] = rank + 1
  pasted_confidence = np.where(
      canvas > 0, np.array([conf[n] for n in order])[canvas - 1], 0.0)
  semantic = np.full(canvas.shape, VOID)
  instance = np.zeros(canvas.shape, np.int64)
  for rank, n in enumerate(order):
    region = canvas == rank + 1
    if not region.any():
      continue
    semantic[region] = ids[pred[n]]
    if pred[n] < len(THINGS):
      instance[region] = rank + 1
  for rank in range(1, len(order) + 1):  # Thing segments too small.
    region = (instance == rank)
    if region.any() and region.sum() < thing_limit:
      semantic[region], instance[region] = VOID, 0
  for cls in STUFF:
    region = (semantic == cls) & (instance == 0)
    if region.any() and region.sum() < stuff_limit:
      semantic[region] = VOID
  return semantic * DIVISOR + instance, pasted_confidence


def _resize(logits, size):
  return tf.raw_ops.ResizeBilinear(images=logits[None], size=size,
                                   align_corners=True)[0].numpy()


# 0.4: pasting from pairwise overlaps (a pixel lies in at most two masks);
# 0.2: pasting slot by slot.
@pytest.mark.parametrize("pixel_t", [0.4, 0.2])
@pytest.mark.parametrize("seed", range(6))
def test_matches_numpy_reference(seed, pixel_t):
  rng = np.random.default_rng(seed)
  slots = 7
  mask_logits = (rng.standard_normal((9, 11, slots)) * 3).astype(np.float32)
  class_logits = (rng.standard_normal((slots, 5)) * 3).astype(np.float32)
  settings = dict(pixel_t=pixel_t, thing_t=0.3, stuff_t=0.35, overlap=0.8,
                  thing_limit=10, stuff_limit=30)
  merging = max_deeplab.MaskWiseMerging(
      THINGS, STUFF, DIVISOR, VOID,
      pixel_confidence_threshold=settings["pixel_t"],
      transformer_class_confidence_threshold_thing=settings["thing_t"],
      transformer_class_confidence_threshold_stuff=settings["stuff_t"],
      overlapping_threshold=settings["overlap"],
      thing_area_limit=settings["thing_limit"],
      stuff_area_limit=settings["stuff_limit"])
  outputs = {common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY: mask_logits[None],
             common.PRED_TRANSFORMER_CLASS_LOGITS_KEY: class_logits[None]}
  result = merging(outputs, (33, 41))
  resized = _resize(mask_logits, (33, 41))
  expected, pasted_confidence = _reference(mask_logits, class_logits, resized,
                                           **settings)
  np.testing.assert_array_equal(result[common.PRED_PANOPTIC_KEY][0].numpy(),
                                expected)
  np.testing.assert_array_equal(result[common.PRED_INSTANCE_KEY][0].numpy(),
                                expected % DIVISOR)
  # DeepLab2's meanings: semantic_pred is each pixel's argmax slot's class;
  # instance_scores the max mask probability (some slot passes a class
  # threshold here); semantic_scores the pasted slot's class confidence.
  class_probs = _softmax(class_logits)[:, :-1]
  assert class_probs.max() >= min(settings["thing_t"], settings["stuff_t"])
  slot_class = np.array(THINGS + STUFF)[class_probs.argmax(-1)]
  np.testing.assert_array_equal(result[common.PRED_SEMANTIC_KEY][0].numpy(),
                                slot_class[resized.argmax(-1)])
  np.testing.assert_allclose(
      result[common.PRED_INSTANCE_SCORES_KEY][0].numpy(),
      _softmax(resized).max(-1), rtol=0, atol=1e-6)
  assert (pasted_confidence > 0).any() and (pasted_confidence == 0).any()
  np.testing.assert_allclose(
      result[common.PRED_SEMANTIC_SCORES_KEY][0].numpy(), pasted_confidence,
      rtol=0, atol=1e-6)
  xla = tf.function(lambda o: merging(o, (33, 41)), jit_compile=True)
  np.testing.assert_array_equal(xla(outputs)[common.PRED_PANOPTIC_KEY].numpy(),
                                result[common.PRED_PANOPTIC_KEY].numpy())


@pytest.mark.parametrize("overlap", [0.5, 0.8, 0.95])
def test_pair_counts_paste_like_slot_by_slot(overlap):
  """Many pixels in two masks, batch of 2: both pasting routes agree."""
  rng = np.random.default_rng(int(overlap * 100))
  slots = 16
  logits = rng.standard_normal((2, 37, 29, slots)).astype(np.float32)
  # Two slots close to each other and far above the rest on every pixel.
  pair = np.argsort(rng.uniform(size=(2, 37, 29, slots)), axis=-1)[..., :2]
  np.put_along_axis(logits, pair[..., :1], 8.0, axis=-1)
  np.put_along_axis(logits, pair[..., 1:],
                    8.0 + rng.uniform(-0.3, 0.3, (2, 37, 29, 1)), axis=-1)
  probs = tf.nn.softmax(logits, axis=-1)
  in_two = (tf.reduce_sum(tf.cast(probs > 0.4, tf.int32), -1) == 2).numpy()
  assert in_two.mean() > 0.3  # The overlaps are exercised.
  order = tf.argsort(tf.constant(rng.uniform(size=(2, slots))), axis=-1)
  confident = tf.constant(rng.uniform(size=(2, slots)) < 0.8)
  merging = max_deeplab.MaskWiseMerging(THINGS, STUFF, DIVISOR, VOID,
                                        overlapping_threshold=overlap)
  direct = merging._paste_slot_by_slot(probs, order, confident)
  by_pairs = merging._paste_by_pair_counts(probs, order, confident)
  assert len(np.unique(direct.numpy())) > 3
  np.testing.assert_array_equal(by_pairs.numpy(), direct.numpy())


def _two_slot_outputs(first_mask, second_mask, confidences):
  """Slot 0 (thing 4) and slot 1 (thing 5) with given masks/confidences."""
  mask_logits = np.full((8, 8, 3), -10.0, np.float32)
  mask_logits[..., 2] = 0.0  # A background slot that is never confident.
  mask_logits[first_mask, 0] = 10.0
  mask_logits[second_mask & ~first_mask, 1] = 10.0
  class_logits = np.zeros((3, 5), np.float32)  # Slot 2: 0.2 everywhere.
  for slot, (cls, conf) in enumerate(confidences):
    class_logits[slot, cls] = np.log(conf / (1 - conf) * 4)
  return {common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY: mask_logits[None],
          common.PRED_TRANSFORMER_CLASS_LOGITS_KEY: class_logits[None]}


def test_class_threshold_drops_unconfident_slots():
  first = np.zeros((8, 8), bool)
  first[:4] = True
  second = ~first
  outputs = _two_slot_outputs(first, second, [(0, 0.9), (1, 0.5)])
  strict = max_deeplab.MaskWiseMerging(
      THINGS, STUFF, DIVISOR, VOID,
      transformer_class_confidence_threshold_thing=0.7)(outputs, (8, 8))
  panoptic = strict[common.PRED_PANOPTIC_KEY][0].numpy()
  assert set(np.unique(panoptic[:4]) // DIVISOR) == {4}
  assert set(np.unique(panoptic[4:])) == {VOID}


def test_area_limit_removes_small_things():
  first = np.zeros((8, 8), bool)
  first[:1, :2] = True  # 2 pixels.
  outputs = _two_slot_outputs(first, np.zeros((8, 8), bool),
                              [(0, 0.9), (1, 0.1)])
  kept = max_deeplab.MaskWiseMerging(THINGS, STUFF, DIVISOR, VOID)(
      outputs, (8, 8))
  dropped = max_deeplab.MaskWiseMerging(THINGS, STUFF, DIVISOR, VOID,
                                        thing_area_limit=3)(outputs, (8, 8))
  for result, pixels in ((kept, 2), (dropped, 0)):
    classes = result[common.PRED_PANOPTIC_KEY].numpy() // DIVISOR
    assert (classes == 4).sum() == pixels
    # semantic_pred ignores area limits; semantic_scores, as DeepLab2's, is
    # pasted before them.
    assert (result[common.PRED_SEMANTIC_KEY].numpy()[0][first] == 4).all()
    np.testing.assert_allclose(
        result[common.PRED_SEMANTIC_SCORES_KEY].numpy()[0][first], 0.9,
        atol=1e-6)


def test_no_confident_slot_gives_all_void():
  outputs = _two_slot_outputs(np.ones((8, 8), bool), np.zeros((8, 8), bool),
                              [(0, 0.2), (1, 0.2)])
  result = max_deeplab.MaskWiseMerging(THINGS, STUFF, DIVISOR, VOID)(
      outputs, (8, 8))
  assert (result[common.PRED_PANOPTIC_KEY].numpy() == VOID * DIVISOR).all()
  # No detection: DeepLab2's empty score maps; semantic_pred is still dense.
  for key in (common.PRED_INSTANCE_SCORES_KEY, common.PRED_SEMANTIC_SCORES_KEY):
    assert (result[key].numpy() == 0).all()
  assert (result[common.PRED_SEMANTIC_KEY].numpy() == 4).all()


@pytest.mark.parametrize("seed", range(3))
def test_semantic_pred_is_the_argmax_slot_class_everywhere(seed):
  """DeepLab2's mIoU map: no thresholds, no void, no area limits."""
  rng = np.random.default_rng(seed)
  slots = 6
  mask_logits = (rng.standard_normal((2, 7, 9, slots)) * 3).astype(np.float32)
  class_logits = (rng.standard_normal((2, slots, 5)) * 3).astype(np.float32)
  class_logits[:, 0, -1] = 20.0  # Slot 0 is void-like: never pasted.
  merging = max_deeplab.MaskWiseMerging(
      THINGS, STUFF, DIVISOR, VOID, thing_area_limit=50, stuff_area_limit=50)
  result = merging({common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY: mask_logits,
                    common.PRED_TRANSFORMER_CLASS_LOGITS_KEY: class_logits},
                   (25, 33))
  dense = result[common.PRED_SEMANTIC_KEY].numpy()
  ids = np.array(THINGS + STUFF)
  for b in range(2):
    slot_class = _softmax(class_logits[b])[:, :-1].argmax(-1)
    expected = ids[slot_class[_resize(mask_logits[b], (25, 33)).argmax(-1)]]
    np.testing.assert_array_equal(dense[b], expected)
  assert not (dense == VOID).any()
  # The panoptic map of the same outputs does have void (thresholds, limits).
  assert (result[common.PRED_PANOPTIC_KEY].numpy() // DIVISOR == VOID).any()
