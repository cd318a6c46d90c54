"""The datasets the library knows, declared in one place.

A new dataset is one more `DatasetInfo` in `_DATASETS`, or, without editing
the library, a dataset description file (`dataset_info.json`, written by
`build_coco_data --categories_from_json`) whose path a config gives as its
dataset name (docs/custom_dataset.md). Nothing else in the library branches
on dataset names.
"""

import dataclasses
import json
import os
from typing import Dict
from typing import List
from typing import Mapping
from typing import Optional
from typing import Tuple

from deeplab2_kmax.data import ade20k_classes
from deeplab2_kmax.data import cityscapes_classes


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """Static facts about a panoptic dataset.

  Attributes:
    name: Registry key, used by configs (`dataset: "coco_panoptic"`).
    num_classes: Number of semantic classes the model predicts (the void
      label counts when it is one of 0..num_classes-1, as in COCO).
    ignore_label: Semantic label of void / unlabelled pixels.
    panoptic_label_divisor: Panoptic id = semantic * divisor + instance.
    class_has_instances: Per class, whether it is a "thing" class.
    splits_to_sizes: Number of images per split.
    class_names: One name per class id.
    colormap: One RGB colour per class id, for visualisation.
    max_image_size: (height, width) no image of the dataset exceeds, where
      the dataset fixes it (None: unknown, e.g. ADE20K's images vary).
    category_ids: Per class, its category id in the source annotations
      (None for void); set for datasets described by a file.
  """

  name: str
  num_classes: int
  ignore_label: int
  panoptic_label_divisor: int
  class_has_instances: Tuple[bool, ...]
  splits_to_sizes: Dict[str, int]
  class_names: Tuple[str, ...]
  colormap: Tuple[Tuple[int, int, int], ...]
  max_image_size: Optional[Tuple[int, int]] = None
  category_ids: Optional[Tuple[Optional[int], ...]] = None

  @property
  def thing_class_ids(self) -> Tuple[int, ...]:
    return tuple(i for i, t in enumerate(self.class_has_instances) if t)

  @property
  def stuff_class_ids(self) -> Tuple[int, ...]:
    return tuple(
        i for i, t in enumerate(self.class_has_instances)
        if not t and i != self.ignore_label)


def palette(n: int) -> Tuple[Tuple[int, int, int], ...]:
  """A deterministic, well-spread palette (PASCAL VOC bit-interleaving)."""
  colours = []
  for i in range(n):
    r = g = b = 0
    c = i
    for j in range(8):
      r |= ((c >> 0) & 1) << (7 - j)
      g |= ((c >> 1) & 1) << (7 - j)
      b |= ((c >> 2) & 1) << (7 - j)
      c >>= 3
    colours.append((r, g, b))
  return tuple(colours)


# COCO panoptic: 133 categories remapped to contiguous ids 1..133 (80 things
# first, then 53 stuff), 0 is void.
_COCO_NUM_THINGS = 80
_COCO_NUM_STUFF = 53
_COCO_CLASS_HAS_INSTANCES = (
    (False,) + (True,) * _COCO_NUM_THINGS + (False,) * _COCO_NUM_STUFF)

# Synthetic: void 0, stuff 1..3, things 4..8.
SYNTHETIC_STUFF_CLASSES = ("sky", "ground", "wall")
SYNTHETIC_THING_CLASSES = ("disc", "square", "triangle", "star", "ellipse")
_SYNTHETIC_CLASS_NAMES = (("void",) + SYNTHETIC_STUFF_CLASSES +
                          SYNTHETIC_THING_CLASSES)

_DATASETS = {
    info.name: info for info in (
        DatasetInfo(
            name="coco_panoptic",
            num_classes=1 + _COCO_NUM_THINGS + _COCO_NUM_STUFF,
            ignore_label=0,
            panoptic_label_divisor=256,
            class_has_instances=_COCO_CLASS_HAS_INSTANCES,
            splits_to_sizes={"train": 118287, "val": 5000, "test": 40670},
            class_names=tuple(f"class_{i}" for i in range(134)),
            colormap=palette(134),
            max_image_size=(640, 640),
        ),
        # Cityscapes: the 19 evaluated classes by train id, void 255.
        DatasetInfo(
            name="cityscapes_panoptic",
            num_classes=len(cityscapes_classes.NAMES),
            ignore_label=255,
            panoptic_label_divisor=1000,
            class_has_instances=cityscapes_classes.HAS_INSTANCES,
            splits_to_sizes={"train_fine": 2975, "val_fine": 500,
                             "trainval_fine": 3475, "test_fine": 1525},
            class_names=cityscapes_classes.NAMES,
            colormap=cityscapes_classes.COLORMAP,
            max_image_size=(1024, 2048),
        ),
        # ADE20K panoptic (ADEChallengeData2016): void 0, the 150
        # SceneParse150 categories as classes 1..150 (100 things, 50 stuff).
        DatasetInfo(
            name="ade20k_panoptic",
            num_classes=len(ade20k_classes.NAMES),
            ignore_label=0,
            panoptic_label_divisor=1000,
            class_has_instances=ade20k_classes.HAS_INSTANCES,
            splits_to_sizes={"train": 20210, "val": 2000},
            class_names=ade20k_classes.NAMES,
            colormap=ade20k_classes.COLORMAP,
        ),
        DatasetInfo(
            name="synthetic_panoptic",
            num_classes=len(_SYNTHETIC_CLASS_NAMES),
            ignore_label=0,
            panoptic_label_divisor=256,
            class_has_instances=(False,) * (1 + len(SYNTHETIC_STUFF_CLASSES)) +
            (True,) * len(SYNTHETIC_THING_CLASSES),
            splits_to_sizes={"train": 2000, "val": 200},
            class_names=_SYNTHETIC_CLASS_NAMES,
            colormap=((0, 0, 0), (135, 206, 235), (139, 90, 43),
                      (178, 34, 34)) + palette(16)[3:8],
        ),
    )
}


def names() -> Tuple[str, ...]:
  return tuple(sorted(_DATASETS))


def get(name: str) -> DatasetInfo:
  """The `DatasetInfo` called `name`, or described by the file `name`.

  A name ending in `.json` is the path of a dataset description file
  (`write_info_file`); the returned info's `name` is its absolute path.

  Raises:
    ValueError: an unknown name (the message lists the known ones), or a
      description file that is missing or malformed (the message names it).
  """
  if is_info_file(name):
    return read_info_file(name)
  try:
    return _DATASETS[name]
  except KeyError:
    raise ValueError(
        f"Unknown dataset {name!r}; known datasets: {', '.join(names())}, "
        "or the path of a dataset_info.json (docs/custom_dataset.md)."
    ) from None


# The description file a builder writes next to its TFRecords.
INFO_FILE_NAME = "dataset_info.json"
_INFO_FILE_VERSION = 1


def is_info_file(name: str) -> bool:
  return name.endswith(".json")


def info_file_content(info: DatasetInfo, title: str) -> Dict:
  """The JSON object describing `info`; `title` is a name for people."""
  classes = []
  for class_id in range(info.num_classes):
    classes.append({
        "train_id": class_id,
        "category_id": (info.category_ids[class_id]
                        if info.category_ids else None),
        "name": info.class_names[class_id],
        "isthing": info.class_has_instances[class_id],
        "color": list(info.colormap[class_id]),
    })
  return {
      "format_version": _INFO_FILE_VERSION,
      "name": title,
      "num_classes": info.num_classes,
      "ignore_label": info.ignore_label,
      "panoptic_label_divisor": info.panoptic_label_divisor,
      "splits_to_sizes": dict(info.splits_to_sizes),
      "classes": classes,
  }


def write_info_file(info: DatasetInfo, title: str, path: str) -> None:
  """Writes the description of `info`, one field (and one class) a line."""
  content = info_file_content(info, title)
  classes = content.pop("classes")
  lines = [f"  {json.dumps(key)}: {json.dumps(value)}"
           for key, value in content.items()]
  lines.append('  "classes": [\n' + ",\n".join(
      f"    {json.dumps(entry)}" for entry in classes) + "\n  ]")
  with open(path, "w", encoding="utf-8") as f:
    f.write("{\n" + ",\n".join(lines) + "\n}\n")


def _field(data: Mapping, key: str, kind, where: str):
  value = data.get(key)
  if not isinstance(value, kind) or isinstance(value, bool) != (kind is bool):
    raise ValueError(f"{where}: field {key!r} is {value!r}, expected "
                     f"{getattr(kind, '__name__', kind)}.")
  return value


def _read_classes(classes: List, where: str):
  """(names, has_instances, colours, category ids) from the `classes` list."""
  names_, things, colours, category_ids = [], [], [], []
  for train_id, entry in enumerate(classes):
    at = f"{where}: classes[{train_id}]"
    if not isinstance(entry, dict):
      raise ValueError(f"{at} is not an object.")
    if _field(entry, "train_id", int, at) != train_id:
      raise ValueError(f"{at}: train_id {entry['train_id']} is not its "
                       f"position {train_id}.")
    names_.append(_field(entry, "name", str, at))
    things.append(_field(entry, "isthing", bool, at))
    colour = entry.get("color")
    if (not isinstance(colour, list) or len(colour) != 3 or
        not all(isinstance(v, int) and 0 <= v <= 255 for v in colour)):
      raise ValueError(f"{at}: field 'color' is {colour!r}, expected 3 "
                       "integers in 0..255.")
    colours.append(tuple(colour))
    category_id = entry.get("category_id")
    if category_id is not None:
      category_id = _field(entry, "category_id", int, at)
    category_ids.append(category_id)
  return names_, things, colours, category_ids


def read_info_file(path: str) -> DatasetInfo:
  """The `DatasetInfo` in the description file `path` (see `get`)."""
  path = os.path.abspath(path)
  if not os.path.isfile(path):
    raise ValueError(f"Dataset description file not found: {path}")
  try:
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
  except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"Cannot read dataset description file {path}: {e}"
                     ) from None
  if not isinstance(data, dict):
    raise ValueError(f"{path}: expected a JSON object.")
  if data.get("format_version") != _INFO_FILE_VERSION:
    raise ValueError(f"{path}: field 'format_version' is "
                     f"{data.get('format_version')!r}, expected "
                     f"{_INFO_FILE_VERSION}.")
  num_classes = _field(data, "num_classes", int, path)
  ignore_label = _field(data, "ignore_label", int, path)
  divisor = _field(data, "panoptic_label_divisor", int, path)
  classes = _field(data, "classes", list, path)
  sizes = _field(data, "splits_to_sizes", dict, path)
  if len(classes) != num_classes or num_classes < 2:
    raise ValueError(f"{path}: {len(classes)} classes listed, num_classes "
                     f"is {num_classes} (at least 2: void and one class).")
  if divisor < 2:
    raise ValueError(f"{path}: panoptic_label_divisor {divisor} must be > 1.")
  names_, things, colours, category_ids = _read_classes(classes, path)
  if 0 <= ignore_label < num_classes and things[ignore_label]:
    raise ValueError(f"{path}: the ignore label {ignore_label} is a thing.")
  return DatasetInfo(
      name=path, num_classes=num_classes, ignore_label=ignore_label,
      panoptic_label_divisor=divisor, class_has_instances=tuple(things),
      splits_to_sizes=sizes, class_names=tuple(names_),
      colormap=tuple(colours), category_ids=tuple(category_ids))
