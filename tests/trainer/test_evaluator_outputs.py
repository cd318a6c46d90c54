"""What the evaluator saves: num_vis_samples renderings and raw predictions.

The colour-coded stand-in model and dataset of test_evaluator_original_size
(predictions equal to the ground truth up to borders). The raw files are
decoded here with DeepLab2's format definitions and compared with the maps
the evaluator scored.
"""

import os

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf
import test_evaluator_original_size as colour_coded
import trainer_test_utils as utils

from deeplab2_kmax import builders
from deeplab2_kmax import common
from deeplab2_kmax import config_loader
from deeplab2_kmax.trainer import evaluator as evaluator_lib

_CROP = 33


def _run(directory, **options):
  """Evaluates with evaluator `options`; returns {name: scored maps}, dir."""
  config = utils.tiny_config(directory, crop=_CROP)
  dataset = config.eval_dataset_options
  dataset.file_pattern[:] = [os.path.join(directory, "val.tfrecord")]
  dataset.batch_size = 3
  dataset.min_resize_value[:] = [_CROP]
  dataset.max_resize_value[:] = [_CROP]
  evaluator_options = config.evaluator_options
  evaluator_options.override_save_dir = os.path.join(directory, "out")
  evaluator_options.convert_raw_to_eval_ids = False  # Synthetic data.
  for name, value in options.items():
    setattr(evaluator_options, name, value)
  config_loader.validate(config)
  info = builders.dataset_info(config)
  evaluator = evaluator_lib.KMaXEvaluator(
      config, colour_coded._ColourCodedModel(info),  # pylint: disable=protected-access
      builders.build_post_processor(config),
      builders.build_dataset(config, training=False),
      tf.distribute.get_strategy(), info)
  scored = {}
  score = evaluator._score  # pylint: disable=protected-access

  def recording_score(gt, maps, name):
    scored[name] = maps
    score(gt, maps, name)

  evaluator._score = recording_score  # pylint: disable=protected-access
  evaluator.evaluate(tf.constant(-1))
  return scored, evaluator_options.override_save_dir


def _decode(path):
  """(class map, instance map) of a raw panoptic file, DeepLab2's formats."""
  if path.endswith(".npy"):
    array = np.load(path)
    return array[..., 0], array[..., 1]
  rgb = np.asarray(Image.open(path), np.int64)
  return rgb[..., 0], rgb[..., 1] * 256 + rgb[..., 2]  # Three channels.


def _check_raw(save_dir, scored, extension):
  assert len(scored) == len(colour_coded.SIZES)
  for name, maps in scored.items():
    semantic = np.asarray(Image.open(
        os.path.join(save_dir, "raw_semantic", name + ".png")))
    np.testing.assert_array_equal(semantic,
                                  maps[common.PRED_SEMANTIC_KEY])
    classes, instances = _decode(
        os.path.join(save_dir, "raw_panoptic", name + extension))
    np.testing.assert_array_equal(classes * 256 + instances,
                                  maps[common.PRED_PANOPTIC_KEY])


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  directory = str(tmp_path_factory.mktemp("colour_coded"))
  colour_coded._write_dataset(directory)  # pylint: disable=protected-access
  return directory


def test_visualisations_and_three_channel_raw_files(data_dir):
  scored, save_dir = _run(data_dir, save_predictions=True, num_vis_samples=3,
                          save_raw_predictions=True,
                          raw_panoptic_format="three_channel_png")
  _check_raw(save_dir, scored, ".png")
  vis_dir = os.path.join(save_dir, "vis_step0")
  assert sorted(os.listdir(vis_dir)) == [
      f"{index:06d}_image_{index}.png" for index in range(3)]
  for index in range(3):
    height, width = colour_coded.SIZES[index]
    strip = np.asarray(Image.open(
        os.path.join(vis_dir, f"{index:06d}_image_{index}.png")), np.int64)
    assert strip.shape[:2] == (height, 3 * width + 8)
    image, truth, prediction = (strip[:, i * (width + 4):i * (width + 4) +
                                      width] for i in range(3))
    slots = colour_coded._ground_truth(height, width)  # pylint: disable=protected-access
    red = slots * colour_coded.COLOUR_STEP
    # The input image (resampled twice: exact away from segment borders).
    assert np.mean(np.abs(image[..., 0] - red) < 1) > 0.7
    assert np.mean(np.abs(image[..., 0] - red)) < 20
    assert np.all(image[..., 1:] == 0)
    # Stuff (slots 0, 1: no instance colour jitter) looks the same in the
    # ground truth and the (right) prediction; both overlay the image.
    stuff = slots <= 1
    assert np.mean(np.all(truth == prediction, -1)[stuff]) > 0.85
    for panel in (truth, prediction):
      assert np.mean(np.all(panel == image, -1)) < 0.2
  assert os.path.exists(os.path.join(save_dir, "predictions_step0.json"))


def test_raw_only_as_numpy_arrays(tmp_path, data_dir):
  del tmp_path
  scored, save_dir = _run(data_dir, save_raw_predictions=True,
                          raw_panoptic_format="two_channel_numpy_array",
                          override_save_dir=os.path.join(data_dir, "raw"))
  _check_raw(save_dir, scored, ".npy")
  assert sorted(os.listdir(save_dir)) == ["raw_panoptic", "raw_semantic"]


def test_no_saving_options_no_files(data_dir):
  _, save_dir = _run(data_dir, num_vis_samples=5,
                     override_save_dir=os.path.join(data_dir, "none"))
  assert not os.path.exists(save_dir)


def test_scored_maps_mean_what_deeplab2s_keys_mean(data_dir):
  """semantic_pred: every pixel's slot class; the score maps not swapped.

  The stand-in model's slots have class logit 6 (0 elsewhere) and one-hot
  mask logits 10, so the class confidence is e^6 / (e^6 + number of classes)
  and the max mask probability e^10 / (e^10 + slots - 1) on every pixel.
  """
  scored, _ = _run(data_dir, override_save_dir=os.path.join(data_dir, "keys"))
  info = builders.dataset_info(utils.tiny_config(data_dir, crop=_CROP))
  num_classes = sum(len(ids) for ids in builders.class_ids(info))
  class_confidence = np.exp(6.0) / (np.exp(6.0) + num_classes)
  mask_probability = np.exp(10.0) / (
      np.exp(10.0) + len(colour_coded.SLOT_IDS) - 1)
  voids = 0
  for maps in scored.values():
    assert sorted(maps) == sorted([
        common.PRED_PANOPTIC_KEY, common.PRED_SEMANTIC_KEY,
        common.PRED_SEMANTIC_SCORES_KEY, common.PRED_INSTANCE_SCORES_KEY])
    panoptic = maps[common.PRED_PANOPTIC_KEY]
    segments = panoptic // 256 != info.ignore_label
    voids += (~segments).sum()
    semantic = maps[common.PRED_SEMANTIC_KEY]
    assert not (semantic == info.ignore_label).any()  # Threshold-free.
    np.testing.assert_array_equal(semantic[segments],
                                  panoptic[segments] // 256)
    np.testing.assert_allclose(maps[common.PRED_SEMANTIC_SCORES_KEY][segments],
                               class_confidence, rtol=1e-5)
    np.testing.assert_allclose(maps[common.PRED_INSTANCE_SCORES_KEY],
                               mask_probability, rtol=1e-5)
  assert voids > 0  # The void strip (a void-class slot) is void.
