"""Prediction writers: COCO panoptic and Cityscapes formats.

`CocoPanopticWriter` turns panoptic maps (class * divisor + instance) into
the files panopticapi reads: one RGB PNG per image (segment id = R + 256 G +
256^2 B) and a JSON with `segments_info` per image. Segment ids are
1..number of segments; void pixels get 0. Evaluate them with
`python -m deeplab2_kmax.evaluation.evaluate_panoptic` or panopticapi.

`CityscapesPanopticWriter` writes what cityscapesscripts evaluates: the same
PNG + JSON layout with Cityscapes label ids as categories and the segment ids
of `createPanopticImgs` (stuff: label id; thing: label id * 1000 + k), plus a
`*_labelIds.png` semantic map per image for the pixel-level benchmark.
"""

import json
import os
from typing import List
from typing import Mapping
from typing import Optional
from typing import Sequence

import numpy as np
from PIL import Image

from deeplab2_kmax.data import cityscapes_classes

# Cityscapes train id (the 19 evaluated classes, our class index) -> label id.
CITYSCAPES_TRAIN_ID_TO_LABEL_ID = cityscapes_classes.TRAIN_ID_TO_LABEL_ID


def id_to_rgb(ids: np.ndarray) -> np.ndarray:
  """Segment ids -> the RGB encoding of the COCO panoptic format."""
  ids = np.asarray(ids, np.int64)
  return np.stack([ids % 256, ids // 256 % 256, ids // 65536],
                  -1).astype(np.uint8)


class CocoPanopticWriter:
  """Accumulates predictions; `close()` writes the JSON.

  `category_ids[c]` is the category id written for class index `c` (default:
  the class index itself), e.g. the original COCO ids when the model's
  classes are contiguous.
  """

  def __init__(self, output_dir: str, label_divisor: int, void_label: int,
               categories: List[dict], name: str = "predictions",
               category_ids: Optional[Sequence[int]] = None):
    self._png_dir = os.path.join(output_dir, name)
    self._json_path = os.path.join(output_dir, name + ".json")
    if os.path.exists(self._json_path):
      raise FileExistsError(f"{self._json_path}: predictions already exist; "
                            "choose another directory")
    os.makedirs(self._png_dir, exist_ok=True)
    self._divisor = label_divisor
    self._void = void_label
    self._categories = categories
    self._category_ids = category_ids
    self._annotations = []

  def _category_id(self, class_id: int) -> int:
    if self._category_ids is None:
      return class_id
    return int(self._category_ids[class_id])

  def _segment_id(self, category_id: int, instance: int, index: int) -> int:
    """Id of the `index`-th segment of an image (1-based)."""
    del category_id, instance
    return index

  def _file_name(self, image_id) -> str:
    return f"{image_id}.png"

  def add(self, image_id, panoptic: np.ndarray,
          segment_scores: Optional[Mapping[int, float]] = None):
    """Writes one image's PNG; `segment_scores`: panoptic id -> "score"."""
    panoptic = np.asarray(panoptic, np.int64)
    ids = np.zeros(panoptic.shape, np.int64)
    segments = []
    for label in np.unique(panoptic):
      class_id = int(label // self._divisor)
      if class_id == self._void:
        continue
      region = panoptic == label
      category_id = self._category_id(class_id)
      segment_id = self._segment_id(category_id, int(label % self._divisor),
                                    len(segments) + 1)
      ids[region] = segment_id
      rows, cols = np.nonzero(region)
      info = {"id": segment_id, "category_id": category_id,
              "area": int(region.sum()), "iscrowd": 0,
              "bbox": [int(cols.min()), int(rows.min()),
                       int(cols.max() - cols.min() + 1),
                       int(rows.max() - rows.min() + 1)]}
      if segment_scores is not None and int(label) in segment_scores:
        info["score"] = float(segment_scores[int(label)])
      segments.append(info)
    file_name = self._file_name(image_id)
    Image.fromarray(id_to_rgb(ids)).save(os.path.join(self._png_dir,
                                                      file_name))
    self._annotations.append({"image_id": image_id, "file_name": file_name,
                              "segments_info": segments})
    return ids

  def close(self) -> str:
    with open(self._json_path, "w") as f:
      json.dump({"annotations": self._annotations,
                 "categories": self._categories}, f)
    return self._json_path


class CityscapesPanopticWriter(CocoPanopticWriter):
  """Cityscapes panoptic (label ids) + `*_labelIds.png` semantic maps.

  Expects panoptic maps over the 19 train ids (class * divisor + instance,
  void class `void_label`), as the model predicts them.
  """

  def __init__(self, output_dir: str, label_divisor: int, void_label: int,
               class_names: Sequence[str], class_has_instances: Sequence[bool],
               name: str = "predictions"):
    categories = [{"id": label_id, "name": class_names[train_id],
                   "isthing": int(class_has_instances[train_id])}
                  for train_id, label_id in enumerate(
                      CITYSCAPES_TRAIN_ID_TO_LABEL_ID)]
    super().__init__(output_dir, label_divisor, void_label, categories, name,
                     CITYSCAPES_TRAIN_ID_TO_LABEL_ID)
    self._is_thing = {CITYSCAPES_TRAIN_ID_TO_LABEL_ID[i]: bool(has)
                      for i, has in enumerate(class_has_instances)}
    self._stuff_train_ids = [i for i, has in enumerate(class_has_instances)
                             if not has]
    self._semantic_dir = os.path.join(output_dir, name + "_labelIds")
    os.makedirs(self._semantic_dir, exist_ok=True)
    self._thing_counts = {}

  def _segment_id(self, category_id: int, instance: int, index: int) -> int:
    del instance, index
    if not self._is_thing[category_id]:
      return category_id
    count = self._thing_counts.get(category_id, 0) + 1
    self._thing_counts[category_id] = count
    return category_id * 1000 + count

  def _file_name(self, image_id) -> str:
    return f"{image_id}_panoptic.png"

  def add(self, image_id, panoptic: np.ndarray,
          segment_scores: Optional[Mapping[int, float]] = None):
    self._thing_counts = {}
    panoptic = np.asarray(panoptic, np.int64)
    classes = panoptic // self._divisor
    # A stuff class is one segment, whatever instance ids it carries.
    panoptic = np.where(np.isin(classes, self._stuff_train_ids),
                        classes * self._divisor, panoptic)
    ids = super().add(image_id, panoptic, segment_scores)
    # Label id of every pixel: stuff ids are label ids, things carry * 1000;
    # void (0) stays 0 ("unlabeled").
    label_ids = np.where(ids >= 1000, ids // 1000, ids).astype(np.uint8)
    Image.fromarray(label_ids).save(
        os.path.join(self._semantic_dir, f"{image_id}_labelIds.png"))
    return ids
