"""ONNX (onnxruntime) and TFLite (LiteRT) exports against the SavedModel's.

The reference is the SavedModel's own serving function
(`export_lib.serving_module(...).serve`, the graph `serving_default` saves,
run unsaved: saving it again would only repeat tests/trainer's export test).
The tiny model is sharpened (mask batch-norm gamma 20, no class threshold)
so that it predicts several segments of several classes, and the area limits
drop some of them: equal maps are then not a coincidence of all-void output.
"""

import os
import sys

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "trainer"))
import trainer_test_utils as utils  # noqa: E402

from deeplab2_kmax import builders  # noqa: E402
from deeplab2_kmax import common  # noqa: E402
from deeplab2_kmax.data import preprocessing  # noqa: E402
from deeplab2_kmax.data import synthetic  # noqa: E402
from deeplab2_kmax.post_processing import max_deeplab  # noqa: E402
from deeplab2_kmax.trainer import export_formats  # noqa: E402
from deeplab2_kmax.trainer import export_lib  # noqa: E402

_LABEL_MAPS = (common.PRED_PANOPTIC_KEY, common.PRED_SEMANTIC_KEY,
               common.PRED_INSTANCE_KEY)
_SCORE_MAPS = (common.PRED_INSTANCE_SCORES_KEY,
               common.PRED_SEMANTIC_SCORES_KEY)


def _sharp_config():
  config = utils.tiny_config("/nonexistent")
  evaluator = config.evaluator_options
  evaluator.maskwise_postprocessing.transformer_class_confidence_threshold_thing = 0.0  # noqa: E501
  evaluator.maskwise_postprocessing.transformer_class_confidence_threshold_stuff = 0.0  # noqa: E501
  evaluator.thing_area_limit = 20
  evaluator.stuff_area_limit = 40
  return config


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  """(config, model, {format: ExportedModel}) for a sharpened tiny model."""
  config = _sharp_config()
  # tf_keras' own seed (not Keras 3's): its initialisers draw from it, so the
  # weights do not depend on the tests that ran before in this process.
  tf_keras.utils.set_random_seed(0)
  model = builders.build_model(config, crop_size=(64, 64))
  gamma = [v for v in model.variables if v.name.startswith(
      "kmax_deeplab/max_deeplab_head/pixel_space_mask_batch_norm/gamma")]
  assert len(gamma) == 1
  gamma[0].assign([20.0])
  runners = {}
  for fmt in ("onnx", "tflite"):
    path = str(tmp_path_factory.mktemp(fmt) / "export")
    export_formats.export_from_model(model, config, path, fmt)
    runners[fmt] = export_formats.ExportedModel(path, num_threads=1)
  return config, model, runners


def _images():
  """Synthetic val images at three sizes: the crop, wider, taller."""
  return [synthetic.generate(0, "val", 0, image_size=64).image,
          synthetic.generate(0, "val", 1, image_size=96).image[:50],
          synthetic.generate(0, "val", 2, image_size=96).image[:, :40]]


@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_maps_equal_the_saved_model_signature(exported, fmt):
  config, model, runners = exported
  module = export_lib.serving_module(model, config)  # Kept: .serve needs it.
  bounds = dict(export_lib.resize_options(config.eval_dataset_options,
                                          (64, 64)), crop_size=(64, 64))
  dropped = 0
  all_segments = set()
  for image in _images():
    expected = {k: v.numpy()
                for k, v in module.serve(tf.constant(image)).items()}
    got = runners[fmt](image)
    for key in _LABEL_MAPS:
      assert got[key].shape == expected[key].shape == (1,) + image.shape[:2]
      agreement = np.mean(got[key] == expected[key])
      assert agreement >= 0.999, (key, agreement)
    for key in _SCORE_MAPS:
      np.testing.assert_allclose(got[key], expected[key], atol=1e-4,
                                 err_msg=key)
    # Several segments and classes: the comparison is not trivially void.
    segments = np.unique(expected[common.PRED_PANOPTIC_KEY])
    assert len(segments) > 1, segments
    all_segments.update(segments.tolist())
    # The raw logits agree with the library model's on the same input.
    padded = preprocessing.eval_resize_and_pad(
        tf.constant(image, tf.float32), None, label_pad_value=0,
        **bounds)[0][tf.newaxis]
    reference = model(padded, training=False)
    at_crop = runners[fmt].network(padded.numpy())
    for key in export_formats.RAW_KEYS:
      np.testing.assert_allclose(at_crop[key], reference[key].numpy(),
                                 atol=1e-3, rtol=1e-3, err_msg=key)
    unlimited = max_deeplab.MaskWiseMerging(**dict(
        builders.post_processor_kwargs(config), thing_area_limit=0,
        stuff_area_limit=0))(reference, (64, 64))
    dropped += np.sum(unlimited[common.PRED_PANOPTIC_KEY].numpy() !=
                      at_crop[common.PRED_PANOPTIC_KEY])
  assert dropped > 0  # The area limits applied (in the graph or on the host).
  assert len(all_segments) >= 4, all_segments  # Void and 3 classes at least.


def test_host_area_limits_equal_the_merging_in_the_graph():
  """`apply_area_limits` (NumPy) against `MaskWiseMerging`'s own limits."""
  config = _sharp_config()
  # Limits within the range of the segments' areas (about 90 to 780 px).
  kwargs = dict(builders.post_processor_kwargs(config), thing_area_limit=160,
                stuff_area_limit=200)
  rng = np.random.default_rng(0)
  outputs = {
      common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY: tf.constant(
          rng.normal(0, 6, (2, 16, 16, 12)).astype(np.float32)),
      common.PRED_TRANSFORMER_CLASS_LOGITS_KEY: tf.constant(
          rng.normal(0, 3, (2, 12, 9)).astype(np.float32))}
  with_limits = max_deeplab.MaskWiseMerging(**kwargs)(outputs, (48, 48))
  without = max_deeplab.MaskWiseMerging(**dict(
      kwargs, thing_area_limit=0, stuff_area_limit=0))(outputs, (48, 48))
  without = {k: v.numpy() for k, v in without.items()}
  limited = export_formats.apply_area_limits(
      without, thing_area_limit=160, stuff_area_limit=200,
      label_divisor=kwargs["label_divisor"], void_label=kwargs["void_label"])
  for key in (common.PRED_PANOPTIC_KEY, common.PRED_INSTANCE_KEY):
    np.testing.assert_array_equal(limited[key], with_limits[key].numpy(),
                                  err_msg=key)
  changed = limited[common.PRED_PANOPTIC_KEY] != without[
      common.PRED_PANOPTIC_KEY]
  assert changed.any() and not changed.all()
  assert len(np.unique(limited[common.PRED_PANOPTIC_KEY])) > 3


def test_exports_declare_their_fixed_input_and_reject_bad_images(exported):
  _, _, runners = exported
  for fmt, runner in runners.items():
    assert runner.info["input"]["shape"] == [1, 64, 64, 3], fmt
    assert runner.info["area_limits_in_graph"] == (fmt == "onnx")
    with pytest.raises(ValueError, match=r"uint8 \[H, W, 3\].*\(8, 8, 4\)"):
      runner(np.zeros((8, 8, 4), np.uint8))
    with pytest.raises(ValueError, match=r"uint8 \[H, W, 3\].*got float32"):
      runner(np.zeros((8, 8, 3), np.float32))
  import onnxruntime  # pylint: disable=g-import-not-at-top

  session = onnxruntime.InferenceSession(
      os.path.join(runners["onnx"].export_dir, "model.onnx"),
      providers=["CPUExecutionProvider"])
  assert session.get_inputs()[0].shape == [1, 64, 64, 3]


def test_unknown_format_and_existing_output_are_named(tmp_path):
  config = _sharp_config()
  with pytest.raises(export_lib.ExportError, match="--format 'pt'"):
    export_formats.export(config, "/nowhere/ckpt-1", str(tmp_path), "pt")
  (tmp_path / "taken").mkdir()
  (tmp_path / "taken" / "x").write_text("x")
  with pytest.raises(export_lib.ExportError, match="refusing to overwrite"):
    export_formats.export(config, "/nowhere/ckpt-1", str(tmp_path / "taken"),
                          "onnx")
  with pytest.raises(export_lib.ExportError, match="--checkpoint_path"):
    export_formats.export(config, "/nowhere/ckpt-1", str(tmp_path / "new"),
                          "tflite")
