"""Tests of geometric preprocessing and training targets."""

import numpy as np
import pytest
import tensorflow as tf

from deeplab2_kmax import common
from deeplab2_kmax.data import input_pipeline
from deeplab2_kmax.data import preprocessing

VOID = 0
BLOCK = 8


def _block_pattern(height, width):
  """Blocks of constant colour; the colour encodes the block's label."""
  rows, cols = np.mgrid[:height, :width] // BLOCK
  block = rows * 64 + cols + 1
  image = np.stack([block % 256, block // 256 * 40, 255 - block % 256],
                   -1).astype(np.float32)
  label = (block * 7).astype(np.int32)  # Arbitrary, nonzero, recoverable.
  return image, label


def _label_from_colour(image):
  block = image[..., 0].astype(np.int64) + 256 * (image[..., 1] // 40).astype(
      np.int64)
  return block * 7


# The pipeline's defaults: no resizing, scale 1, no colour policy, flips.
_DEFAULTS = input_pipeline.PipelineOptions(batch_size=1, crop_size=(1, 1))
_AUGMENT_OPTIONS = ("min_resize_value", "max_resize_value", "resize_factor",
                    "min_scale_factor", "max_scale_factor",
                    "scale_factor_step", "autoaugment_policy", "random_flip")


def _run_augment(image, label, seed, **kwargs):
  options = {name: getattr(_DEFAULTS, name) for name in _AUGMENT_OPTIONS}
  out_image, out_label = preprocessing.augment(
      tf.constant(image), tf.constant(label[..., None]),
      tf.constant([seed, 0], tf.int64), label_pad_value=VOID,
      **dict(options, **kwargs))
  return out_image.numpy(), out_label.numpy()[..., 0]


@pytest.mark.parametrize("image_size,crop", [((40, 56), (32, 32)),
                                             ((24, 20), (40, 48))])
def test_crop_pad_flip_keep_every_pixel_aligned(image_size, crop):
  image, label = _block_pattern(*image_size)
  flips = set()
  for seed in range(10):
    out_image, out_label = _run_augment(image, label, seed, crop_size=crop)
    assert out_image.shape == (*crop, 3)
    padded = out_label == VOID
    np.testing.assert_array_equal(out_image[padded], 127.5)
    np.testing.assert_array_equal(_label_from_colour(out_image[~padded]),
                                  out_label[~padded])
    # Valid pixels form a contiguous window of the original, maybe flipped.
    rows = np.nonzero(~padded.all(1))[0]
    cols = np.nonzero(~padded.all(0))[0]
    window = out_label[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    found = False
    for flipped, source in ((False, label), (True, label[:, ::-1])):
      for top in range(source.shape[0] - window.shape[0] + 1):
        for left in range(source.shape[1] - window.shape[1] + 1):
          if np.array_equal(source[top:top + window.shape[0],
                                   left:left + window.shape[1]], window):
            found = True
            flips.add(flipped)
    assert found
  assert flips == {False, True}


def test_random_scale_keeps_labels_under_their_colours():
  image, label = _block_pattern(48, 64)
  for seed in range(4):
    out_image, out_label = _run_augment(
        image, label, seed, crop_size=(64, 64), min_scale_factor=0.5,
        max_scale_factor=1.5, scale_factor_step=0.25)
    valid = out_label != VOID
    colours = _label_from_colour(out_image)
    # Pixels whose colour is an exact block colour (block interiors) carry
    # that block's label; bilinear seams are the only other pixels.
    exact = valid & np.all(out_image == np.round(out_image), -1) & np.isin(
        colours, np.unique(label))
    assert exact.sum() > 0.6 * valid.sum()
    np.testing.assert_array_equal(colours[exact], out_label[exact])


def _reference_range_size(h, w, min_size, max_size, factor=None):
  """DeepLab2's rule: reach min on both sides, then shrink to fit max."""
  if min_size is not None:
    scale = np.float32(max(min_size / h, min_size / w))
    h, w = int(np.floor(h * scale)), int(np.floor(w * scale))
  if max_size is not None:
    cap = (max_size, max_size) if isinstance(max_size, int) else max_size
    if factor:  # Largest value <= cap of the form k * factor + 1.
      cap = [max(v for v in range(1, c + 1) if (v - 1) % factor == 0)
             for c in cap]
    scale = np.float32(min(cap[0] / h, cap[1] / w, 1.0))
    h, w = int(np.floor(h * scale)), int(np.floor(w * scale))
  if factor:  # Smallest value >= side of the form k * factor + 1.
    h, w = [min(v for v in range(s, s + factor) if (v - 1) % factor == 0)
            for s in (h, w)]
  return h, w


def test_resize_to_range_matches_reference_sizes():
  for (h, w), min_size, max_size in [((30, 50), 40, None),
                                     ((30, 50), None, 40),
                                     ((30, 50), None, 80),
                                     ((30, 50), 40, 60),
                                     ((375, 500), 1281, 1281),
                                     ((50, 30), 20, (16, 100))]:
    for factor in (None, 8):
      out, _ = preprocessing.resize_to_range(tf.zeros([h, w, 3]), None,
                                             min_size, max_size, factor)
      assert tuple(out.shape[:2]) == _reference_range_size(
          h, w, min_size, max_size, factor)


def test_random_scale_factor_draws_the_discrete_steps():
  draws = {round(float(preprocessing.random_scale_factor(
      tf.constant([s, 1], tf.int64), 0.3, 1.7, 0.1)), 5) for s in range(300)}
  assert draws == {round(0.3 + 0.1 * k, 5) for k in range(15)}


def test_eval_pads_small_images_top_left_without_resizing():
  image, label = _block_pattern(20, 30)
  out_image, out_label = preprocessing.eval_resize_and_pad(
      tf.constant(image), tf.constant(label[..., None]), crop_size=(32, 40),
      label_pad_value=VOID)
  out_image, out_label = out_image.numpy(), out_label.numpy()[..., 0]
  np.testing.assert_array_equal(out_image[:20, :30], image)
  np.testing.assert_array_equal(out_label[:20, :30], label)
  assert np.all(out_image[20:] == 127.5) and np.all(out_image[:, 30:] == 127.5)
  assert np.all(out_label[20:] == VOID) and np.all(out_label[:, 30:] == VOID)


def _reference_targets(panoptic, divisor, ignore, has_instances, max_things,
                       small_area, small_weight):
  semantic = panoptic // divisor
  thing_mask = np.full(panoptic.shape, -1)
  classes = []
  weight = np.ones(panoptic.shape, np.float32)
  seen = []
  for value in panoptic.ravel():  # First appearance in raster order.
    if value not in seen:
      seen.append(value)
  for value in seen:
    cls, inst = value // divisor, value % divisor
    if cls == ignore or not has_instances[cls] or inst == 0:
      continue
    region = panoptic == value
    thing_mask[region] = len(classes)
    classes.append(cls)
    if region.sum() < small_area:
      weight[region] = small_weight
  return semantic, thing_mask, classes + [-1] * (max_things - len(classes)), \
      weight


@pytest.mark.parametrize("divisor,ignore", [(100, 0), (1000, 5)])
def test_panoptic_targets_match_numpy_reference(divisor, ignore):
  rng = np.random.default_rng(divisor)
  # Classes 0..4 (class 5 = void when ignore is 5, as Cityscapes' 255).
  has_instances = (False, False, False, True, True)
  values = [ignore * divisor, 1 * divisor, 2 * divisor, 3 * divisor,
            3 * divisor + 1, 3 * divisor + 2, 4 * divisor, 4 * divisor + 1,
            4 * divisor + 2]  # 3 * divisor, 4 * divisor: crowd regions.
  blocks = rng.choice(values, size=(6, 8))
  panoptic = np.kron(blocks, np.ones((3, 2), np.int64)).astype(np.int32)
  panoptic[rng.random(panoptic.shape) < 0.1] = 4 * divisor + 2  # Scattered.
  targets = preprocessing.panoptic_targets(
      tf.constant(panoptic), num_classes=5, ignore_label=ignore,
      label_divisor=divisor, class_has_instances=has_instances,
      max_thing_id=10, small_instance_area=8, small_instance_weight=3.0)
  semantic, thing_mask, classes, weight = _reference_targets(
      panoptic, divisor, ignore, has_instances + (False,), 10, 8, 3.0)
  np.testing.assert_array_equal(targets[common.GT_SEMANTIC_KEY], semantic)
  np.testing.assert_array_equal(targets[common.GT_PANOPTIC_KEY], panoptic)
  np.testing.assert_array_equal(targets[common.GT_THING_ID_MASK_KEY],
                                thing_mask)
  np.testing.assert_array_equal(targets[common.GT_THING_ID_CLASS_KEY], classes)
  np.testing.assert_allclose(targets[common.SEMANTIC_LOSS_WEIGHT_KEY], weight)


def test_panoptic_targets_reject_too_many_things():
  panoptic = tf.constant([[300, 301, 302, 303]], tf.int32)
  with pytest.raises(tf.errors.InvalidArgumentError, match="max_thing_id"):
    preprocessing.panoptic_targets(
        panoptic, num_classes=4, ignore_label=0, label_divisor=100,
        class_has_instances=(False, False, False, True), max_thing_id=2,
        small_instance_area=0, small_instance_weight=1.0)


def test_eval_shrinks_large_images_to_fit_the_crop():
  image, label = _block_pattern(48, 64)
  out_image, out_label = preprocessing.eval_resize_and_pad(
      tf.constant(image), tf.constant(label[..., None]), crop_size=(33, 33),
      label_pad_value=VOID)
  h, w = _reference_range_size(48, 64, None, (33, 33))
  out_label = out_label.numpy()[..., 0]
  assert np.all(out_label[:h, :w] != VOID) and np.all(out_label[h:] == VOID)
  # Nearest neighbour with aligned corners: source = round(i * (n-1)/(m-1)).
  rows = np.floor(np.arange(h, dtype=np.float32) * np.float32(47 / (h - 1))
                  + 0.5).astype(int)
  cols = np.floor(np.arange(w, dtype=np.float32) * np.float32(63 / (w - 1))
                  + 0.5).astype(int)
  np.testing.assert_array_equal(out_label[:h, :w], label[rows][:, cols])
  assert out_image.shape == (33, 33, 3)


def test_no_flip_when_disabled():
  image, label = _block_pattern(16, 16)
  for seed in range(6):
    _, out_label = _run_augment(image, label, seed, crop_size=(16, 16),
                                random_flip=False)
    np.testing.assert_array_equal(out_label, label)
