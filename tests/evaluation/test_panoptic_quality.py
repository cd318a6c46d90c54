"""PQ / SQ / RQ against COCO panopticapi's pq_compute on generated data."""

import json
import os

import numpy as np
from PIL import Image
import pytest

from deeplab2_kmax.evaluation import panoptic_quality

pq_compute = pytest.importorskip("panopticapi.evaluation").pq_compute

DIVISOR = 256
THINGS = (3, 4, 5)
NUM_CLASSES = 7  # 0 = void, 1-2 stuff, 3-5 things, 6 stuff.


def _random_panoptic(rng, size, crowd=True):
  """A panoptic map with stuff, things (some crowd: instance 0), void."""
  height, width = size
  semantic = rng.choice([1, 2, 6], size=(1, 1)).repeat(height, 0).repeat(width, 1)
  ids = semantic * DIVISOR
  for _ in range(rng.integers(1, 5)):  # Stuff blobs.
    y, x = rng.integers(0, height - 4), rng.integers(0, width - 4)
    ids[y:y + rng.integers(3, 20), x:x + rng.integers(3, 20)] = (
        rng.choice([1, 2, 6]) * DIVISOR)
  for instance in range(1, rng.integers(2, 8)):
    y, x = rng.integers(0, height - 2), rng.integers(0, width - 2)
    h, w = rng.integers(1, 16), rng.integers(1, 16)  # Includes tiny ones.
    inst = 0 if (crowd and rng.random() < 0.15) else instance
    ids[y:y + h, x:x + w] = rng.choice(THINGS) * DIVISOR + inst
  void = rng.random((height, width)) < 0.03
  ids[void] = 0
  return ids


def _perturb(rng, gt):
  """A prediction: shifted / merged / dropped / spurious segments."""
  pred = np.roll(gt, rng.integers(-2, 3), axis=rng.integers(0, 2)).copy()
  ids = np.unique(pred)
  for seg in ids:
    r = rng.random()
    if r < 0.15:
      pred[pred == seg] = 0  # Dropped (-> FN).
    elif r < 0.25 and seg % DIVISOR:
      pred[pred == seg] = (seg // DIVISOR) * DIVISOR + 50  # Merge / relabel.
  y, x = rng.integers(0, gt.shape[0] - 8), rng.integers(0, gt.shape[1] - 8)
  pred[y:y + 6, x:x + 6] = rng.choice(THINGS) * DIVISOR + 99  # Spurious.
  # Predictions never use instance 0 for things.
  thing = np.isin(pred // DIVISOR, THINGS) & (pred % DIVISOR == 0)
  pred[thing] += 77
  return pred


def _write_coco(folder, name, images, crowd_aware):
  os.makedirs(os.path.join(folder, name), exist_ok=True)
  annotations = []
  for i, ids in enumerate(images):
    # COCO segment ids must be > 0; keep the panoptic id, void -> 0.
    Image.fromarray(np.stack([ids % 256, ids // 256 % 256, ids // 65536],
                             -1).astype(np.uint8)).save(
                                 os.path.join(folder, name, f"{i}.png"))
    segments = []
    for seg in np.unique(ids):
      if seg == 0:
        continue
      cls = int(seg // DIVISOR)
      crowd = int(crowd_aware and cls in THINGS and seg % DIVISOR == 0)
      segments.append({"id": int(seg), "category_id": cls, "iscrowd": crowd,
                       "area": int((ids == seg).sum())})
    annotations.append({"image_id": i, "file_name": f"{i}.png",
                        "segments_info": segments})
  categories = [{"id": c, "name": str(c), "isthing": int(c in THINGS)}
                for c in range(1, NUM_CLASSES)]
  data = {"images": [{"id": i, "file_name": f"{i}.png"}
                     for i in range(len(images))],
          "annotations": annotations, "categories": categories}
  path = os.path.join(folder, name + ".json")
  with open(path, "w") as f:
    json.dump(data, f)
  return path


def test_matches_panopticapi(tmp_path):
  rng = np.random.default_rng(0)
  gts, preds = [], []
  for _ in range(12):
    gt = _random_panoptic(rng, (48, 64))
    gts.append(gt)
    preds.append(_perturb(rng, gt))
  gt_json = _write_coco(str(tmp_path), "gt", gts, crowd_aware=True)
  pred_json = _write_coco(str(tmp_path), "pred", preds, crowd_aware=False)
  reference = pq_compute(gt_json, pred_json, str(tmp_path / "gt"),
                         str(tmp_path / "pred"))

  metric = panoptic_quality.PanopticQuality(NUM_CLASSES, 0, DIVISOR, THINGS)
  for gt, pred in zip(gts, preds):
    metric.update(gt, pred)
  ours = metric.result()
  for ours_name, ref_name in (("", "All"), ("_Th", "Things"),
                              ("_St", "Stuff")):
    for metric_name in ("pq", "sq", "rq"):
      assert abs(ours[metric_name.upper() + ours_name] -
                 reference[ref_name][metric_name]) <= 1e-6, (
                     metric_name, ref_name)
    assert ours["num_classes" + ours_name] == reference[ref_name]["n"]
  for c, values in metric.per_class().items():
    for metric_name in ("pq", "sq", "rq"):
      assert abs(values[metric_name] -
                 reference["per_class"][c][metric_name]) <= 1e-6


def test_perfect_prediction_scores_one():
  rng = np.random.default_rng(1)
  gt = _random_panoptic(rng, (32, 32), crowd=False)
  metric = panoptic_quality.PanopticQuality(NUM_CLASSES, 0, DIVISOR, THINGS)
  metric.update(gt, gt)
  assert metric.result()["PQ"] == pytest.approx(1.0)


def test_size_mismatch_is_an_error():
  metric = panoptic_quality.PanopticQuality(NUM_CLASSES, 0, DIVISOR, THINGS)
  with pytest.raises(ValueError, match="differ in size"):
    metric.update(np.zeros((4, 4)), np.zeros((4, 5)))


def test_empty_prediction_counts_every_segment_as_missed():
  rng = np.random.default_rng(2)
  gt = _random_panoptic(rng, (32, 32), crowd=False)
  metric = panoptic_quality.PanopticQuality(NUM_CLASSES, 0, DIVISOR, THINGS)
  metric.update(gt, np.zeros_like(gt))
  assert metric.result()["PQ"] == 0.0
  assert metric.fn.sum() == len(np.unique(gt[gt > 0]))


def test_offline_cli_matches_panopticapi(tmp_path):
  from deeplab2_kmax.evaluation import evaluate_panoptic  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(3)
  gts = [_random_panoptic(rng, (40, 56)) for _ in range(6)]
  preds = [_perturb(rng, gt) for gt in gts]
  gt_json = _write_coco(str(tmp_path), "gt", gts, crowd_aware=True)
  pred_json = _write_coco(str(tmp_path), "pred", preds, crowd_aware=False)
  reference = pq_compute(gt_json, pred_json, str(tmp_path / "gt"),
                         str(tmp_path / "pred"))
  ours = evaluate_panoptic.evaluate(gt_json, str(tmp_path / "gt"), pred_json,
                                    str(tmp_path / "pred"), progress=False)
  for name, suffix in (("All", ""), ("Things", "_Th"), ("Stuff", "_St")):
    for metric in ("pq", "sq", "rq"):
      assert abs(ours["summary"][metric.upper() + suffix] -
                 reference[name][metric]) <= 1e-6
  with pytest.raises(evaluate_panoptic.EvaluationError, match="missing.json"):
    evaluate_panoptic.evaluate(str(tmp_path / "missing.json"), "", pred_json,
                               "", progress=False)


def test_coco_writer_round_trip_through_panopticapi(tmp_path):
  from deeplab2_kmax.evaluation import writers  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(4)
  gts = [_random_panoptic(rng, (36, 44), crowd=False) for _ in range(5)]
  preds = [_perturb(rng, gt) for gt in gts]
  gt_json = _write_coco(str(tmp_path), "gt", gts, crowd_aware=True)
  categories = [{"id": c, "name": str(c), "isthing": int(c in THINGS)}
                for c in range(1, NUM_CLASSES)]
  writer = writers.CocoPanopticWriter(str(tmp_path / "out"), DIVISOR, 0,
                                      categories)
  for i, pred in enumerate(preds):
    writer.add(i, pred)
  pred_json = writer.close()
  reference = pq_compute(gt_json, pred_json, str(tmp_path / "gt"),
                         str(tmp_path / "out" / "predictions"))
  metric = panoptic_quality.PanopticQuality(NUM_CLASSES, 0, DIVISOR, THINGS)
  for gt, pred in zip(gts, preds):
    metric.update(gt, pred)
  assert abs(metric.result()["PQ"] - reference["All"]["pq"]) <= 1e-6
  with pytest.raises(FileExistsError, match="already exist"):
    writers.CocoPanopticWriter(str(tmp_path / "out"), DIVISOR, 0, categories)


@pytest.mark.parametrize("high", [40_000, 1 << 30])  # Bincount; sort fallback.
def test_dense_unique_equals_numpy_unique(high):
  rng = np.random.default_rng(high % 97)
  values = rng.choice(np.concatenate([[-1, 0], rng.integers(1, high, 30)]),
                      size=5000).astype(np.int64)
  ids, inverse, counts = panoptic_quality._unique(values)  # pylint: disable=protected-access
  want_ids, want_inverse, want_counts = np.unique(
      values, return_inverse=True, return_counts=True)
  np.testing.assert_array_equal(ids, want_ids)
  np.testing.assert_array_equal(inverse, want_inverse)
  np.testing.assert_array_equal(counts, want_counts)
