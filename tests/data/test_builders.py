"""COCO / Cityscapes builders round-trip through TFRecords and the pipeline.

Tiny fake datasets are written in the real formats (COCO panoptic JSON + RGB
id PNGs; Cityscapes `createPanopticImgs` JSON + PNGs); the expected panoptic
maps are computed here, independently, from the segment definitions.
"""

import json
import os

import numpy as np
from PIL import Image
import pytest

from deeplab2_kmax import common
from deeplab2_kmax.data import build_cityscapes_data
from deeplab2_kmax.data import build_coco_data
from deeplab2_kmax.data import cityscapes_classes
from deeplab2_kmax.data import dataset_registry
from deeplab2_kmax.data import input_pipeline

# Sparse COCO-like category ids: 80 things below 92, 53 stuff from 92.
_THING_IDS = [i for i in range(1, 91)
              if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]
_STUFF_IDS = list(range(92, 92 + 2 * 53, 2))


def _id_to_rgb(ids):
  return np.stack([ids % 256, ids // 256 % 256, ids // 65536],
                  -1).astype(np.uint8)


def _paint(shape, rects):
  """Segment-id map from (segment id, (top, left, bottom, right)) rects."""
  ids = np.zeros(shape, np.int64)
  for seg_id, (top, left, bottom, right) in rects:
    ids[top:bottom, left:right] = seg_id
  return ids


def _segments(ids, specs):
  return [{"id": seg_id, "category_id": cat, "iscrowd": crowd,
           "area": int(np.sum(ids == seg_id)), "bbox": [0, 0, 1, 1]}
          for seg_id, cat, crowd in specs]


def _expected(ids, specs, class_map, divisor, void, has_instances,
              crowd_as_void):
  out = np.full(ids.shape, void * divisor, np.int64)
  counts = {}
  for seg_id, cat, crowd in specs:
    cls = class_map[cat]
    region = ids == seg_id
    if has_instances[cls] and crowd:
      out[region] = void * divisor if crowd_as_void else cls * divisor
    elif has_instances[cls]:
      counts[cls] = counts.get(cls, 0) + 1
      out[region] = cls * divisor + counts[cls]
    else:
      out[region] = cls * divisor
  return out


def _make_coco(root):
  rng = np.random.default_rng(0)
  os.makedirs(os.path.join(root, "val2017"))
  os.makedirs(os.path.join(root, "annotations", "panoptic_val2017"))
  categories = ([{"id": i, "name": f"t{i}", "isthing": 1} for i in _THING_IDS]
                + [{"id": i, "name": f"s{i}", "isthing": 0}
                   for i in _STUFF_IDS])
  rng.shuffle(categories)  # Order in the file must not matter.
  images, annotations, cases = [], [], []
  for n, (shape, rects, specs) in enumerate([
      ((24, 32), [(70000, (0, 0, 24, 32)), (5, (2, 2, 10, 12)),
                  (1234567, (12, 14, 20, 30)), (300, (4, 20, 9, 26)),
                  (301, (15, 2, 22, 8))],
       [(70000, 92, 0), (5, 1, 0), (1234567, 1, 0), (300, 90, 1),
        (301, 200 - 94, 0)]),
      ((20, 28), [(9, (0, 0, 10, 28)), (10, (10, 0, 20, 20)),
                  (11, (3, 3, 8, 9))],
       [(9, 94, 0), (10, 96, 0), (11, 85, 0)]),
  ]):
    ids = _paint(shape, rects)
    name = f"{n + 1:012d}"
    Image.fromarray(rng.integers(0, 256, (*shape, 3), np.uint8)).save(
        os.path.join(root, "val2017", name + ".jpg"), quality=95)
    Image.fromarray(_id_to_rgb(ids)).save(
        os.path.join(root, "annotations", "panoptic_val2017", name + ".png"))
    images.append({"id": n + 1, "file_name": name + ".jpg",
                   "height": shape[0], "width": shape[1]})
    annotations.append({"image_id": n + 1, "file_name": name + ".png",
                        "segments_info": _segments(ids, specs)})
    cases.append((name, ids, specs))
  with open(os.path.join(root, "annotations", "panoptic_val2017.json"),
            "w") as f:
    json.dump({"images": images, "annotations": annotations,
               "categories": categories}, f)
  return cases


def _eval_maps(info, pattern, crop):
  ds = input_pipeline.build_dataset(
      info, pattern,
      input_pipeline.PipelineOptions(batch_size=1, crop_size=crop),
      is_training=False)
  out = {}
  for batch in ds:
    h, w = batch[common.GT_SIZE_RAW][0].numpy()
    name = batch[common.IMAGE_NAME][0].numpy().decode()
    out[name] = batch[common.GT_PANOPTIC_RAW][0].numpy()[:h, :w]
    assert batch[common.IMAGE].shape == (1, *crop, 3)
  return out


@pytest.mark.parametrize("crowd_as_void", [True, False])
def test_coco_round_trip(tmp_path, crowd_as_void):
  root, out_dir = str(tmp_path / "coco"), str(tmp_path / "out")
  cases = _make_coco(root)
  paths = build_coco_data.build(root, out_dir, ["val"], num_shards=2,
                                treat_crowd_as_ignore=crowd_as_void,
                                progress=False)
  assert [os.path.basename(p) for p in paths["val"]] == [
      "val-00000-of-00002.tfrecord", "val-00001-of-00002.tfrecord"]
  info = dataset_registry.get("coco_panoptic")
  class_map = {cat: i + 1 for i, cat in enumerate(sorted(_THING_IDS +
                                                         _STUFF_IDS))}
  maps = _eval_maps(info, os.path.join(out_dir, "val-*"), (32, 40))
  assert sorted(maps) == [name for name, _, _ in cases]
  for name, ids, specs in cases:
    expected = _expected(ids, specs, class_map, 256, 0,
                         info.class_has_instances, crowd_as_void)
    np.testing.assert_array_equal(maps[name], expected)
  with pytest.raises(FileExistsError, match="--overwrite"):
    build_coco_data.build(root, out_dir, ["val"], progress=False)
  build_coco_data.build(root, out_dir, ["val"], num_shards=1, overwrite=True,
                        progress=False)
  assert sorted(os.listdir(out_dir)) == ["val-00000-of-00001.tfrecord"]


def test_coco_errors_name_the_file(tmp_path):
  root = str(tmp_path / "coco")
  _make_coco(root)
  image = os.path.join(root, "val2017", "000000000002.jpg")
  os.remove(image)
  with pytest.raises(FileNotFoundError, match="000000000002.jpg"):
    build_coco_data.build(root, str(tmp_path / "a"), ["val"], progress=False)
  assert not os.path.exists(tmp_path / "a" / "val-00000-of-00002.tfrecord")
  png = os.path.join(root, "annotations", "panoptic_val2017",
                     "000000000001.png")
  with open(png, "wb") as f:
    f.write(b"not a png")
  with pytest.raises(ValueError, match="000000000001.png"):
    build_coco_data.build(root, str(tmp_path / "b"), ["val"], progress=False)
  with pytest.raises(FileNotFoundError, match="panoptic_train2017.json"):
    build_coco_data.build(root, str(tmp_path / "c"), ["train"],
                          progress=False)


def _make_cityscapes(root):
  rng = np.random.default_rng(1)
  city = "frankfurt"
  os.makedirs(os.path.join(root, "leftImg8bit", "val", city))
  os.makedirs(os.path.join(root, "gtFine", "cityscapes_panoptic_val"))
  images, annotations, cases = [], [], []
  # createPanopticImgs ids: stuff = label id, thing = label id * 1000 + k,
  # crowd thing = label id.
  for n, (shape, rects, specs) in enumerate([
      ((16, 32), [(7, (8, 0, 16, 32)), (11, (0, 0, 8, 32)),
                  (26001, (9, 2, 14, 10)), (26002, (9, 12, 14, 20)),
                  (26, (2, 22, 6, 30)), (24000, (1, 1, 7, 5))],
       [(7, 7, 0), (11, 11, 0), (26001, 26, 0), (26002, 26, 0),
        (26, 26, 1), (24000, 24, 0)]),
  ]):
    image_id = f"{city}_000000_{n:06d}"
    ids = _paint(shape, rects)
    Image.fromarray(rng.integers(0, 256, (*shape, 3), np.uint8)).save(
        os.path.join(root, "leftImg8bit", "val", city,
                     image_id + "_leftImg8bit.png"))
    file_name = image_id + "_gtFine_panoptic.png"
    Image.fromarray(_id_to_rgb(ids)).save(
        os.path.join(root, "gtFine", "cityscapes_panoptic_val", file_name))
    images.append({"id": image_id, "file_name": image_id + "_leftImg8bit.png",
                   "height": shape[0], "width": shape[1]})
    annotations.append({"image_id": image_id, "file_name": file_name,
                        "segments_info": _segments(ids, specs)})
    cases.append((image_id, ids, specs))
  categories = [{"id": label_id, "name": str(label_id),
                 "isthing": int(label_id >= 24)}
                for label_id in cityscapes_classes.LABEL_ID_TO_TRAIN_ID]
  with open(os.path.join(root, "gtFine", "cityscapes_panoptic_val.json"),
            "w") as f:
    json.dump({"images": images, "annotations": annotations,
               "categories": categories}, f)
  return cases


def test_cityscapes_round_trip(tmp_path):
  root, out_dir = str(tmp_path / "cityscapes"), str(tmp_path / "out")
  cases = _make_cityscapes(root)
  build_cityscapes_data.build(root, out_dir, ["val"], progress=False)
  info = dataset_registry.get("cityscapes_panoptic")
  # Official label ids -> train ids of the evaluated classes.
  class_map = {7: 0, 11: 2, 24: 11, 26: 13}
  maps = _eval_maps(info, os.path.join(out_dir, "val-*.tfrecord"), (17, 33))
  for name, ids, specs in cases:
    expected = _expected(ids, specs, class_map, 1000, 255,
                         info.class_has_instances, True)
    np.testing.assert_array_equal(maps[name], expected)


def test_cityscapes_missing_image_is_named(tmp_path):
  root = str(tmp_path / "cityscapes")
  _make_cityscapes(root)
  os.remove(os.path.join(root, "leftImg8bit", "val", "frankfurt",
                         "frankfurt_000000_000000_leftImg8bit.png"))
  with pytest.raises(FileNotFoundError,
                     match="frankfurt_000000_000000_leftImg8bit.png"):
    build_cityscapes_data.build(root, str(tmp_path / "o"), ["val"],
                                progress=False)


def test_pipeline_names_an_empty_pattern(tmp_path):
  pattern = str(tmp_path / "nothing-*.tfrecord")
  with pytest.raises(FileNotFoundError, match="nothing-"):
    input_pipeline.build_dataset(
        dataset_registry.get("coco_panoptic"), pattern,
        input_pipeline.PipelineOptions(batch_size=1, crop_size=(8, 8)),
        is_training=False)
