"""Panoptic copy-paste: ids, occlusion, void and classes stay consistent."""

import numpy as np
import pytest
import tensorflow as tf

from deeplab2_kmax.data import copy_paste
from deeplab2_kmax.data import input_pipeline

DIVISOR = 256
VOID = 0
PADDING = VOID * DIVISOR + 1
THINGS = (3, 4)
STUFF = (1, 2)
KWARGS = dict(label_divisor=DIVISOR, ignore_label=VOID, thing_class_ids=THINGS,
              stuff_class_ids=STUFF, padding_id=PADDING)
# The pipeline's default options (DeepLab2's kMaX recipe).
_DEFAULTS = input_pipeline.PipelineOptions(batch_size=1, crop_size=(1, 1))
OPTIONS = dict(thing_option=_DEFAULTS.copy_paste_thing_option,
               stuff_option=_DEFAULTS.copy_paste_stuff_option,
               void_option=_DEFAULTS.copy_paste_void_option)


def _random_panoptic(rng, shape, with_padding):
  values = [VOID * DIVISOR, 1 * DIVISOR, 2 * DIVISOR, 3 * DIVISOR + 1,
            3 * DIVISOR + 2, 4 * DIVISOR + 1, 4 * DIVISOR + 0]  # 4*256: crowd.
  if with_padding:
    values.append(PADDING)
  blocks = rng.choice(values, size=(shape[0] // 4, shape[1] // 4))
  return np.kron(blocks, np.ones((4, 4), np.int64)).astype(np.int32)


def _run(seed):
  rng = np.random.default_rng(seed)
  label = _random_panoptic(rng, (32, 32), with_padding=False)
  source_label = _random_panoptic(rng, (32, 32), with_padding=True)
  image = rng.uniform(0, 255, (32, 32, 3)).astype(np.float32)
  source_image = rng.uniform(0, 255, (32, 32, 3)).astype(np.float32)
  tf_seed = tf.constant([seed, 9], tf.int64)
  mask = copy_paste.paste_mask(tf.constant(source_label[..., None]), tf_seed,
                               **KWARGS, **OPTIONS).numpy()[..., 0]
  out_image, out_label = copy_paste.paste(
      tf.constant(image), tf.constant(label[..., None]),
      tf.constant(source_image), tf.constant(source_label[..., None]),
      tf_seed, **KWARGS, **OPTIONS)
  return (label, source_label, image, source_image, mask,
          out_image.numpy(), out_label.numpy()[..., 0])


def test_paste_mask_takes_all_things_whole_stuff_segments_no_void():
  stuff_subsets = set()
  for seed in range(8):
    _, source, _, _, mask, _, _ = _run(seed)
    classes = source // DIVISOR
    assert np.all(mask[np.isin(classes, THINGS)])
    assert not np.any(mask[source == PADDING])
    assert not np.any(mask[source == VOID * DIVISOR])
    for value in np.unique(source[np.isin(classes, STUFF)]):
      segment = mask[source == value]
      assert segment.all() or not segment.any()  # Whole segments only.
      stuff_subsets.add((seed, int(value), bool(segment.all())))
  pasted = {kept for _, _, kept in stuff_subsets}
  assert pasted == {True, False}  # Stuff is a random subset.


def test_paste_matches_reference_and_keeps_ids_unique():
  for seed in range(8):
    label, source, image, source_image, mask, out_image, out_label = _run(seed)
    # Reference: mirrored source ids where pasted, the canvas elsewhere.
    instance = source % DIVISOR
    mirrored = np.where(instance > 0, DIVISOR - 1 - instance, 0)
    expected = np.where(mask, source // DIVISOR * DIVISOR + mirrored, label)
    np.testing.assert_array_equal(out_label, expected)
    np.testing.assert_array_equal(out_image,
                                  np.where(mask[..., None], source_image,
                                           image))
    # Pasted instances get fresh ids, disjoint from every canvas id.
    pasted_things = {int(v) for v in np.unique(out_label[mask])
                     if v % DIVISOR > 0}
    assert not pasted_things & set(np.unique(label).tolist())
    # Occluded canvas pixels now belong to the paster; others keep their id.
    np.testing.assert_array_equal(out_label[~mask], label[~mask])
    # Void stays void unless pasted over; source void never spreads.
    assert np.all(out_label[(label == VOID * DIVISOR) & ~mask] == VOID)
    assert not np.any(mask & (source == VOID * DIVISOR))
    # Classes stay consistent with the pixels' origin.
    np.testing.assert_array_equal(out_label[mask] // DIVISOR,
                                  source[mask] // DIVISOR)
    # Padding of the source never appears.
    assert not np.any(out_label == PADDING)


def test_instance_ids_at_half_divisor_are_rejected():
  label = tf.fill([4, 4, 1], 3 * DIVISOR + DIVISOR // 2)
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match="label_divisor // 2"):
    copy_paste.paste(tf.zeros([4, 4, 3]), label, tf.zeros([4, 4, 3]), label,
                     tf.constant([0, 0], tf.int64), **KWARGS, **OPTIONS)


def test_options_select_groups():
  rng = np.random.default_rng(3)
  source = _random_panoptic(rng, (32, 32), with_padding=True)
  classes = source // DIVISOR
  for seed in range(4):
    mask = copy_paste.paste_mask(
        tf.constant(source[..., None]), tf.constant([seed, 1], tf.int64),
        thing_option="none", stuff_option="all", void_option="all",
        **KWARGS).numpy()[..., 0]
    assert not np.any(mask[np.isin(classes, THINGS)])
    assert np.all(mask[np.isin(classes, STUFF)])
    assert np.all(mask[source == VOID * DIVISOR])
    assert not np.any(mask[source == PADDING])


def test_unknown_option_is_named():
  with pytest.raises(ValueError, match="stuff option"):
    copy_paste.paste_mask(tf.zeros([2, 2, 1], tf.int32),
                          tf.constant([0, 0], tf.int64),
                          **KWARGS, **dict(OPTIONS, stuff_option="some"))
