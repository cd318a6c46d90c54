"""A custom dataset's description file and the builder's custom mode.

`dataset_info.json` turns into the `DatasetInfo` a config uses when it names
the file as its dataset; malformed files and category lists are refused with
the file and field named.
"""

import json
import os

import numpy as np
from PIL import Image
import pytest

from deeplab2_kmax import config_loader
from deeplab2_kmax.data import build_coco_data
from deeplab2_kmax.data import dataset_registry

_CATEGORIES = [{"id": 42, "name": "dog", "isthing": 1},
               {"id": 11, "name": "grass", "isthing": 0, "color": [1, 2, 3]},
               {"id": 7, "name": "cat", "isthing": 1}]


def _write_split(root, split, categories=_CATEGORIES):
  """One 8 x 8 image of grass (11) with a cat (7), in COCO's layout."""
  os.makedirs(os.path.join(root, f"{split}2017"), exist_ok=True)
  png_dir = os.path.join(root, "annotations", f"panoptic_{split}2017")
  os.makedirs(png_dir, exist_ok=True)
  ids = np.full((8, 8), 1, np.uint8)
  ids[2:5, 2:5] = 2
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(
      os.path.join(root, f"{split}2017", "a.jpg"))
  Image.fromarray(np.stack([ids, 0 * ids, 0 * ids], -1)).save(
      os.path.join(png_dir, "a.png"))
  segments = [{"id": 1, "category_id": 11}, {"id": 2, "category_id": 7}]
  with open(os.path.join(root, "annotations",
                         f"panoptic_{split}2017.json"), "w") as f:
    json.dump({"images": [{"id": 1, "file_name": "a.jpg"}],
               "annotations": [{"image_id": 1, "file_name": "a.png",
                                "segments_info": segments}],
               "categories": categories}, f)


def _build(root, out, splits, **kwargs):
  return build_coco_data.build(root, out, splits, num_shards=1,
                               progress=False, categories_from_json=True,
                               **kwargs)


def test_the_description_file_round_trips(tmp_path):
  root, out = str(tmp_path / "data"), str(tmp_path / "out")
  _write_split(root, "val")
  _build(root, out, ["val"], dataset_name="pets")
  path = os.path.join(out, "dataset_info.json")
  info = dataset_registry.get(path)
  assert info.name == os.path.abspath(path)
  assert info.num_classes == 4 and info.ignore_label == 0
  assert info.category_ids == (None, 7, 11, 42)
  assert info.class_names == ("void", "cat", "grass", "dog")
  assert info.thing_class_ids == (1, 3) and info.stuff_class_ids == (2,)
  assert info.colormap[2] == (1, 2, 3)
  assert info.splits_to_sizes == {"val": 1}
  # A later run on another split adds it.
  _write_split(root, "train")
  _build(root, out, ["train"])
  assert dataset_registry.get(path).splits_to_sizes == {"val": 1, "train": 1}


def test_other_categories_do_not_replace_the_description(tmp_path):
  root, out = str(tmp_path / "data"), str(tmp_path / "out")
  _write_split(root, "val")
  _build(root, out, ["val"])
  _write_split(root, "train", _CATEGORIES[1:])
  with pytest.raises(FileExistsError, match="dataset_info.json"):
    _build(root, out, ["train"])
  with pytest.raises(ValueError, match="panoptic_train2017.json.*differ"):
    _build(root, str(tmp_path / "other"), ["val", "train"])


@pytest.mark.parametrize("categories, message", [
    ([], "non-empty"),
    (_CATEGORIES + [{"id": 7, "isthing": 1}], "id 7 is listed twice"),
    ([{"id": "7", "isthing": 1}], r"categories\[0\]: 'id'"),
    ([{"id": 7}], r"categories\[0\] \(id 7\): 'isthing'"),
])
def test_bad_categories_are_named(tmp_path, categories, message):
  root = str(tmp_path / "data")
  _write_split(root, "val", categories)
  with pytest.raises(ValueError, match=message) as error:
    _build(root, str(tmp_path / "out"), ["val"])
  assert "panoptic_val2017.json" in str(error.value)


def _info_file(tmp_path, **changes):
  info = build_coco_data.info_from_categories(_CATEGORIES, "pets", "x.json")
  content = dataset_registry.info_file_content(info, "pets")
  content.update(changes)
  path = str(tmp_path / "dataset_info.json")
  with open(path, "w") as f:
    json.dump(content, f)
  return path, content


def test_malformed_description_files_are_named(tmp_path):
  with pytest.raises(ValueError, match="not found: .*missing.json"):
    dataset_registry.get(str(tmp_path / "missing.json"))
  path, content = _info_file(tmp_path, num_classes=5)
  with pytest.raises(ValueError, match="4 classes listed, num_classes is 5"):
    dataset_registry.get(path)
  content["classes"][1]["isthing"] = 1
  path, _ = _info_file(tmp_path, classes=content["classes"])
  with pytest.raises(ValueError, match=r"classes\[1\]: field 'isthing'"):
    dataset_registry.get(path)
  with open(path, "w") as f:
    f.write("{")
  with pytest.raises(ValueError, match="Cannot read .*dataset_info.json"):
    dataset_registry.get(path)


def test_a_config_names_the_description_file(tmp_path):
  path, _ = _info_file(tmp_path)
  text = f"""
    train_dataset_options {{ dataset: "{path}" crop_size: [65, 65] }}
    model_options {{ backbone {{ name: "resnet50" }}
      max_deeplab {{ auxiliary_semantic_head {{ output_channels: 9 }} }} }}
  """
  config = config_loader.parse_config(text)
  with pytest.raises(config_loader.ConfigError,
                     match="output_channels.*differs from .*4 classes"):
    config_loader.validate(config)
  config.model_options.max_deeplab.auxiliary_semantic_head.output_channels = 4
  config_loader.validate(config)
  config.train_dataset_options.dataset = str(tmp_path / "nothing.json")
  with pytest.raises(config_loader.ConfigError,
                     match="train_dataset_options.dataset.*nothing.json"):
    config_loader.validate(config)


def test_predict_finds_the_description_a_saved_model_records(tmp_path):
  from deeplab2_kmax import predictor  # pylint: disable=g-import-not-at-top
  path, _ = _info_file(tmp_path)

  class Recorded:
    dataset_name = path.encode()

  assert predictor._recorded_dataset(Recorded()) == path  # pylint: disable=protected-access
  Recorded.dataset_name = str(tmp_path / "gone.json").encode()
  assert predictor._recorded_dataset(Recorded()) == "coco_panoptic"  # pylint: disable=protected-access


def test_predicted_folders_carry_the_source_category_ids(tmp_path):
  from deeplab2_kmax.tools import predict  # pylint: disable=g-import-not-at-top
  path, content = _info_file(tmp_path)
  info = dataset_registry.get(path)
  outputs = predict.PanopticOutputs(str(tmp_path / "out"), info,
                                    overlays=False)
  with open(outputs.close()) as f:
    written = json.load(f)
  expected = sorted(c["category_id"] for c in content["classes"]
                    if c["category_id"] is not None)
  assert sorted(c["id"] for c in written["categories"]) == expected


def test_predicted_segments_carry_the_source_category_ids(tmp_path):
  from deeplab2_kmax import predictor  # pylint: disable=g-import-not-at-top
  path, content = _info_file(tmp_path)
  info = dataset_registry.get(path)
  source_id = {c["train_id"]: c["category_id"] for c in content["classes"]}
  divisor = info.panoptic_label_divisor
  panoptic = np.array([[1 * divisor + 1, 2 * divisor],
                       [3 * divisor + 2, info.ignore_label * divisor]])
  ones = np.ones(panoptic.shape, np.float32)
  segments = predictor.segments_info(panoptic, ones, ones, info)
  assert [s["category_id"] for s in segments] == [
      source_id[1], source_id[2], source_id[3]]
