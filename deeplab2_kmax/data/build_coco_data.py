r"""Converts COCO panoptic (JSON + PNGs) to sharded TFRecords (SPEC §5).

  python -m deeplab2_kmax.data.build_coco_data --coco_root=COCO \
      --output_dir=DIR [--splits=train,val] [--num_shards=1000]

Expected layout (the official COCO 2017 release):
  COCO/{split}2017/*.jpg
  COCO/annotations/panoptic_{split}2017.json
  COCO/annotations/panoptic_{split}2017/*.png

The 133 COCO category ids (sparse, 1..200) map in increasing order onto the
contiguous classes 1..133 of `coco_panoptic` (things first); 0 is void.
"""

import os
from typing import Dict
from typing import List
from typing import Mapping
from typing import Sequence

from deeplab2_kmax.data import dataset_registry
from deeplab2_kmax.data import panoptic_conversion

DATASET = "coco_panoptic"


def class_map_from_categories(categories: Sequence[Mapping],
                              info: dataset_registry.DatasetInfo,
                              source: str) -> Dict[int, int]:
  """COCO category id -> contiguous class id; checks `isthing` agrees."""
  ordered = sorted(categories, key=lambda c: c["id"])
  if len(ordered) != info.num_classes - 1:
    raise ValueError(f"{source} lists {len(ordered)} categories; "
                     f"{info.name} expects {info.num_classes - 1}.")
  mapping = {}
  for class_id, category in enumerate(ordered, start=1):
    if bool(category.get("isthing")) != info.class_has_instances[class_id]:
      raise ValueError(f"{source}: category {category['id']} "
                       f"({category.get('name')}) has isthing="
                       f"{category.get('isthing')}, but class {class_id} of "
                       f"{info.name} disagrees.")
    mapping[category["id"]] = class_id
  return mapping


def split_items(coco_root: str, split: str):
  """Returns (items, class_map) of one split."""
  info = dataset_registry.get(DATASET)
  json_path = os.path.join(coco_root, "annotations",
                           f"panoptic_{split}2017.json")
  data = panoptic_conversion.load_json(json_path)
  class_map = class_map_from_categories(data["categories"], info, json_path)
  image_files = {image["id"]: image["file_name"]
                 for image in data.get("images", [])}
  items = []
  for annotation in sorted(data["annotations"], key=lambda a: a["file_name"]):
    stem = os.path.splitext(annotation["file_name"])[0]
    image_file = image_files.get(annotation["image_id"], stem + ".jpg")
    items.append(panoptic_conversion.Item(
        name=os.path.splitext(image_file)[0],
        image_path=os.path.join(coco_root, f"{split}2017", image_file),
        label_path=os.path.join(coco_root, "annotations",
                                f"panoptic_{split}2017",
                                annotation["file_name"]),
        segments=annotation["segments_info"]))
  return items, class_map


def build(coco_root: str, output_dir: str, splits: Sequence[str] = ("train",
                                                                   "val"),
          num_shards: int = 1000, treat_crowd_as_ignore: bool = True,
          overwrite: bool = False, progress: bool = True
          ) -> Dict[str, List[str]]:
  """Converts each split; returns its TFRecord paths."""
  return panoptic_conversion.build_splits(
      split_items, coco_root, "coco_root", dataset_registry.get(DATASET),
      output_dir, splits, num_shards, treat_crowd_as_ignore, overwrite,
      progress)


if __name__ == "__main__":
  panoptic_conversion.define_flags("coco_root", "COCO dataset root.", 1000)
  panoptic_conversion.run_cli(build, "coco_root")
