"""Predictions at the eval crop -> the original image, against NumPy."""

import numpy as np
import pytest
import tensorflow as tf

from deeplab2_kmax import common
from deeplab2_kmax.data import preprocessing
from deeplab2_kmax.post_processing import undo_preprocessing


def _nearest_aligned_rows(source: int, target: int) -> np.ndarray:
  """Nearest source index per target index, corners aligned (TF1 rule)."""
  if target == 1:
    return np.zeros(1, int)
  scale = np.float32((source - 1) / (target - 1))
  index = np.floor(np.arange(target, dtype=np.float32) * scale +
                   np.float32(0.5)).astype(int)
  return np.minimum(index, source - 1)


def _reference(crop_map, resized, original):
  valid = crop_map[:resized[0], :resized[1]]
  rows = _nearest_aligned_rows(resized[0], original[0])
  cols = _nearest_aligned_rows(resized[1], original[1])
  return valid[rows][:, cols]


# (resized, original): up- and down-sampling, portrait and landscape, the
# identity (pad only) and a single row.
@pytest.mark.parametrize("resized,original", [
    ((23, 33), (20, 28)), ((33, 17), (26, 14)), ((23, 33), (50, 70)),
    ((33, 20), (70, 44)), ((20, 28), (20, 28)), ((1, 33), (1, 50))])
def test_crop_then_nearest_resize_matches_numpy(resized, original):
  rng = np.random.default_rng(sum(resized) + sum(original))
  labels = rng.integers(0, 1000, (2, 33, 33)).astype(np.int32)
  scores = rng.random((2, 33, 33)).astype(np.float32)
  maps = undo_preprocessing.to_original_size(
      {common.PRED_PANOPTIC_KEY: labels,
       common.PRED_INSTANCE_SCORES_KEY: scores}, resized, original)
  for key, source in ((common.PRED_PANOPTIC_KEY, labels),
                      (common.PRED_INSTANCE_SCORES_KEY, scores)):
    assert maps[key].dtype == source.dtype
    assert maps[key].shape == (2, *original)
    for b in range(2):
      np.testing.assert_array_equal(maps[key][b].numpy(),
                                    _reference(source[b], resized, original))


@pytest.mark.parametrize("original", [(11, 6), (6, 11), (17, 17)])
def test_undo_inverts_the_eval_label_preprocessing(original):
  """Pad-only: exact. Upsampling by (n - 1) / (m - 1) = 1 / 2: exact too."""
  rng = np.random.default_rng(original[0])
  label = rng.integers(0, 50, original).astype(np.int32)
  for crop, bounds in (((20, 20), {}),  # Pad only.
                       ((21, 21), {"min_resize_value": 21,
                                   "max_resize_value": 21})):
    if bounds and max(original) != 11:
      continue  # Long side 11 -> 21 is the exact 2x aligned-corner scale.
    _, padded = preprocessing.eval_resize_and_pad(
        tf.zeros([*original, 3]), tf.constant(label[..., None]),
        crop_size=crop, label_pad_value=-1, **bounds)
    resized = preprocessing.eval_resized_size(original, crop_size=crop,
                                              **bounds)
    back = undo_preprocessing.to_original_size(
        {common.PRED_PANOPTIC_KEY: padded[None, ..., 0]}, resized, original)
    np.testing.assert_array_equal(back[common.PRED_PANOPTIC_KEY][0], label)


def test_runs_in_a_graph_with_dynamic_sizes():
  fn = tf.function(undo_preprocessing.to_original_size, input_signature=[
      {common.PRED_PANOPTIC_KEY: tf.TensorSpec([None, 9, 9], tf.int32)},
      tf.TensorSpec([2], tf.int32), tf.TensorSpec([2], tf.int32)])
  out = fn({common.PRED_PANOPTIC_KEY: tf.ones([1, 9, 9], tf.int32)},
           tf.constant([5, 9]), tf.constant([10, 17]))
  assert out[common.PRED_PANOPTIC_KEY].shape == (1, 10, 17)
