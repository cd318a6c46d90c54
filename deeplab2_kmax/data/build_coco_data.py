r"""Converts COCO panoptic (JSON + PNGs) to sharded TFRecords.

  python -m deeplab2_kmax.data.build_coco_data --coco_root=COCO \
      --output_dir=DIR [--splits=train,val] [--num_shards=1000]

Expected layout (the official COCO 2017 release; other layouts through
--image_dir, --panoptic_dir and --panoptic_json, where `{split}` is replaced
by the split name):
  COCO/{split}2017/*.jpg
  COCO/annotations/panoptic_{split}2017.json
  COCO/annotations/panoptic_{split}2017/*.png

The 133 COCO category ids (sparse, 1..200) map in increasing order onto the
contiguous classes 1..133 of `coco_panoptic` (things first); 0 is void.

With --categories_from_json (a custom dataset, docs/custom_dataset.md) the
classes are the JSON's own `categories` instead: any ids, things and stuff,
mapped in increasing id order onto classes 1..N, 0 void. The builder then
also writes `dataset_info.json` next to the TFRecords; a config names that
file as its dataset.
"""

import dataclasses
import os
from typing import Dict
from typing import List
from typing import Mapping
from typing import Sequence
from typing import Tuple

from absl import flags

from deeplab2_kmax.data import dataset_registry
from deeplab2_kmax.data import panoptic_conversion

DATASET = "coco_panoptic"
# Where a split's files are, relative to the dataset root.
IMAGE_DIR = "{split}2017"
PANOPTIC_DIR = "annotations/panoptic_{split}2017"
PANOPTIC_JSON = "annotations/panoptic_{split}2017.json"
# Panoptic label divisor and void class of a dataset built from its JSON.
CUSTOM_LABEL_DIVISOR = 256
_VOID = {"id": None, "name": "void", "isthing": 0, "color": [0, 0, 0]}


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


def _checked_categories(categories, source: str) -> List[Dict]:
  """The JSON's categories in increasing id order, each field checked."""
  if not isinstance(categories, list) or not categories:
    raise ValueError(f"{source}: 'categories' must be a non-empty list.")
  checked, seen = [], set()
  for n, category in enumerate(categories):
    at = f"{source}: categories[{n}]"
    if not isinstance(category, dict):
      raise ValueError(f"{at} is not an object.")
    category_id = category.get("id")
    if not isinstance(category_id, int) or isinstance(category_id, bool):
      raise ValueError(f"{at}: 'id' is {category_id!r}, expected an integer.")
    if category_id in seen:
      raise ValueError(f"{at}: id {category_id} is listed twice.")
    seen.add(category_id)
    if category.get("isthing") not in (0, 1):
      raise ValueError(f"{at} (id {category_id}): 'isthing' is "
                       f"{category.get('isthing')!r}, expected 0 or 1.")
    colour = category.get("color")
    valid_colour = (isinstance(colour, list) and len(colour) == 3 and all(
        isinstance(v, int) and 0 <= v <= 255 for v in colour))
    checked.append({"id": category_id,
                    "name": str(category.get("name", f"class_{category_id}")),
                    "isthing": int(category["isthing"]),
                    "color": colour if valid_colour else None})
  return sorted(checked, key=lambda c: c["id"])


def info_from_categories(categories: Sequence[Mapping], name: str,
                         source: str) -> dataset_registry.DatasetInfo:
  """A dataset whose classes are `categories` (void 0, then by id)."""
  classes = [_VOID] + _checked_categories(categories, source)
  palette = dataset_registry.palette(len(classes))
  return dataset_registry.DatasetInfo(
      name=name, num_classes=len(classes), ignore_label=0,
      panoptic_label_divisor=CUSTOM_LABEL_DIVISOR,
      class_has_instances=tuple(bool(c["isthing"]) for c in classes),
      splits_to_sizes={},
      class_names=tuple(c["name"] for c in classes),
      colormap=tuple(tuple(c["color"] or palette[i])
                     for i, c in enumerate(classes)),
      category_ids=tuple(c["id"] for c in classes))


def _paths(root: str, split: str, layout: Mapping[str, str]):
  return {key: os.path.join(root, template.format(split=split))
          for key, template in layout.items()}


def _items(data: Mapping, paths: Mapping[str, str]):
  image_files = {image["id"]: image["file_name"]
                 for image in data.get("images", [])}
  items = []
  for annotation in sorted(data["annotations"], key=lambda a: a["file_name"]):
    stem = os.path.splitext(annotation["file_name"])[0]
    image_file = image_files.get(annotation["image_id"], stem + ".jpg")
    items.append(panoptic_conversion.Item(
        name=os.path.splitext(image_file)[0],
        image_path=os.path.join(paths["image_dir"], image_file),
        label_path=os.path.join(paths["panoptic_dir"],
                                annotation["file_name"]),
        segments=annotation["segments_info"]))
  return items


def _layout(image_dir=IMAGE_DIR, panoptic_dir=PANOPTIC_DIR,
            panoptic_json=PANOPTIC_JSON) -> Dict[str, str]:
  return {"image_dir": image_dir, "panoptic_dir": panoptic_dir,
          "panoptic_json": panoptic_json}


def split_items(coco_root: str, split: str, layout=None):
  """Returns (items, class_map) of one split of COCO."""
  paths = _paths(coco_root, split, layout or _layout())
  data = panoptic_conversion.load_json(paths["panoptic_json"])
  class_map = class_map_from_categories(data["categories"],
                                        dataset_registry.get(DATASET),
                                        paths["panoptic_json"])
  return _items(data, paths), class_map


def _custom_dataset(root: str, splits: Sequence[str], layout, name: str
                    ) -> Tuple[dataset_registry.DatasetInfo, Dict]:
  """(info, {split: items}) of a dataset whose classes are its JSON's."""
  info, first_json, items = None, None, {}
  for split in splits:
    paths = _paths(root, split, layout)
    data = panoptic_conversion.load_json(paths["panoptic_json"])
    split_info = info_from_categories(data["categories"], name,
                                      paths["panoptic_json"])
    if info is not None and split_info != info:
      raise ValueError(f"{paths['panoptic_json']}: its categories differ "
                       f"from those of {first_json}.")
    info, first_json = split_info, paths["panoptic_json"]
    items[split] = _items(data, paths)
  return info, items


def _merge_with_existing(info, path: str, overwrite: bool):
  """`info` plus the splits an existing description file lists."""
  if not os.path.exists(path):
    return info
  old = dataset_registry.read_info_file(path)
  if old.splits_to_sizes and (
      old.class_names, old.class_has_instances, old.category_ids) != (
          info.class_names, info.class_has_instances, info.category_ids):
    if not overwrite:
      raise FileExistsError(f"{path} describes other categories; pass "
                            "--overwrite to replace it.")
    return info
  sizes = dict(old.splits_to_sizes, **info.splits_to_sizes)
  return dataclasses.replace(info, splits_to_sizes=sizes)


def build_custom(root: str, output_dir: str, splits: Sequence[str],
                 num_shards: int, treat_crowd_as_ignore: bool = True,
                 overwrite: bool = False, progress: bool = True,
                 dataset_name: str = "custom_panoptic", layout=None
                 ) -> Dict[str, List[str]]:
  """Converts a dataset with its JSON's categories; writes its description.

  `{output_dir}/dataset_info.json` lists the classes, their category ids and
  the converted splits (merged with those of an earlier run on the same
  categories).
  """
  if not os.path.isdir(root):
    raise FileNotFoundError(f"--coco_root {root!r} is not a folder.")
  info, items = _custom_dataset(root, splits, layout or _layout(),
                                dataset_name)
  info = dataclasses.replace(
      info, splits_to_sizes={s: len(v) for s, v in items.items()})
  info_path = os.path.join(output_dir, dataset_registry.INFO_FILE_NAME)
  info = _merge_with_existing(info, info_path, overwrite)
  class_map = {category_id: class_id for class_id, category_id
               in enumerate(info.category_ids) if category_id is not None}
  outputs = panoptic_conversion.build_splits(
      lambda _, split: (items[split], class_map), root, "coco_root", info,
      output_dir, splits, num_shards, treat_crowd_as_ignore, overwrite,
      progress)
  dataset_registry.write_info_file(info, dataset_name, info_path)
  return outputs


def build(coco_root: str, output_dir: str, splits: Sequence[str] = ("train",
                                                                   "val"),
          num_shards: int = 1000, treat_crowd_as_ignore: bool = True,
          overwrite: bool = False, progress: bool = True,
          categories_from_json: bool = False,
          dataset_name: str = "custom_panoptic", layout=None
          ) -> Dict[str, List[str]]:
  """Converts each split; returns its TFRecord paths.

  `layout` maps image_dir, panoptic_dir and panoptic_json to path templates
  (default: COCO's). `categories_from_json` builds a custom dataset
  (`build_custom`), named `dataset_name` in its description file.
  """
  if categories_from_json:
    return build_custom(coco_root, output_dir, splits, num_shards,
                        treat_crowd_as_ignore, overwrite, progress,
                        dataset_name, layout)
  return panoptic_conversion.build_splits(
      lambda root, split: split_items(root, split, layout), coco_root,
      "coco_root", dataset_registry.get(DATASET), output_dir, splits,
      num_shards, treat_crowd_as_ignore, overwrite, progress)


def _define_custom_flags() -> None:
  flags.DEFINE_boolean(
      "categories_from_json", False,
      "Take the classes from the JSON's categories (a custom dataset) and "
      "write dataset_info.json, instead of the fixed COCO classes.")
  flags.DEFINE_string("dataset_name", "custom_panoptic",
                      "Name written in dataset_info.json.")
  flags.DEFINE_string("image_dir", IMAGE_DIR,
                      "Images of a split, relative to --coco_root.")
  flags.DEFINE_string("panoptic_dir", PANOPTIC_DIR,
                      "Panoptic PNGs of a split, relative to --coco_root.")
  flags.DEFINE_string("panoptic_json", PANOPTIC_JSON,
                      "Panoptic JSON of a split, relative to --coco_root.")


def _build_from_flags(root, output_dir, splits, num_shards, crowd, overwrite):
  f = flags.FLAGS
  return build(root, output_dir, splits, num_shards, crowd, overwrite,
               categories_from_json=f.categories_from_json,
               dataset_name=f.dataset_name,
               layout=_layout(f.image_dir, f.panoptic_dir, f.panoptic_json))


if __name__ == "__main__":
  panoptic_conversion.define_flags("coco_root", "COCO dataset root.", 1000)
  _define_custom_flags()
  panoptic_conversion.run_cli(_build_from_flags, "coco_root")
