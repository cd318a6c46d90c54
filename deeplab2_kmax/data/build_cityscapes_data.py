r"""Converts Cityscapes panoptic (gtFine JSON + PNGs) to TFRecords (SPEC §5).

  python -m deeplab2_kmax.data.build_cityscapes_data \
      --cityscapes_root=CITYSCAPES --output_dir=DIR [--splits=train,val]

Expects the images `leftImg8bit/{split}/{city}/{id}_leftImg8bit.png` and the
panoptic ground truth made by cityscapesscripts' `createPanopticImgs`, either
with train ids (`gtFine/cityscapes_panoptic_{split}_trainId.json` + folder,
what DeepLab2 reads; preferred when present) or with label ids
(`gtFine/cityscapes_panoptic_{split}.json` + folder), which are mapped onto
the 19 train ids here. Output shards: `{split}-*-of-*.tfrecord`.
"""

import os
from typing import Dict
from typing import List
from typing import Sequence

from deeplab2_kmax.data import dataset_registry
from deeplab2_kmax.data import panoptic_conversion

DATASET = "cityscapes_panoptic"

# Cityscapes label id -> train id of the 19 evaluated classes.
LABEL_ID_TO_TRAIN_ID = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9,
    23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}


def split_items(cityscapes_root: str, split: str):
  """Returns (items, class_map) of one split."""
  gt_dir = os.path.join(cityscapes_root, "gtFine")
  train_id_json = os.path.join(gt_dir,
                               f"cityscapes_panoptic_{split}_trainId.json")
  if os.path.isfile(train_id_json):
    json_path = train_id_json
    class_map = {i: i for i in range(19)}
  else:
    json_path = os.path.join(gt_dir, f"cityscapes_panoptic_{split}.json")
    class_map = dict(LABEL_ID_TO_TRAIN_ID)
  data = panoptic_conversion.load_json(json_path)
  png_dir = os.path.splitext(json_path)[0]
  items = []
  for annotation in sorted(data["annotations"], key=lambda a: a["image_id"]):
    image_id = annotation["image_id"]
    city = image_id.split("_")[0]
    items.append(panoptic_conversion.Item(
        name=image_id,
        image_path=os.path.join(cityscapes_root, "leftImg8bit", split, city,
                                f"{image_id}_leftImg8bit.png"),
        label_path=os.path.join(png_dir, annotation["file_name"]),
        segments=annotation["segments_info"]))
  return items, class_map


def build(cityscapes_root: str, output_dir: str,
          splits: Sequence[str] = ("train", "val"), num_shards: int = 10,
          treat_crowd_as_ignore: bool = True, overwrite: bool = False,
          progress: bool = True) -> Dict[str, List[str]]:
  """Converts each split; returns its TFRecord paths."""
  return panoptic_conversion.build_splits(
      split_items, cityscapes_root, "cityscapes_root",
      dataset_registry.get(DATASET), output_dir, splits, num_shards,
      treat_crowd_as_ignore, overwrite, progress)


if __name__ == "__main__":
  panoptic_conversion.define_flags("cityscapes_root", "Cityscapes root.", 10)
  panoptic_conversion.run_cli(build, "cityscapes_root")
