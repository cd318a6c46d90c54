"""Training, exact resume, evaluation and SavedModel export (SPEC §6, §8)."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf
import trainer_test_utils as utils

from deeplab2_kmax import builders
from deeplab2_kmax.data import input_pipeline
from deeplab2_kmax.data import preprocessing
from deeplab2_kmax.data import tfrecord
from deeplab2_kmax.post_processing import undo_preprocessing
from deeplab2_kmax.trainer import export_lib
from deeplab2_kmax.trainer import train_lib


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return utils.tiny_data(str(tmp_path_factory.mktemp("synthetic")))


def test_train_resume_evaluate_export(data_dir, tmp_path):
  model_dir = str(tmp_path / "model")
  config = utils.lean_config(data_dir, steps=2)
  train_lib.run_experiment(config, model_dir, "train")
  assert train_lib.latest_checkpoint(model_dir).endswith("ckpt-2")
  first = tf.train.load_checkpoint(train_lib.latest_checkpoint(model_dir))

  # Same command with a later last step: resumes at step 2, not from 0.
  config = _resized_eval_config(data_dir, steps=4)
  metrics = train_lib.run_experiment(config, model_dir, "train_and_eval")
  # COCO-panoptic predictions, evaluable against the dataset's COCO GT.
  from deeplab2_kmax.evaluation import evaluate_panoptic  # pylint: disable=g-import-not-at-top
  offline = evaluate_panoptic.evaluate(
      os.path.join(data_dir, "panoptic_val.json"),
      os.path.join(data_dir, "panoptic_val"),
      os.path.join(model_dir, "predictions_step4.json"),
      os.path.join(model_dir, "predictions_step4"), progress=False)
  assert offline["summary"]["PQ"] == pytest.approx(metrics["PQ"], abs=1e-6)
  assert train_lib.latest_checkpoint(model_dir).endswith("ckpt-4")
  reader = tf.train.load_checkpoint(train_lib.latest_checkpoint(model_dir))
  assert reader.get_tensor("global_step/.ATTRIBUTES/VARIABLE_VALUE") == 4
  assert first.get_tensor("global_step/.ATTRIBUTES/VARIABLE_VALUE") == 2
  # Optimiser slots are checkpointed (exact resume), for both optimisers.
  names = reader.get_variable_to_shape_map()
  assert any(k.startswith("optimizer/") for k in names)
  assert any(k.startswith("backbone_optimizer/") for k in names)
  for key in ("PQ", "PQ_Th", "PQ_St", "mIoU", "AP_Mask"):
    assert 0.0 <= metrics[key] <= 1.0

  saved = str(tmp_path / "saved_model")
  export_lib.export(config, train_lib.latest_checkpoint(model_dir), saved)
  with pytest.raises(export_lib.ExportError, match="refusing to overwrite"):
    export_lib.export(config, train_lib.latest_checkpoint(model_dir), saved)
  _check_served_predictions(config, model_dir, data_dir, saved, tmp_path)


def _resized_eval_config(data_dir, steps):
  """The lean config; eval and export resize the 64 x 64 images to 48 x 48.

  The 48 x 48 image sits in the 64 x 64 crop; predictions are mapped back to
  64 x 64. Segments even after 4 steps: every slot confident, pixels above the uniform
  probability 1 / 8 (so every pixel is in a mask), no overlap or area limit.
  """
  config = utils.lean_config(data_dir, steps=steps)
  config.evaluator_options.save_predictions = True
  config.eval_dataset_options.min_resize_value[:] = [48]
  config.eval_dataset_options.max_resize_value[:] = [48]
  utils.accept_every_segment(config)
  return config


def _check_served_predictions(config, model_dir, data_dir, saved, tmp_path):
  """The SavedModel, in a process without the library, against the library."""

  # In-library reference on the same image, preprocessed the same way.
  model = builders.build_model(config, crop_size=(64, 64))
  tf.train.Checkpoint(model=model).restore(
      train_lib.latest_checkpoint(model_dir)).expect_partial()
  post = builders.build_post_processor(config)
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (40, 90, 3)).astype(np.uint8)
  bounds = dict(crop_size=(64, 64), min_resize_value=48, max_resize_value=48)
  padded, _ = preprocessing.eval_resize_and_pad(
      tf.constant(image, tf.float32), None, label_pad_value=0, **bounds)
  expected = undo_preprocessing.to_original_size(
      post(model(padded[None], training=False), (64, 64)),
      preprocessing.eval_resized_size((40, 90), **bounds), (40, 90))
  np.save(tmp_path / "image.npy", image)
  val_image = _first_val_image(data_dir)
  np.save(tmp_path / "val.npy", val_image["image"])

  # A fresh process that never imports deeplab2_kmax.
  script = textwrap.dedent(f"""
      import json, sys, numpy as np, tensorflow as tf
      assert "deeplab2_kmax" not in sys.modules
      model = tf.saved_model.load({saved!r})
      serve = model.signatures["serving_default"]
      image = np.load({str(tmp_path / "image.npy")!r})
      out = serve(image=tf.constant(image))
      np.savez({str(tmp_path / "out.npz")!r},
               **{{k: v.numpy() for k, v in out.items()}})
      val = serve(image=tf.constant(np.load({str(tmp_path / "val.npy")!r})))
      np.save({str(tmp_path / "val_pan.npy")!r}, val["panoptic_pred"].numpy())
      odd = serve(image=tf.constant(np.zeros((97, 131, 3), np.uint8)))
      wide = serve(image=tf.constant(np.zeros((200, 60, 3), np.uint8)))
      print(json.dumps({{k: list(v.shape) for k, v in odd.items()}}))
      print(json.dumps({{"wide": list(wide["panoptic_pred"].shape),
                         "dtype": odd["panoptic_pred"].dtype.name}}))
      assert "deeplab2_kmax" not in sys.modules
  """)
  result = subprocess.run([sys.executable, "-c", script], capture_output=True,
                          text=True, check=True)
  shapes, extra = [json.loads(line) for line in result.stdout.splitlines()[-2:]]
  # DeepLab2's kMaX-DeepLab keys, plus the cluster assignments.
  maps = ["panoptic_pred", "semantic_pred", "instance_pred", "instance_scores",
          "semantic_scores"]
  assert sorted(shapes) == sorted(maps + ["cluster_assignments"])
  for key in maps:
    assert shapes[key] == [1, 97, 131], key
  num_kmax_layers = sum(
      config.model_options.max_deeplab.transformer_decoder.num_blocks)
  assert shapes["cluster_assignments"][:2] == [1, num_kmax_layers]
  assert extra == {"wide": [1, 200, 60], "dtype": "int32"}
  with np.load(tmp_path / "out.npz") as served:
    for key in maps:
      np.testing.assert_allclose(served[key], expected[key], rtol=0,
                                 atol=1e-5, err_msg=key)
      assert served[key].dtype == expected[key].dtype, key
  # The SavedModel on an original val image gives the evaluator's saved
  # prediction: the same segments (the PNG numbers them 1..n), but for
  # pixels a batch-size rounding difference may flip at a threshold.
  saved = np.asarray(Image.open(os.path.join(
      model_dir, "predictions_step4", val_image["name"] + ".png")), np.int64)
  saved_ids = saved[..., 0] + 256 * saved[..., 1] + 65536 * saved[..., 2]
  served_ids = np.load(tmp_path / "val_pan.npy")[0]
  assert saved_ids.shape == served_ids.shape == val_image["image"].shape[:2]
  pairs, counts = np.unique(np.stack([saved_ids.ravel(), served_ids.ravel()]),
                            axis=1, return_counts=True)
  agreeing = sum(counts[pairs[0] == i].max() for i in np.unique(pairs[0]))
  assert agreeing >= 0.99 * saved_ids.size
  assert len(np.unique(saved_ids)) > 1


def _first_val_image(data_dir):
  record = next(iter(tf.data.TFRecordDataset(
      input_pipeline.list_files(os.path.join(data_dir, "val-*.tfrecord")))))
  example = tfrecord.decode_example(record)
  return {"image": example["image"].numpy(),
          "name": example["name"].numpy().decode()}


def test_missing_data_and_bad_model_dir_are_named(tmp_path):
  config = utils.tiny_config(str(tmp_path / "nowhere"))
  with pytest.raises(train_lib.ExperimentError,
                     match="train_dataset_options.file_pattern"):
    train_lib.run_experiment(config, str(tmp_path / "model"), "train")
  blocker = tmp_path / "file"
  blocker.write_text("x")
  with pytest.raises(train_lib.ExperimentError, match="model_dir"):
    train_lib.run_experiment(config, str(blocker / "model"), "train")
  with pytest.raises(train_lib.ExperimentError, match="--mode"):
    train_lib.run_experiment(config, str(tmp_path / "model"), "fit")


def test_cli_reports_a_bad_config(tmp_path):
  bad = tmp_path / "bad.textproto"
  bad.write_text("model_options { no_such_field: 1 }\n")
  result = subprocess.run(
      [sys.executable, "-m", "deeplab2_kmax.trainer.train",
       f"--config_file={bad}", f"--model_dir={tmp_path / 'model'}"],
      capture_output=True, text=True)
  assert result.returncode != 0
  assert str(bad) in result.stderr
  assert not os.path.exists(tmp_path / "model" / "checkpoint")


def test_learning_rate_warms_up_then_decays_to_zero_at_the_last_step():
  from deeplab2_kmax.trainer import optimization  # pylint: disable=g-import-not-at-top

  config = utils.tiny_config("/nonexistent", steps=100)
  solver = config.trainer_options.solver_options
  solver.warmup_steps = 10
  solver.base_learning_rate = 1e-3
  schedule = optimization.learning_rate_schedule(solver)
  rate = lambda step: float(schedule(step))  # pylint: disable=g-long-lambda
  assert rate(0) == 0.0
  # Linear from 0 to the full base rate at the end of warm-up (DeepLab2).
  assert rate(5) == pytest.approx(0.5 * 1e-3, rel=1e-5)
  assert rate(9) == pytest.approx(0.9 * 1e-3, rel=1e-5)
  for step in (10, 50, 99):  # Poly decay (power 0.9) over the whole run.
    assert rate(step) == pytest.approx(1e-3 * (1 - step / 100) ** 0.9,
                                       rel=1e-5)
  assert rate(100) == pytest.approx(0.0, abs=1e-12)


def test_export_resizes_with_the_eval_bounds_capped_at_the_export_crop():
  options = utils.tiny_config("/nonexistent").eval_dataset_options
  options.min_resize_value[:] = [1281]
  options.max_resize_value[:] = [1281]
  assert export_lib.resize_options(options, (1281, 1281)) == {
      "min_resize_value": (1281,), "max_resize_value": (1281, 1281),
      "resize_factor": None}
  assert export_lib.resize_options(options, (641, 641))[
      "max_resize_value"] == (641, 641)
  options.max_resize_value[:] = [600, 900]
  assert export_lib.resize_options(options, (641, 641))[
      "max_resize_value"] == (600, 641)
  options.min_resize_value[:] = [0]  # Cityscapes: pad only, fit the crop.
  options.max_resize_value[:] = [0]
  options.resize_factor = 32
  assert export_lib.resize_options(options, (1025, 2049)) == {
      "min_resize_value": (0,), "max_resize_value": (1025, 2049),
      "resize_factor": 32}
