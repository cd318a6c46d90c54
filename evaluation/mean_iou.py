"""Streaming mean IoU from a confusion matrix (void pixels ignored)."""

from typing import Dict

import numpy as np


class MeanIoU:
  """Accumulates a [C, C] confusion matrix with one bincount per image."""

  def __init__(self, num_classes: int, ignore_label: int):
    self._num_classes = num_classes
    self._ignore_label = ignore_label
    self.confusion = np.zeros((num_classes, num_classes), np.int64)

  def update(self, gt_semantic: np.ndarray, pred_semantic: np.ndarray):
    gt = np.asarray(gt_semantic, np.int64).ravel()
    pred = np.asarray(pred_semantic, np.int64).ravel()
    keep = (gt != self._ignore_label) & (gt >= 0) & (gt < self._num_classes)
    pred = np.clip(pred[keep], 0, self._num_classes - 1)
    self.confusion += np.bincount(
        gt[keep] * self._num_classes + pred,
        minlength=self._num_classes**2).reshape(self._num_classes, -1)

  def result(self) -> Dict[str, float]:
    """mIoU over classes present in the ground truth or the prediction."""
    tp = np.diag(self.confusion).astype(np.float64)
    union = self.confusion.sum(0) + self.confusion.sum(1) - tp
    classes = [c for c in range(self._num_classes)
               if c != self._ignore_label and union[c] > 0]
    iou = tp[classes] / union[classes]
    return {"mIoU": float(iou.mean()) if classes else 0.0}
