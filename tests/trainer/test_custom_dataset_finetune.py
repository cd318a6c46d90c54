"""Fine-tuning on a custom COCO-panoptic dataset (docs/custom_dataset.md).

A tiny dataset with three categories of its own (7: thing, 11: stuff, 42:
thing) goes through the documented flow: the COCO builder's command line
with --categories_from_json, a config naming the written dataset_info.json,
and training from the checkpoint of a model with another class count. The
class-specific variables are found independently of the code under test
(their shape changes with the class count); the evaluation is checked
against panopticapi-style scoring of the dataset's own annotations.
"""

import json
import logging
import os
import re
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf
import tf_keras
import trainer_test_utils as utils

from deeplab2_kmax import builders
from deeplab2_kmax import common
from deeplab2_kmax import config_loader
from deeplab2_kmax.data import dataset_registry
from deeplab2_kmax.data import input_pipeline
from deeplab2_kmax.model import kmax_deeplab
from deeplab2_kmax.trainer import train_lib

_CROP = 64
# The category ids of the source annotations, and the contiguous train ids
# they must get (increasing id order, 0 void).
_CATEGORIES = [{"id": 42, "name": "dog", "isthing": 1, "color": [0, 0, 255]},
               {"id": 11, "name": "grass", "isthing": 0},
               {"id": 7, "name": "cat", "isthing": 1, "color": [255, 0, 0]}]
_TRAIN_IDS = {7: 1, 11: 2, 42: 3}
_LAYOUT = ["--image_dir=images/{split}", "--panoptic_dir=panoptic/{split}",
           "--panoptic_json=annotations/panoptic_{split}.json"]


def _image_specs(rng, height, width):
  """(segment id map, [(segment id, category id)]) of one random image."""
  ids = np.full((height, width), 1, np.int64)  # Grass everywhere...
  specs = [(1, 11)]
  for segment_id, category in ((300, 7), (70000, 42), (5, 7)):
    top, left = rng.integers(0, height - 16), rng.integers(0, width - 16)
    size = rng.integers(8, 16)
    ids[top:top + size, left:left + size] = segment_id
    specs.append((segment_id, category))
  ids[:3, :3] = 0  # ... but a void corner.
  return ids, specs


def _write_split(root, split, num_images, rng):
  """images/{split}, panoptic/{split}, annotations/panoptic_{split}.json;
  returns {image name: expected TFRecord label}."""
  for folder in ("images", "panoptic"):
    os.makedirs(os.path.join(root, folder, split))
  os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
  images, annotations, expected = [], [], {}
  for n in range(num_images):
    name = f"{split}_{n}"
    height, width = (_CROP, 48) if n % 2 else (40, _CROP)
    ids, specs = _image_specs(rng, height, width)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), np.uint8)).save(
        os.path.join(root, "images", split, name + ".png"))
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1)
    Image.fromarray(rgb.astype(np.uint8)).save(
        os.path.join(root, "panoptic", split, name + ".png"))
    segments = [{"id": s, "category_id": c, "iscrowd": 0,
                 "area": int(np.sum(ids == s))} for s, c in specs]
    images.append({"id": name, "file_name": name + ".png",
                   "height": height, "width": width})
    annotations.append({"image_id": name, "file_name": name + ".png",
                        "segments_info": segments})
    label = np.zeros(ids.shape, np.int64)  # Void 0, divisor 256.
    instances = {}
    for segment_id, category in specs:
      train_id = _TRAIN_IDS[category]
      instance = 0
      if category != 11:
        instances[train_id] = instance = instances.get(train_id, 0) + 1
      label[ids == segment_id] = train_id * 256 + instance
    expected[name] = label
  with open(os.path.join(root, "annotations", f"panoptic_{split}.json"),
            "w") as f:
    json.dump({"images": images, "annotations": annotations,
               "categories": _CATEGORIES}, f)
  return expected


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  """(source root, TFRecord folder, {name: expected label}) after building
  with the documented command."""
  directory = tmp_path_factory.mktemp("custom")
  root, out = str(directory / "my_data"), str(directory / "tfrecords")
  rng = np.random.default_rng(0)
  expected = _write_split(root, "train", 2, rng)
  expected.update(_write_split(root, "val", 2, rng))
  subprocess.run(
      [sys.executable, "-m", "deeplab2_kmax.data.build_coco_data",
       f"--coco_root={root}", f"--output_dir={out}", "--splits=train,val",
       "--num_shards=1", "--categories_from_json", "--dataset_name=pets"] +
      _LAYOUT, check=True, capture_output=True)
  return root, out, expected


def test_the_builder_describes_the_categories(dataset):
  _, out, expected = dataset
  with open(os.path.join(out, "dataset_info.json")) as f:
    info = json.load(f)
  assert info["name"] == "pets"
  assert info["num_classes"] == 4 and info["ignore_label"] == 0
  assert info["panoptic_label_divisor"] == 256
  assert info["splits_to_sizes"] == {"train": 2, "val": 2}
  classes = [(c["train_id"], c["category_id"], c["name"], c["isthing"])
             for c in info["classes"]]
  assert classes == [(0, None, "void", False), (1, 7, "cat", True),
                     (2, 11, "grass", False), (3, 42, "dog", True)]
  assert info["classes"][1]["color"] == [255, 0, 0]
  # The TFRecords hold the labels in train ids, instances per class.
  dataset_info = dataset_registry.get(
      os.path.join(out, "dataset_info.json"))
  ds = input_pipeline.build_dataset(
      dataset_info, [os.path.join(out, "*.tfrecord")],
      input_pipeline.PipelineOptions(batch_size=1, crop_size=(_CROP, _CROP)),
      is_training=False)
  seen = set()
  for batch in ds:
    height, width = batch[common.GT_SIZE_RAW][0].numpy()
    name = batch[common.IMAGE_NAME][0].numpy().decode()
    np.testing.assert_array_equal(
        batch[common.GT_PANOPTIC_RAW][0, :height, :width].numpy(),
        expected[name], err_msg=name)
    seen.add(name)
  assert seen == set(expected)


def _config(out, model_dir, checkpoint):
  """The lean test config on the custom dataset, through a textproto file."""
  config = utils.lean_config(out, steps=2, crop=_CROP,
                             semantic_head=True)
  info_file = os.path.join(out, "dataset_info.json")
  for options, split in ((config.train_dataset_options, "train"),
                         (config.eval_dataset_options, "val")):
    options.dataset = info_file
    options.file_pattern[:] = [os.path.join(out, f"{split}-*.tfrecord")]
  config.model_options.max_deeplab.auxiliary_semantic_head.ClearField(
      "output_channels")  # The dataset's class count.
  config.model_options.initial_checkpoint = checkpoint
  config.model_options.restore_semantic_last_layer_from_initial_checkpoint = (
      False)
  utils.accept_every_segment(config)
  config.evaluator_options.save_predictions = True
  path = os.path.join(model_dir, "custom.textproto")
  os.makedirs(model_dir)
  with open(path, "w") as f:
    f.write(str(config))
  return config_loader.load_config(path)


def _by_name(variables):
  """{variable name without the model's own scope: value}."""
  return {v.name.split("/", 1)[1]: v.numpy() for v in variables}


def _logged_names(text, pattern):
  match = re.search(pattern + r"[^\n]*?\): ([^\n]*)", text)
  assert match, pattern
  return {name.split("/", 1)[1] for name in match.group(1).split(", ")}


def test_finetune_from_other_classes(dataset, tmp_path, caplog, monkeypatch):
  root, out, _ = dataset
  # The source: the synthetic dataset's tiny model (9 classes, not 4).
  source_config = utils.lean_config(str(tmp_path), crop=_CROP,
                                    semantic_head=True)
  tf_keras.utils.set_random_seed(1)
  source = kmax_deeplab.KMaXDeepLab(**builders.model_kwargs(source_config))
  source(tf.zeros([1, _CROP, _CROP, 3]), training=False, return_semantic=True)
  checkpoint = tf.train.Checkpoint(model=source).write(
      str(tmp_path / "source" / "ckpt"))
  source_values = _by_name(source.variables)

  # The weights training starts from, taken right after the trainer's restore.
  start_values = {}
  restore = train_lib._restore_initial_checkpoint  # pylint: disable=protected-access

  def restore_and_record(config, model):
    restore(config, model)
    start_values.update(_by_name(model.variables))

  monkeypatch.setattr(train_lib, "_restore_initial_checkpoint",
                      restore_and_record)
  model_dir = str(tmp_path / "model")
  config = _config(out, model_dir, checkpoint)
  with caplog.at_level(logging.INFO, logger="absl"):
    metrics = train_lib.run_experiment(config, model_dir, "train_and_eval")

  assert start_values.keys() == source_values.keys()
  class_specific = {name for name, value in start_values.items()
                    if value.shape != source_values[name].shape}
  # Class heads (final and per kMaX layer) and the semantic last layer.
  num_kmax_layers = sum(
      config.model_options.max_deeplab.transformer_decoder.num_blocks)
  assert len(class_specific) == 2 * (num_kmax_layers + 1) + 2
  for name, value in start_values.items():
    if name not in class_specific:
      np.testing.assert_array_equal(value, source_values[name], err_msg=name)
  # Reported by name: restored and re-initialised.
  logged = caplog.text
  assert _logged_names(logged, r"Re-initialised, not restored") == (
      class_specific)
  assert _logged_names(logged, r"Restored from") == (
      set(start_values) - class_specific)
  assert "left initialised" not in logged

  # Evaluation on the 3 categories: the written predictions carry the
  # dataset's own ids, and scoring them against its annotations gives the
  # trainer's PQ.
  with open(os.path.join(model_dir, "predictions_step2.json")) as f:
    written = json.load(f)
  assert [(c["id"], c["isthing"]) for c in written["categories"]] == [
      (7, 1), (11, 0), (42, 1)]
  from deeplab2_kmax.evaluation import evaluate_panoptic  # pylint: disable=g-import-not-at-top
  offline = evaluate_panoptic.evaluate(
      os.path.join(root, "annotations", "panoptic_val.json"),
      os.path.join(root, "panoptic", "val"),
      os.path.join(model_dir, "predictions_step2.json"),
      os.path.join(model_dir, "predictions_step2"), progress=False)
  assert sorted(offline["per_class"]) == [7, 11, 42]
  for key in ("PQ", "PQ_Th", "PQ_St"):
    assert offline["summary"][key] == pytest.approx(metrics[key], abs=1e-6)
