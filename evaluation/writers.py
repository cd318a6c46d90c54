"""Prediction writers: COCO panoptic format (PNG + JSON), SPEC §7.

`CocoPanopticWriter` turns panoptic maps (class * divisor + instance) into
the files panopticapi reads: one RGB PNG per image (segment id = R + 256 G +
256^2 B) and a JSON with `segments_info` per image. Segment ids are
1..number of segments; void pixels get 0. Evaluate them with
`python -m deeplab2_kmax.evaluation.evaluate_panoptic` or panopticapi.
"""

import json
import os
from typing import List

import numpy as np
from PIL import Image


class CocoPanopticWriter:
  """Accumulates predictions; `close()` writes the JSON."""

  def __init__(self, output_dir: str, label_divisor: int, void_label: int,
               categories: List[dict], name: str = "predictions"):
    self._png_dir = os.path.join(output_dir, name)
    self._json_path = os.path.join(output_dir, name + ".json")
    if os.path.exists(self._json_path):
      raise FileExistsError(f"{self._json_path}: predictions already exist; "
                            "choose another directory")
    os.makedirs(self._png_dir, exist_ok=True)
    self._divisor = label_divisor
    self._void = void_label
    self._categories = categories
    self._annotations = []

  def add(self, image_id: str, panoptic: np.ndarray,
          scores: np.ndarray = None):
    """Writes one image's PNG; `scores` (optional) average per segment."""
    panoptic = np.asarray(panoptic, np.int64)
    ids = np.zeros(panoptic.shape, np.int64)
    segments = []
    for label in np.unique(panoptic):
      category = int(label // self._divisor)
      if category == self._void:
        continue
      region = panoptic == label
      segment_id = len(segments) + 1
      ids[region] = segment_id
      rows, cols = np.nonzero(region)
      info = {"id": segment_id, "category_id": category,
              "area": int(region.sum()), "iscrowd": 0,
              "bbox": [int(cols.min()), int(rows.min()),
                       int(cols.max() - cols.min() + 1),
                       int(rows.max() - rows.min() + 1)]}
      if scores is not None:
        info["score"] = float(np.asarray(scores)[region].mean())
      segments.append(info)
    file_name = f"{image_id}.png"
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1)
    Image.fromarray(rgb.astype(np.uint8)).save(
        os.path.join(self._png_dir, file_name))
    self._annotations.append({"image_id": image_id, "file_name": file_name,
                              "segments_info": segments})

  def close(self) -> str:
    with open(self._json_path, "w") as f:
      json.dump({"annotations": self._annotations,
                 "categories": self._categories}, f)
    return self._json_path
