"""PQ and mIoU at ADE20K's label space: 151 classes, void 0, divisor 1000.

The generated cases of panoptic_cases (crowd, void, FP-only / FN-only
classes, IoUs exactly on 0.5) are relabelled into ADE20K's classes, up to
class 150, with instance ids spread over 1..996 (many above COCO's divisor
256).
The evaluator's metrics, set up from the `ade20k_panoptic` registry entry as
the evaluator sets them up, must equal panopticapi's pq_compute and a NumPy
mIoU.
"""

import numpy as np
import panoptic_cases as cases
import pytest

from deeplab2_kmax.data import dataset_registry
from deeplab2_kmax.evaluation import evaluate_panoptic
from deeplab2_kmax.evaluation import mean_iou
from deeplab2_kmax.evaluation import panoptic_quality

pytest.importorskip("panopticapi.evaluation")

INFO = dataset_registry.get("ade20k_panoptic")
DIVISOR = INFO.panoptic_label_divisor
# The generator's classes -> ADE20K classes of the same kind (things to
# things, stuff to stuff), the last thing and stuff classes among them.
_CLASS_MAP = {0: 0}
_CLASS_MAP.update(zip(cases.STUFF, (1, 3, INFO.stuff_class_ids[-1], 47)))
_CLASS_MAP.update(zip(cases.THINGS, (13, 20, INFO.thing_class_ids[-1], 37, 99)))


def _relabel(panoptic):
  """class c, instance i -> ADE20K class, instance 7 i mod 997 (injective
  on 1..255; crowd 0 stays 0)."""
  classes = np.vectorize(_CLASS_MAP.get)(panoptic // cases.DIVISOR)
  return classes * DIVISOR + (panoptic % cases.DIVISOR) * 7 % 997


def _segments(ids):
  """COCO segments of an ADE20K-encoded map (ids are the panoptic ids)."""
  things = set(INFO.thing_class_ids)
  return [{"id": int(seg), "category_id": int(seg // DIVISOR),
           "iscrowd": int(seg // DIVISOR in things and seg % DIVISOR == 0),
           "area": int(area)}
          for seg, area in zip(*np.unique(ids, return_counts=True))
          if seg != 0]


def _pairs(seed):
  rng = np.random.default_rng(seed)
  pairs = []
  for _ in range(8):
    gt = cases.scene(rng, 20, 28)
    pairs.append((gt, cases.prediction(rng, gt)))
  gt, pred, exact = cases.boundary_scene(rng, 24)
  assert exact > 0  # IoUs or ignore shares exactly 0.5.
  pairs.append((gt, pred))
  return [(_relabel(gt), _relabel(pred)) for gt, pred in pairs]


def test_relabelled_cases_use_the_ade20k_range():
  pairs = _pairs(0)
  ids = np.concatenate([np.ravel(m) for pair in pairs for m in pair])
  assert ids.max() // DIVISOR == 150 and (ids % DIVISOR).max() > 500
  assert len(np.unique(ids[ids % DIVISOR > 255])) >= 10  # Segments.
  used = set(cases.STUFF + cases.THINGS) - set(cases.ABSENT)
  assert {_CLASS_MAP[c] for c in used} <= set(ids // DIVISOR)


@pytest.mark.parametrize("seed", [0, 1])
def test_pq_equals_pq_compute_at_151_classes(seed, tmp_path, monkeypatch):
  pairs = _pairs(seed)
  categories = [{"id": c, "name": INFO.class_names[c],
                 "isthing": int(INFO.class_has_instances[c])}
                for c in range(1, INFO.num_classes)]
  folder = str(tmp_path)
  files = (
      cases.write_coco(folder, "gt", [g for g, _ in pairs],
                       [_segments(g) for g, _ in pairs], categories),
      cases.write_coco(folder, "pred", [p for _, p in pairs],
                       [_segments(p) for _, p in pairs], categories))
  gt_json, pred_json = files
  gt_folder, pred_folder = f"{folder}/gt", f"{folder}/pred"
  reference = cases.pq_compute(monkeypatch, gt_json, pred_json, gt_folder,
                               pred_folder, num_chunks=1)
  metric = panoptic_quality.PanopticQuality(
      INFO.num_classes, INFO.ignore_label, DIVISOR, INFO.thing_class_ids,
      num_chunks=1)
  for gt, pred in pairs:
    metric.update(gt, pred)
  cases.assert_identical(metric.result(), metric.per_class(), reference)
  offline = evaluate_panoptic.evaluate(gt_json, gt_folder, pred_json,
                                       pred_folder, progress=False,
                                       num_chunks=1)
  cases.assert_identical(offline["summary"], offline["per_class"], reference)
  assert reference["Things"]["n"] > 0 and reference["Stuff"]["n"] > 0


def test_miou_equals_numpy_at_151_classes():
  pairs = _pairs(2)
  metric = mean_iou.MeanIoU(INFO.num_classes, INFO.ignore_label)
  gts = np.concatenate([g.ravel() for g, _ in pairs]) // DIVISOR
  preds = np.concatenate([p.ravel() for _, p in pairs]) // DIVISOR
  for gt, pred in pairs:
    metric.update(gt // DIVISOR, pred // DIVISOR)
  labelled = gts != 0
  ious = []
  for c in range(1, INFO.num_classes):
    hit = np.sum(labelled & (gts == c) & (preds == c))
    union = np.sum(labelled & ((gts == c) | (preds == c)))
    if union:
      ious.append(hit / union)
  assert len(ious) >= 8
  assert metric.result()["mIoU"] == pytest.approx(np.mean(ious), abs=1e-12)
