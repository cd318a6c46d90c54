"""ADE20K panoptic: the registry entry and the TFRecord builder.

A tiny dataset is written in the layout of the ADE20K panoptic conversion
(`images/validation/*.jpg`, `ade20k_panoptic_val.json` with the 150
categories 0..149, `ade20k_panoptic_val/*.png` with segment id
R + 256 G + 256^2 B). The expected labels are decoded here, with NumPy, from
the PNG files and the JSON, and compared with the records read back.
"""

import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from deeplab2_kmax import common
from deeplab2_kmax.data import build_ade20k_data
from deeplab2_kmax.data import dataset_registry
from deeplab2_kmax.data import input_pipeline
from deeplab2_kmax.data import tfrecord

# SceneParse150 classes (1-based) that have instance masks in ADE20K's
# instance annotations (Mask2Former's ade20k_instance_catid_mapping.txt):
# the thing classes.
_INSTANCE_CLASSES = (
    8, 9, 11, 13, 15, 16, 19, 20, 21, 23, 24, 25, 28, 31, 32, 33, 34, 36, 37,
    38, 39, 40, 42, 43, 44, 45, 46, 48, 50, 51, 54, 56, 57, 58, 59, 63, 65, 66,
    67, 68, 70, 71, 72, 73, 74, 75, 76, 77, 79, 81, 82, 83, 84, 86, 87, 88, 89,
    90, 91, 93, 94, 96, 98, 99, 103, 104, 105, 108, 109, 111, 112, 113, 116,
    117, 119, 120, 121, 122, 124, 125, 126, 127, 128, 130, 131, 133, 134, 135,
    136, 137, 138, 139, 140, 143, 144, 145, 147, 148, 149, 150)
_DIVISOR = 1000
_ROOT_FLAG = "--ade20k_root"

# Per image: (height, width, gray?, [(segment id, category id, crowd,
# (top, left, bottom, right))]); later rectangles paint over earlier ones.
# Category 0 "wall" (stuff), 12 "person" and 149 "flag" (things), 2 "sky"
# (stuff), 255 void; pixels of no segment stay id 0.
_IMAGES = (
    (32, 32, False, [(1234567, 0, 0, (0, 0, 32, 32)),
                     (70001, 12, 0, (2, 2, 12, 10)),
                     (70002, 12, 0, (14, 3, 26, 11)),
                     (70003, 12, 1, (20, 20, 30, 30)),
                     (9, 149, 0, (4, 16, 10, 30)),
                     (255 * 65536, 255, 0, (27, 0, 32, 6))]),
    (24, 32, True, [(5, 2, 0, (0, 0, 12, 32)),
                    (6, 149, 0, (14, 2, 20, 9)),
                    (7, 149, 0, (14, 12, 20, 30))]),
    (32, 20, False, [(11, 12, 0, (0, 0, 32, 20))]),
)


def _category_list(rng):
  categories = [{"id": c, "name": f"category {c}",
                 "isthing": int(c + 1 in _INSTANCE_CLASSES)}
                for c in range(150)]
  rng.shuffle(categories)  # File order must not matter.
  return categories


def _make_ade20k(root, split="val"):
  rng = np.random.default_rng(0)
  image_dir = os.path.join(root, "images", build_ade20k_data.IMAGE_FOLDERS[split])
  label_dir = os.path.join(root, f"ade20k_panoptic_{split}")
  os.makedirs(image_dir)
  os.makedirs(label_dir)
  images, annotations = [], []
  for n, (height, width, gray, segments) in enumerate(_IMAGES):
    name = f"ADE_{split}_{n + 1:08d}"
    pixels = rng.integers(0, 256, (height, width) if gray else
                          (height, width, 3), np.uint8)
    Image.fromarray(pixels).save(os.path.join(image_dir, name + ".jpg"),
                                 quality=90)
    ids = np.zeros((height, width), np.int64)
    for seg_id, _, _, (top, left, bottom, right) in segments:
      ids[top:bottom, left:right] = seg_id
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1)
    Image.fromarray(rgb.astype(np.uint8)).save(
        os.path.join(label_dir, name + ".png"))
    images.append({"id": name, "file_name": name + ".jpg",
                   "height": height, "width": width})
    annotations.append({
        "image_id": name, "file_name": name + ".png",
        "segments_info": [{"id": seg_id, "category_id": cat, "iscrowd": crowd,
                           "area": int(np.sum(ids == seg_id)),
                           "bbox": [0, 0, 1, 1]}
                          for seg_id, cat, crowd, _ in segments]})
  with open(os.path.join(root, f"ade20k_panoptic_{split}.json"), "w") as f:
    json.dump({"images": images, "annotations": annotations[::-1],
               "categories": _category_list(rng)}, f)
  return root


def _expected_labels(root, split="val"):
  """NumPy decoding of the PNGs + JSON: class (category + 1, void 0) * 1000 +
  instance (1, 2, ... per class in listing order; crowd things void)."""
  with open(os.path.join(root, f"ade20k_panoptic_{split}.json")) as f:
    data = json.load(f)
  labels = {}
  for annotation in data["annotations"]:
    rgb = np.asarray(Image.open(os.path.join(
        root, f"ade20k_panoptic_{split}", annotation["file_name"])), np.int64)
    ids = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
    label = np.zeros(ids.shape, np.int64)
    counts = {}
    for segment in annotation["segments_info"]:
      cat = segment["category_id"]
      cls = 0 if cat == 255 else cat + 1
      if cls in _INSTANCE_CLASSES and segment["iscrowd"]:
        value = 0
      elif cls in _INSTANCE_CLASSES:
        counts[cls] = counts.get(cls, 0) + 1
        value = cls * _DIVISOR + counts[cls]
      else:
        value = cls * _DIVISOR
      label[ids == segment["id"]] = value
    labels[annotation["image_id"]] = label
  return labels


def _read_records(pattern):
  """{name: (label, image [H, W, 3], encoded image bytes)} of the shards."""
  out = {}
  for record in tf.data.TFRecordDataset(sorted(tf.io.gfile.glob(pattern))):
    example = tfrecord.decode_example(record)
    raw = tf.train.Example.FromString(record.numpy()).features.feature
    out[example["name"].numpy().decode()] = (
        example["label"].numpy(), example["image"].numpy(),
        raw[common.KEY_ENCODED_IMAGE].bytes_list.value[0])
  return out


def test_registry_entry_is_deeplab2s_ade20k_panoptic():
  info = dataset_registry.get("ade20k_panoptic")
  assert (info.num_classes, info.ignore_label,
          info.panoptic_label_divisor) == (151, 0, 1000)
  assert info.thing_class_ids == _INSTANCE_CLASSES
  assert len(info.stuff_class_ids) == 50 and 0 not in info.stuff_class_ids
  assert info.splits_to_sizes == {"train": 20210, "val": 2000}
  assert len(info.class_names) == len(set(info.class_names)) == 151
  assert len(info.colormap) == 151
  assert all(len(c) == 3 and all(0 <= v <= 255 for v in c)
             for c in info.colormap)
  # Spot checks against the ADE20K benchmark's names and palette.
  assert [info.class_names[i] for i in (1, 3, 13, 150)] == [
      "wall", "sky", "person", "flag"]
  assert info.colormap[0] == (0, 0, 0)
  assert info.colormap[1] == (120, 120, 120)
  assert info.colormap[150] == (92, 0, 255)


def test_round_trip_equals_numpy_decoding_of_the_pngs(tmp_path, capfd):
  root = _make_ade20k(str(tmp_path / "ADEChallengeData2016"))
  out_dir = str(tmp_path / "out")
  paths = build_ade20k_data.build(root, out_dir, ["val"], num_shards=2)
  assert "val: 100%" in capfd.readouterr().err  # The progress bar.
  assert [os.path.basename(p) for p in paths["val"]] == [
      "val-00000-of-00002.tfrecord", "val-00001-of-00002.tfrecord"]
  records = _read_records(os.path.join(out_dir, "val-*.tfrecord"))
  expected = _expected_labels(root)
  assert sorted(records) == sorted(expected)
  for name, (label, image, encoded) in records.items():
    np.testing.assert_array_equal(label, expected[name], err_msg=name)
    jpg = os.path.join(root, "images", "validation", name + ".jpg")
    with open(jpg, "rb") as f:
      assert encoded == f.read()  # Stored as it is.
    assert image.shape == label.shape + (3,)  # Grayscale too.
  # Classes 13 (person) and 150 (flag) as instances; the crowd and the 255
  # segment void; wall and sky as stuff.
  first = records["ADE_val_00000001"][0]
  assert set(np.unique(first)) == {0, 1000, 13001, 13002, 150001}

  # The evaluation pipeline hands the same maps to the evaluator.
  info = dataset_registry.get("ade20k_panoptic")
  ds = input_pipeline.build_dataset(
      info, os.path.join(out_dir, "val-*"),
      input_pipeline.PipelineOptions(batch_size=1, crop_size=(33, 33)),
      is_training=False)
  for batch in ds:
    height, width = batch[common.GT_SIZE_RAW][0].numpy()
    name = batch[common.IMAGE_NAME][0].numpy().decode()
    np.testing.assert_array_equal(
        batch[common.GT_PANOPTIC_RAW][0].numpy()[:height, :width],
        expected[name])


def test_cli_converts_then_names_a_missing_json(tmp_path):
  """One run (TensorFlow's import is most of it): val converts, then train
  stops on its missing JSON with a usage error naming the file."""
  root = _make_ade20k(str(tmp_path / "ade"))
  result = subprocess.run(
      [sys.executable, "-m", "deeplab2_kmax.data.build_ade20k_data",
       f"--ade20k_root={root}", f"--output_dir={tmp_path / 'out'}",
       "--splits=val,train", "--num_shards=1"],
      capture_output=True, text=True, check=False)
  assert result.returncode != 0
  assert "ade20k_panoptic_train.json" in result.stderr, result.stderr[-2000:]
  assert os.listdir(tmp_path / "out") == ["val-00000-of-00001.tfrecord"]
  assert len(_read_records(str(tmp_path / "out" / "val-*"))) == len(_IMAGES)


def _rewrite_json(root, change):
  path = os.path.join(root, "ade20k_panoptic_val.json")
  with open(path) as f:
    data = json.load(f)
  change(data)
  with open(path, "w") as f:
    json.dump(data, f)


def _shift_ids(data):
  for category in data["categories"]:
    category["id"] += 1


def _flip_isthing(data):
  data["categories"][0]["isthing"] = 1 - data["categories"][0]["isthing"]


def _duplicate_annotation(data):
  data["annotations"].append(data["annotations"][0])


@pytest.mark.parametrize("change,message", [
    (_shift_ids, "category ids must be 0..149"),
    (_flip_isthing, "isthing"),
    (_duplicate_annotation, "annotated twice"),
])
def test_bad_json_is_named(tmp_path, change, message):
  root = _make_ade20k(str(tmp_path / "ade"))
  _rewrite_json(root, change)
  with pytest.raises(ValueError, match=message) as error:
    build_ade20k_data.build(root, str(tmp_path / "out"), ["val"],
                            progress=False)
  assert "ade20k_panoptic_val.json" in str(error.value)
  assert not os.path.exists(tmp_path / "out")


def test_missing_or_corrupt_files_are_named(tmp_path):
  root = _make_ade20k(str(tmp_path / "ade"))
  os.remove(os.path.join(root, "images", "validation", "ADE_val_00000002.jpg"))
  with pytest.raises(FileNotFoundError, match="ADE_val_00000002.jpg"):
    build_ade20k_data.build(root, str(tmp_path / "a"), ["val"],
                            progress=False)
  assert not os.listdir(tmp_path / "a")  # No partial shards.
  with open(os.path.join(root, "ade20k_panoptic_val", "ADE_val_00000001.png"),
            "wb") as f:
    f.write(b"not a png")
  with pytest.raises(ValueError, match="ADE_val_00000001.png"):
    build_ade20k_data.build(root, str(tmp_path / "b"), ["val"],
                            progress=False)
  with pytest.raises(ValueError, match="unknown ADE20K split 'test'"):
    build_ade20k_data.build(root, str(tmp_path / "c"), ["test"],
                            progress=False)
  with pytest.raises(FileNotFoundError, match=_ROOT_FLAG):
    build_ade20k_data.build(str(tmp_path / "nowhere"), str(tmp_path / "d"),
                            ["val"], progress=False)
