r"""Converts ADE20K panoptic (COCO-style JSON + PNGs) to TFRecords.

  python -m deeplab2_kmax.data.build_ade20k_data --ade20k_root=ADE \
      --output_dir=DIR [--splits=train,val] [--num_shards=1000]

Expected layout: ADEChallengeData2016 with the panoptic annotations made by
Mask2Former's / Detectron2's `prepare_ade20k_pan_seg.py` (what DeepLab2
reads too):
  ADE/images/training/*.jpg, ADE/images/validation/*.jpg
  ADE/ade20k_panoptic_{train,val}.json
  ADE/ade20k_panoptic_{train,val}/*.png   (segment id = R + 256 G + 256^2 B)
The JSON's `categories` are the 150 SceneParse150 classes with ids 0..149;
category c becomes class c + 1 of `ade20k_panoptic` and its `isthing` must
agree with the registry. Category 255 (the conversion's void) and pixels of
no listed segment become void (class 0). Images are stored as they are
(JPEG; the few grayscale ones decode to 3 channels). Output shards:
`{split}-*-of-*.tfrecord`, named by the image file prefix
(e.g. `ADE_val_00000001`).
"""

import os
from typing import Dict
from typing import Mapping
from typing import Sequence

from deeplab2_kmax.data import build_coco_data
from deeplab2_kmax.data import dataset_registry
from deeplab2_kmax.data import panoptic_conversion

DATASET = "ade20k_panoptic"
# Split name -> folder of its images under `images/`.
IMAGE_FOLDERS = {"train": "training", "val": "validation"}
# The panoptic conversion labels unannotated regions with category 255.
VOID_CATEGORY = 255


def class_map_from_categories(categories: Sequence[Mapping],
                              info: dataset_registry.DatasetInfo,
                              source: str) -> Dict[int, int]:
  """Category id c (0..149) -> class c + 1; void 255 -> the ignore label."""
  mapping = build_coco_data.class_map_from_categories(categories, info, source)
  expected = list(range(info.num_classes - 1))
  if sorted(mapping) != expected:
    raise ValueError(f"{source}: category ids must be 0..{expected[-1]} "
                     f"(SceneParse150 order), got {sorted(mapping)[:5]}...")
  mapping[VOID_CATEGORY] = info.ignore_label
  return mapping


def split_items(ade20k_root: str, split: str):
  """Returns (items, class_map) of one split."""
  if split not in IMAGE_FOLDERS:
    raise ValueError(f"--splits: unknown ADE20K split {split!r}; known: "
                     f"{', '.join(IMAGE_FOLDERS)}.")
  info = dataset_registry.get(DATASET)
  json_path = os.path.join(ade20k_root, f"ade20k_panoptic_{split}.json")
  data = panoptic_conversion.load_json(json_path)
  class_map = class_map_from_categories(data["categories"], info, json_path)
  image_files = {image["id"]: image["file_name"]
                 for image in data.get("images", [])}
  items, seen = [], set()
  for annotation in sorted(data["annotations"], key=lambda a: a["file_name"]):
    if annotation["image_id"] in seen:
      raise ValueError(f"{json_path}: image_id {annotation['image_id']!r} "
                       "is annotated twice.")
    seen.add(annotation["image_id"])
    stem = os.path.splitext(annotation["file_name"])[0]
    image_file = image_files.get(annotation["image_id"], stem + ".jpg")
    items.append(panoptic_conversion.Item(
        name=os.path.splitext(image_file)[0],
        image_path=os.path.join(ade20k_root, "images", IMAGE_FOLDERS[split],
                                image_file),
        label_path=os.path.join(ade20k_root, f"ade20k_panoptic_{split}",
                                annotation["file_name"]),
        segments=annotation["segments_info"]))
  return items, class_map


CONVERTER = panoptic_conversion.Converter(
    split_items, DATASET, root_flag="ade20k_root",
    root_help="ADEChallengeData2016 folder with the panoptic annotations.",
    num_shards=1000)
# `build(root, output_dir, splits, ...)` converts splits; `CONVERTER.main()`
# is the command line.
build = CONVERTER.build


if __name__ == "__main__":
  CONVERTER.main()
