"""The datasets the library knows, declared in one place (SPEC §5).

A new dataset is one more `DatasetInfo` in `_DATASETS`; nothing else in the
library branches on dataset names.
"""

import dataclasses
from typing import Dict
from typing import Optional
from typing import Tuple

from deeplab2_kmax.data import ade20k_classes


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

  @property
  def thing_class_ids(self) -> Tuple[int, ...]:
    return tuple(i for i, t in enumerate(self.class_has_instances) if t)

  @property
  def stuff_class_ids(self) -> Tuple[int, ...]:
    return tuple(
        i for i, t in enumerate(self.class_has_instances)
        if not t and i != self.ignore_label)


def _palette(n: int) -> Tuple[Tuple[int, int, int], ...]:
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

_CITYSCAPES_CLASS_NAMES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
    "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car",
    "truck", "bus", "train", "motorcycle", "bicycle")
_CITYSCAPES_COLORMAP = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156),
    (190, 153, 153), (153, 153, 153), (250, 170, 30), (220, 220, 0),
    (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
    (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100),
    (0, 0, 230), (119, 11, 32))

# Synthetic (SPEC §5): void 0, stuff 1..3, things 4..8.
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
            colormap=_palette(134),
            max_image_size=(640, 640),
        ),
        DatasetInfo(
            name="cityscapes_panoptic",
            num_classes=19,
            ignore_label=255,
            panoptic_label_divisor=1000,
            class_has_instances=(False,) * 11 + (True,) * 8,
            splits_to_sizes={"train_fine": 2975, "val_fine": 500,
                             "trainval_fine": 3475, "test_fine": 1525},
            class_names=_CITYSCAPES_CLASS_NAMES,
            colormap=_CITYSCAPES_COLORMAP,
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
                      (178, 34, 34)) + _palette(16)[3:8],
        ),
    )
}


def names() -> Tuple[str, ...]:
  return tuple(sorted(_DATASETS))


def get(name: str) -> DatasetInfo:
  """Returns the `DatasetInfo` called `name`; raises a ValueError listing the known ones."""
  try:
    return _DATASETS[name]
  except KeyError:
    raise ValueError(
        f"Unknown dataset {name!r}; known datasets: {', '.join(names())}."
    ) from None
