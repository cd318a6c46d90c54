"""COCO mask AP of thing classes from panoptic predictions (pycocotools).

As DeepLab2 scores a panoptic prediction for instance segmentation: every
predicted segment of a thing class is a detection, scored by

  score = mean over the segment of the pasted slot's class confidence
          x mean over the segment of the max mask probability,

i.e. class confidence x mean mask probability, since the first factor is
constant over a segment. Ground-truth thing segments are the instances
(instance id 0 marks a crowd region, `iscrowd=1`). The numbers are
pycocotools' `COCOeval(iouType='segm')` stats, under DeepLab2's names.
"""

import contextlib
import io
from typing import Dict

import numpy as np
from pycocotools import coco as coco_api
from pycocotools import cocoeval
from pycocotools import mask as mask_api

# DeepLab2's evaluator names of COCOeval.stats[0..11].
METRIC_NAMES = (
    "AP_Mask", "AP_Mask_@IoU=0.5", "AP_Mask_@IoU=0.75", "AP_Mask_small",
    "AP_Mask_medium", "AP_Mask_large", "AR_Mask_maxdets=1",
    "AR_Mask_maxdets=10", "AR_Mask_maxdets=100", "AR_Mask_small",
    "AR_Mask_medium", "AR_Mask_large")


def _rle(mask: np.ndarray) -> dict:
  rle = mask_api.encode(np.asfortranarray(mask.astype(np.uint8)))
  rle["counts"] = rle["counts"].decode("ascii")
  return rle


def segment_scores(panoptic: np.ndarray, class_confidence: np.ndarray,
                   mask_confidence: np.ndarray, label_divisor: int,
                   void_label: int) -> Dict[int, float]:
  """Panoptic id -> detection score of every non-void predicted segment.

  Args:
    panoptic: [H, W] predicted panoptic map.
    class_confidence: [H, W] class confidence of the slot pasted at each
      pixel (the post-processor's `semantic_scores`).
    mask_confidence: [H, W] max mask probability over slots (the
      post-processor's `instance_scores`).
    label_divisor: Panoptic label divisor.
    void_label: Semantic label of void pixels (not a segment).

  Returns:
    {panoptic id: mean class confidence x mean mask confidence}.
  """
  labels, index, areas = np.unique(np.asarray(panoptic).ravel(),
                                   return_inverse=True, return_counts=True)
  index = index.ravel()
  means = [np.bincount(index, weights=np.asarray(m, np.float64).ravel(),
                       minlength=labels.size) / areas
           for m in (class_confidence, mask_confidence)]
  return {int(label): float(means[0][i] * means[1][i])
          for i, label in enumerate(labels)
          if label // label_divisor != void_label}


class InstanceAP:
  """Accumulates per-image instances; `result()` runs COCOeval."""

  def __init__(self, dataset_info):
    self._divisor = dataset_info.panoptic_label_divisor
    self._ignore = dataset_info.ignore_label
    self._things = set(dataset_info.thing_class_ids)
    self._images, self._gt, self._detections = [], [], []

  def update(self, gt_panoptic: np.ndarray, pred_panoptic: np.ndarray,
             class_confidence: np.ndarray, mask_confidence: np.ndarray):
    """Adds one image; the maps share the ground truth's [H, W] shape."""
    gt_panoptic = np.asarray(gt_panoptic)
    for name, value in (("pred_panoptic", pred_panoptic),
                        ("class_confidence", class_confidence),
                        ("mask_confidence", mask_confidence)):
      if np.shape(value) != gt_panoptic.shape:
        raise ValueError(f"{name} has shape {np.shape(value)}, the ground "
                         f"truth {gt_panoptic.shape}.")
    image_id = len(self._images) + 1
    height, width = gt_panoptic.shape
    self._images.append({"id": image_id, "height": height, "width": width})
    for seg in np.unique(gt_panoptic):
      cls = int(seg // self._divisor)
      if cls not in self._things:
        continue
      mask = gt_panoptic == seg
      self._gt.append({
          "id": len(self._gt) + 1, "image_id": image_id, "category_id": cls,
          "segmentation": _rle(mask), "area": float(mask.sum()),
          "bbox": list(mask_api.toBbox(_rle(mask))),
          "iscrowd": int(seg % self._divisor == 0)})
    scores = segment_scores(pred_panoptic, class_confidence, mask_confidence,
                            self._divisor, self._ignore)
    for seg, score in scores.items():
      cls = seg // self._divisor
      if cls in self._things:
        self._detections.append({
            "image_id": image_id, "category_id": cls,
            "segmentation": _rle(np.asarray(pred_panoptic) == seg),
            "score": score})

  def result(self) -> Dict[str, float]:
    """The 12 COCOeval stats (all 0 without detections or instances)."""
    if not self._detections or not self._gt:
      return {name: 0.0 for name in METRIC_NAMES}
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
    return {name: float(value)
            for name, value in zip(METRIC_NAMES, evaluator.stats)}
