"""mIoU against a hand-built confusion matrix; AP against pycocotools."""

import types

import numpy as np
from pycocotools import coco as coco_api
from pycocotools import cocoeval
from pycocotools import mask as mask_api
import pytest

from deeplab2_kmax.evaluation import coco_instance_ap
from deeplab2_kmax.evaluation import mean_iou


def test_mean_iou_matches_pixel_loop():
  rng = np.random.default_rng(0)
  gts = [rng.integers(0, 5, (7, 9)) for _ in range(3)]
  preds = [rng.integers(0, 5, (7, 9)) for _ in range(3)]
  metric = mean_iou.MeanIoU(num_classes=5, ignore_label=0)
  confusion = np.zeros((5, 5))
  for gt, pred in zip(gts, preds):
    metric.update(gt, pred)
    for g, p in zip(gt.ravel(), pred.ravel()):
      if g != 0:
        confusion[g, p] += 1
  ious = [confusion[c, c] / (confusion[c].sum() + confusion[:, c].sum() -
                              confusion[c, c]) for c in range(1, 5)]
  assert metric.result()["mIoU"] == pytest.approx(np.mean(ious))


def test_ap_equals_pycocotools_on_the_same_rles():
  info = types.SimpleNamespace(panoptic_label_divisor=100, ignore_label=0,
                               thing_class_ids=(2, 3))
  rng = np.random.default_rng(1)
  metric = coco_instance_ap.InstanceAP(info)
  images, gt_anns, dt_anns = [], [], []
  for image_id in range(1, 5):
    gt = np.full((20, 24), 100)  # Stuff class 1.
    pred = gt.copy()
    for k in range(1, 4):
      y, x = rng.integers(0, 14, 2)
      cls = int(rng.choice([2, 3]))
      gt[y:y + 6, x:x + 6] = cls * 100 + k
      dy, dx = rng.integers(-2, 3, 2)
      pred[max(y + dy, 0):y + dy + 6, max(x + dx, 0):x + dx + 6] = cls * 100 + k
    scores = rng.random((20, 24))
    metric.update(gt, pred, scores)
    images.append({"id": image_id, "height": 20, "width": 24})
    for seg in np.unique(gt):
      if seg // 100 in (2, 3):
        m = np.asfortranarray((gt == seg).astype(np.uint8))
        rle = mask_api.encode(m)
        gt_anns.append({"id": len(gt_anns) + 1, "image_id": image_id,
                        "category_id": int(seg // 100), "segmentation": rle,
                        "area": float(m.sum()), "iscrowd": 0,
                        "bbox": list(mask_api.toBbox(rle))})
    for seg in np.unique(pred):
      if seg // 100 in (2, 3):
        m = pred == seg
        dt_anns.append({"image_id": image_id, "category_id": int(seg // 100),
                        "segmentation": mask_api.encode(
                            np.asfortranarray(m.astype(np.uint8))),
                        "score": float(scores[m].mean())})
  reference = coco_api.COCO()
  reference.dataset = {"images": images, "annotations": gt_anns,
                       "categories": [{"id": 2}, {"id": 3}]}
  reference.createIndex()
  evaluator = cocoeval.COCOeval(reference, reference.loadRes(dt_anns), "segm")
  evaluator.evaluate()
  evaluator.accumulate()
  evaluator.summarize()
  assert metric.result()["AP"] == pytest.approx(evaluator.stats[0], abs=1e-9)
  assert 0.0 < evaluator.stats[0] < 1.0
