"""Streaming mean IoU from a confusion matrix, as DeepLab2 reports it.

Pixels whose ground truth is void are ignored. A predicted label that is not
a class (the void label, or outside 0..num_classes-1) is never counted as a
prediction of any class: it only costs the ground-truth class its pixel (a
false negative). The mean is over the classes with a non-empty union.
"""

from typing import Dict

import numpy as np


class MeanIoU:
  """Accumulates a [C, C + 1] confusion matrix (last column: void) per image."""

  def __init__(self, num_classes: int, ignore_label: int):
    self._num_classes = num_classes
    self._ignore_label = ignore_label
    self.confusion = np.zeros((num_classes, num_classes + 1), np.int64)

  def update(self, gt_semantic: np.ndarray, pred_semantic: np.ndarray):
    gt = np.asarray(gt_semantic, np.int64).ravel()
    pred = np.asarray(pred_semantic, np.int64).ravel()
    if gt.shape != pred.shape:
      raise ValueError(f"gt_semantic has {gt.size} pixels, pred_semantic "
                       f"{pred.size}: they must have the same shape.")
    num = self._num_classes
    keep = (gt != self._ignore_label) & (gt >= 0) & (gt < num)
    gt, pred = gt[keep], pred[keep]
    void = (pred < 0) | (pred >= num) | (pred == self._ignore_label)
    pred = np.where(void, num, pred)
    self.confusion += np.bincount(
        gt * (num + 1) + pred, minlength=num * (num + 1)).reshape(num, num + 1)

  def result(self) -> Dict[str, float]:
    """mIoU over classes present in the ground truth or the prediction."""
    tp = np.diag(self.confusion[:, :-1]).astype(np.float64)
    union = self.confusion.sum(1) + self.confusion[:, :-1].sum(0) - tp
    classes = [c for c in range(self._num_classes)
               if c != self._ignore_label and union[c] > 0]
    iou = tp[classes] / union[classes]
    return {"mIoU": float(iou.mean()) if classes else 0.0}
