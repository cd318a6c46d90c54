r"""Converts Cityscapes panoptic (gtFine JSON + PNGs) to TFRecords.

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

from deeplab2_kmax.data import cityscapes_classes
from deeplab2_kmax.data import panoptic_conversion

DATASET = "cityscapes_panoptic"


def split_items(cityscapes_root: str, split: str):
  """Returns (items, class_map) of one split."""
  gt_dir = os.path.join(cityscapes_root, "gtFine")
  train_id_json = os.path.join(gt_dir,
                               f"cityscapes_panoptic_{split}_trainId.json")
  if os.path.isfile(train_id_json):
    json_path = train_id_json
    class_map = {i: i for i in range(len(cityscapes_classes.NAMES))}
  else:
    json_path = os.path.join(gt_dir, f"cityscapes_panoptic_{split}.json")
    class_map = dict(cityscapes_classes.LABEL_ID_TO_TRAIN_ID)
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


CONVERTER = panoptic_conversion.Converter(
    split_items, DATASET, root_flag="cityscapes_root",
    root_help="Cityscapes root.", num_shards=10)
# `build(root, output_dir, splits, ...)` converts splits; `CONVERTER.main()`
# is the command line.
build = CONVERTER.build


if __name__ == "__main__":
  CONVERTER.main()
