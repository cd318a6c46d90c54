"""mIoU against Keras' MeanIoU and a pixel loop; AP against pycocotools."""

import types

import numpy as np
from pycocotools import coco as coco_api
from pycocotools import cocoeval
from pycocotools import mask as mask_api
import pytest
import tf_keras

from deeplab2_kmax.evaluation import coco_instance_ap
from deeplab2_kmax.evaluation import mean_iou


def _pixel_loop_miou(gts, preds, num_classes, ignore):
  """IoU per class from per-pixel counts; a non-class prediction is a miss."""
  tp, gt_count, pred_count = (np.zeros(num_classes) for _ in range(3))
  for gt, pred in zip(gts, preds):
    for g, p in zip(gt.ravel(), pred.ravel()):
      if g == ignore or not 0 <= g < num_classes:
        continue
      gt_count[g] += 1
      if 0 <= p < num_classes and p != ignore:
        pred_count[p] += 1
        tp[p] += g == p
  union = gt_count + pred_count - tp
  return np.mean([tp[c] / union[c] for c in range(num_classes)
                  if c != ignore and union[c] > 0])


def test_mean_iou_matches_keras_mean_iou_as_deeplab2_calls_it():
  """DeepLab2: tf.keras MeanIoU, void ground truth -> class 0 with weight 0."""
  rng = np.random.default_rng(0)
  gts = [rng.integers(0, 5, (7, 9)) for _ in range(3)]
  preds = [rng.integers(1, 5, (7, 9)) for _ in range(3)]
  metric = mean_iou.MeanIoU(num_classes=5, ignore_label=0)
  keras = tf_keras.metrics.MeanIoU(num_classes=5)
  for gt, pred in zip(gts, preds):
    metric.update(gt, pred)
    keras.update_state(gt, pred, sample_weight=(gt != 0).astype(np.float32))
  assert metric.result()["mIoU"] == pytest.approx(float(keras.result()),
                                                  abs=1e-6)


def test_void_prediction_is_never_a_class():
  """Cityscapes: 19 classes, void 255. Clipping 255 would make it class 18."""
  gt = np.array([[18, 18, 18, 255], [3, 3, 18, 255]])
  pred = np.array([[18, 255, 255, 18], [3, 255, 255, 255]])
  metric = mean_iou.MeanIoU(num_classes=19, ignore_label=255)
  metric.update(gt, pred)
  # Class 18: 1 hit, 3 more gt pixels -> 1/4; class 3: 1 hit of 2 -> 1/2.
  assert metric.result()["mIoU"] == pytest.approx((1 / 4 + 1 / 2) / 2)
  rng = np.random.default_rng(1)
  gts = [rng.choice([0, 1, 2, 18, 255], (6, 8)) for _ in range(3)]
  preds = [rng.choice([0, 1, 2, 18, 255, -1, 40], (6, 8)) for _ in range(3)]
  metric = mean_iou.MeanIoU(num_classes=19, ignore_label=255)
  for gt, pred in zip(gts, preds):
    metric.update(gt, pred)
  assert metric.result()["mIoU"] == pytest.approx(
      _pixel_loop_miou(gts, preds, 19, 255))


def _coco_reference(images, gt_anns, dt_anns, categories):
  reference = coco_api.COCO()
  reference.dataset = {"images": images, "annotations": gt_anns,
                       "categories": [{"id": c} for c in categories]}
  reference.createIndex()
  evaluator = cocoeval.COCOeval(reference, reference.loadRes(dt_anns), "segm")
  evaluator.evaluate()
  evaluator.accumulate()
  evaluator.summarize()
  return evaluator.stats


def _rle(mask):
  return mask_api.encode(np.asfortranarray(mask.astype(np.uint8)))


def _gt_annotations(gt, image_id, things, start):
  anns = []
  for seg in np.unique(gt):
    if seg // 100 in things:
      m = gt == seg
      anns.append({"id": start + len(anns), "image_id": image_id,
                   "category_id": int(seg // 100), "segmentation": _rle(m),
                   "area": float(m.sum()), "iscrowd": int(seg % 100 == 0),
                   "bbox": list(mask_api.toBbox(_rle(m)))})
  return anns


def test_ap_equals_pycocotools_with_deeplab2_scores_and_names():
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
    gt[:2, :3] = 300  # A crowd region.
    class_conf, mask_conf = rng.random((2, 20, 24))
    metric.update(gt, pred, class_conf, mask_conf)
    images.append({"id": image_id, "height": 20, "width": 24})
    gt_anns += _gt_annotations(gt, image_id, (2, 3), len(gt_anns) + 1)
    for seg in np.unique(pred):
      if seg // 100 in (2, 3):
        m = pred == seg
        dt_anns.append({"image_id": image_id, "category_id": int(seg // 100),
                        "segmentation": _rle(m),
                        "score": class_conf[m].mean() * mask_conf[m].mean()})
  stats = _coco_reference(images, gt_anns, dt_anns, (2, 3))
  result = metric.result()
  assert list(result) == list(coco_instance_ap.METRIC_NAMES)
  assert result["AP_Mask"] == pytest.approx(stats[0], abs=1e-9)
  assert result["AP_Mask_@IoU=0.5"] == pytest.approx(stats[1], abs=1e-9)
  assert result["AP_Mask_@IoU=0.75"] == pytest.approx(stats[2], abs=1e-9)
  assert result["AR_Mask_maxdets=1"] == pytest.approx(stats[6], abs=1e-9)
  assert result["AR_Mask_large"] == pytest.approx(stats[11], abs=1e-9)
  np.testing.assert_allclose(list(result.values()), stats, atol=1e-9)
  assert 0.0 < stats[0] < 1.0


def test_score_is_class_confidence_times_mean_mask_probability():
  """The formula decides the ranking: class confidence alone gives AP 0.5.

  One instance; detection A covers it exactly (class 0.6, mask prob 0.9:
  score 0.54), detection B is a false positive (class 0.8, mask prob 0.5:
  score 0.40). Ranked by class confidence, B comes first.
  """
  info = types.SimpleNamespace(panoptic_label_divisor=100, ignore_label=0,
                               thing_class_ids=(2,))
  gt = np.full((10, 12), 100)
  gt[1:5, 1:5] = 201
  pred = np.full((10, 12), 100)
  pred[1:5, 1:5] = 201
  pred[6:9, 6:11] = 202
  class_conf = np.where(pred == 201, 0.6, np.where(pred == 202, 0.8, 0.9))
  mask_conf = np.where(pred == 201, 0.9, 0.5)
  mask_conf[1, 1] = 0.7  # A non-constant map: the mean counts.
  scores = coco_instance_ap.segment_scores(pred, class_conf, mask_conf, 100, 0)
  mean_a = (15 * 0.9 + 0.7) / 16
  assert scores[201] == pytest.approx(0.6 * mean_a)
  assert scores[202] == pytest.approx(0.8 * 0.5)
  metric = coco_instance_ap.InstanceAP(info)
  metric.update(gt, pred, class_conf, mask_conf)
  images = [{"id": 1, "height": 10, "width": 12}]
  gt_anns = _gt_annotations(gt, 1, (2,), 1)
  detections = lambda a, b: [  # pylint: disable=g-long-lambda
      {"image_id": 1, "category_id": 2, "segmentation": _rle(pred == 201),
       "score": a},
      {"image_id": 1, "category_id": 2, "segmentation": _rle(pred == 202),
       "score": b}]
  product = _coco_reference(images, gt_anns, detections(0.6 * mean_a, 0.4),
                            (2,))
  class_only = _coco_reference(images, gt_anns, detections(0.6, 0.8), (2,))
  assert metric.result()["AP_Mask"] == pytest.approx(product[0], abs=1e-9)
  assert product[0] == pytest.approx(1.0)
  assert class_only[0] == pytest.approx(0.5, abs=0.01)


def test_ap_rejects_maps_of_another_size():
  info = types.SimpleNamespace(panoptic_label_divisor=100, ignore_label=0,
                               thing_class_ids=(2,))
  metric = coco_instance_ap.InstanceAP(info)
  with pytest.raises(ValueError, match="pred_panoptic has shape"):
    metric.update(np.zeros((4, 5)), np.zeros((5, 4)), np.zeros((4, 5)),
                  np.zeros((4, 5)))
