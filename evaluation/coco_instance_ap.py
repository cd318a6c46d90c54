"""COCO mask AP of thing classes from panoptic predictions (pycocotools).

Each predicted thing segment is a detection whose score is the class
confidence of the slot that produced it; ground-truth thing segments are the
instances (instance id 0 marks a crowd region, `iscrowd=1`). The numbers are
pycocotools' `COCOeval(iouType='segm')` on these RLEs.
"""

import contextlib
import io
from typing import Dict

import numpy as np
from pycocotools import coco as coco_api
from pycocotools import cocoeval
from pycocotools import mask as mask_api


def _rle(mask: np.ndarray) -> dict:
  rle = mask_api.encode(np.asfortranarray(mask.astype(np.uint8)))
  rle["counts"] = rle["counts"].decode("ascii")
  return rle


class InstanceAP:
  """Accumulates per-image instances; `result()` runs COCOeval."""

  def __init__(self, dataset_info):
    self._divisor = dataset_info.panoptic_label_divisor
    self._ignore = dataset_info.ignore_label
    self._things = set(dataset_info.thing_class_ids)
    self._images, self._gt, self._detections = [], [], []

  def update(self, gt_panoptic: np.ndarray, pred_panoptic: np.ndarray,
             scores: np.ndarray):
    image_id = len(self._images) + 1
    height, width = gt_panoptic.shape
    self._images.append({"id": image_id, "height": height, "width": width})
    for seg in np.unique(gt_panoptic):
      cls = int(seg // self._divisor)
      if cls == self._ignore or cls not in self._things:
        continue
      mask = gt_panoptic == seg
      self._gt.append({
          "id": len(self._gt) + 1, "image_id": image_id, "category_id": cls,
          "segmentation": _rle(mask), "area": float(mask.sum()),
          "bbox": list(mask_api.toBbox(_rle(mask))),
          "iscrowd": int(seg % self._divisor == 0)})
    for seg in np.unique(pred_panoptic):
      cls = int(seg // self._divisor)
      if cls not in self._things or seg % self._divisor == 0:
        continue
      mask = pred_panoptic == seg
      self._detections.append({
          "image_id": image_id, "category_id": cls,
          "segmentation": _rle(mask), "score": float(scores[mask].mean())})

  def result(self) -> Dict[str, float]:
    if not self._detections or not self._gt:
      return {"AP": 0.0, "AP50": 0.0}
    gt = coco_api.COCO()
    gt.dataset = {"images": self._images, "annotations": self._gt,
                  "categories": [{"id": c} for c in sorted(self._things)]}
    with contextlib.redirect_stdout(io.StringIO()):
      gt.createIndex()
      detections = gt.loadRes(self._detections)
      evaluator = cocoeval.COCOeval(gt, detections, iouType="segm")
      evaluator.evaluate()
      evaluator.accumulate()
      evaluator.summarize()
    return {"AP": float(evaluator.stats[0]), "AP50": float(evaluator.stats[1])}
