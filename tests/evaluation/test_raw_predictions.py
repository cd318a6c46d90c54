"""DeepLab2's raw prediction files: formats, limits, Cityscapes eval ids."""

import numpy as np
from PIL import Image
import pytest

from deeplab2_kmax.evaluation import raw_predictions
from deeplab2_kmax.evaluation import writers

labels = pytest.importorskip("cityscapesscripts.helpers.labels")

_DIVISOR = 1000
_PANOPTIC = np.array([[11 * _DIVISOR + 300, 11 * _DIVISOR + 7],
                      [255 * _DIVISOR, 3 * _DIVISOR]])


def test_two_channel_png_is_class_and_instance():
  panoptic = np.array([[2 * 256 + 5, 0], [7 * 256 + 255, 7 * 256 + 1]])
  encoded = raw_predictions.encode_panoptic(panoptic, 256, "two_channel_png")
  assert encoded.dtype == np.uint8 and encoded.shape == (2, 2, 3)
  np.testing.assert_array_equal(encoded[..., 0], [[2, 0], [7, 7]])
  np.testing.assert_array_equal(encoded[..., 1], [[5, 0], [255, 1]])
  np.testing.assert_array_equal(encoded[..., 2], 0)


def test_three_channel_png_and_numpy_hold_large_instances():
  three = raw_predictions.encode_panoptic(_PANOPTIC, _DIVISOR,
                                          "three_channel_png")
  three = three.astype(np.int64)
  np.testing.assert_array_equal(three[..., 1] * 256 + three[..., 2],
                                [[300, 7], [0, 0]])
  array = raw_predictions.encode_panoptic(_PANOPTIC, _DIVISOR,
                                          "two_channel_numpy_array")
  assert array.dtype == np.int32
  np.testing.assert_array_equal(array[..., 0] * _DIVISOR + array[..., 1],
                                _PANOPTIC)


def test_limits_and_unknown_formats_are_clear_errors():
  with pytest.raises(ValueError, match="two_channel_png.*instance id 300"):
    raw_predictions.encode_panoptic(_PANOPTIC, _DIVISOR, "two_channel_png")
  with pytest.raises(ValueError, match="class id 300"):
    raw_predictions.encode_panoptic(np.array([[300 * 256]]), 256,
                                    "three_channel_png")
  with pytest.raises(ValueError, match="raw_panoptic_format 'jpeg'"):
    raw_predictions.encode_panoptic(_PANOPTIC, _DIVISOR, "jpeg")


def test_cityscapes_eval_ids_are_cityscapesscripts_label_ids(tmp_path):
  writer = raw_predictions.RawPredictionWriter(
      str(tmp_path), _DIVISOR, "three_channel_png",
      writers.CITYSCAPES_TRAIN_ID_TO_LABEL_ID)
  semantic = np.arange(20).reshape(4, 5)
  semantic[-1, -1] = 255  # Void: DeepLab2 writes 0.
  semantic_path, panoptic_path = writer.add("frankfurt/f_000294_left.png",
                                            _PANOPTIC, semantic)
  assert semantic_path == str(tmp_path / "raw_semantic" / "f_000294_left.png")
  expected = np.array([labels.trainId2label[t].id if t < 19 else 0
                       for t in semantic.ravel()]).reshape(semantic.shape)
  np.testing.assert_array_equal(np.asarray(Image.open(semantic_path)),
                                expected)
  panoptic = np.asarray(Image.open(panoptic_path), np.int64)
  np.testing.assert_array_equal(
      panoptic[..., 0], [[labels.trainId2label[11].id] * 2,
                         [0, labels.trainId2label[3].id]])
  np.testing.assert_array_equal(panoptic[..., 1] * 256 + panoptic[..., 2],
                                _PANOPTIC % _DIVISOR)
