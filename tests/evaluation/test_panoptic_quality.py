"""PQ / SQ / RQ equal panopticapi's pq_compute exactly, on generated data.

Both evaluators (streaming `PanopticQuality` and offline `evaluate_panoptic`)
are compared with `==` against the unmodified `pq_compute`: crowd regions
(several per image and class), void, exact 0.5 IoU / ignore shares, classes
with only FP or only FN, absent categories, and the COCO-file quirks
(random ids, several crowd segments of one category, JSON areas, unlisted
ids, unknown categories, shuffled orders). `panoptic_cases` generates them.
"""

import json
import os
import tempfile

import numpy as np
import panoptic_cases as cases
from PIL import Image
import pytest

from deeplab2_kmax.evaluation import evaluate_panoptic
from deeplab2_kmax.evaluation import panoptic_quality

pytest.importorskip("panopticapi.evaluation")

DIVISOR = cases.DIVISOR


def _pairs(rng, count, boundary_share=0.3):
  """(gt, pred) maps: random scenes and rows on the 0.5 thresholds."""
  pairs, exact = [], 0
  for _ in range(count):
    if rng.random() < boundary_share:
      gt, pred, hits = cases.boundary_scene(rng, int(rng.integers(8, 30)))
      exact += hits
    else:
      gt = cases.scene(rng, int(rng.integers(12, 30)), int(rng.integers(16, 40)))
      pred = cases.prediction(rng, gt)
    pairs.append((gt, pred))
  return pairs, exact


def _write_maps(folder, pairs, gt_crowd_ids=()):
  """COCO files whose ids are the panoptic ids; returns pq_compute's args."""
  category_list = cases.categories()
  gt_json = cases.write_coco(folder, "gt", [g for g, _ in pairs], [
      cases.segments_info(g, gt_crowd_ids) for g, _ in pairs], category_list)
  pred_json = cases.write_coco(folder, "pred", [p for _, p in pairs], [
      cases.segments_info(p) for _, p in pairs], category_list)
  return (gt_json, pred_json, os.path.join(folder, "gt"),
          os.path.join(folder, "pred"))


def _streaming(pairs, num_chunks, gt_crowd_ids=None):
  metric = panoptic_quality.PanopticQuality(
      cases.NUM_CLASSES, 0, DIVISOR, cases.THINGS, num_chunks=num_chunks)
  for gt, pred in pairs:
    metric.update(gt, pred, gt_crowd_ids=gt_crowd_ids)
  return metric


def _offline(files, num_chunks):
  gt_json, pred_json, gt_folder, pred_folder = files
  result = evaluate_panoptic.evaluate(gt_json, gt_folder, pred_json,
                                      pred_folder, progress=False,
                                      num_chunks=num_chunks)
  return result["summary"], result["per_class"]


@pytest.mark.parametrize("seed, num_chunks", [(0, 1), (1, 2), (2, 3), (3, 7)])
def test_streaming_and_offline_equal_pq_compute(seed, num_chunks, tmp_path,
                                                monkeypatch):
  rng = np.random.default_rng(seed)
  pairs, exact = _pairs(rng, 24)
  assert exact >= 5  # Rows with IoU or ignore share exactly 0.5.
  files = _write_maps(str(tmp_path), pairs)
  reference = cases.pq_compute(monkeypatch, *files, num_chunks=num_chunks)

  metric = _streaming(pairs, num_chunks)
  cases.assert_identical(metric.result(), metric.per_class(), reference)
  cases.assert_identical(*_offline(files, num_chunks), reference)
  # The data reach every rule: crowd, FP-only / FN-only, absent classes.
  assert any(((g % DIVISOR == 0) & np.isin(g // DIVISOR, cases.THINGS)).any()
             for g, _ in pairs)
  per_class = metric.per_class()
  only_fp, only_fn = per_class[cases.FP_ONLY], per_class[cases.FN_ONLY]
  assert only_fp["fp"] > 0 and only_fp["tp"] == only_fp["fn"] == 0
  assert only_fn["fn"] > 0 and only_fn["tp"] == only_fn["fp"] == 0
  assert not set(cases.ABSENT) & set(per_class)


@pytest.mark.parametrize("quirks", [(q,) for q in cases.QUIRKS] + [
    cases.QUIRKS])
def test_offline_equals_pq_compute_on_coco_quirks(quirks, tmp_path,
                                                  monkeypatch):
  rng = np.random.default_rng(len(quirks) * 10 + len(quirks[0]))
  pairs, _ = _pairs(rng, 20)
  coco = [cases.coco_variants(rng, gt, pred, quirks) for gt, pred in pairs]
  order = rng.permutation(np.arange(1, cases.NUM_CLASSES)).tolist()
  folder = str(tmp_path)
  gt_json = cases.write_coco(folder, "gt", [c[0] for c in coco],
                             [c[1] for c in coco], cases.categories(order))
  pred_json = cases.write_coco(folder, "pred", [c[2] for c in coco],
                               [c[3] for c in coco], cases.categories(order))
  files = (gt_json, pred_json, os.path.join(folder, "gt"),
           os.path.join(folder, "pred"))
  for num_chunks in (1, 4):
    reference = cases.pq_compute(monkeypatch, *files, num_chunks=num_chunks)
    cases.assert_identical(*_offline(files, num_chunks), reference)


def test_addition_order_is_panopticapis(tmp_path, monkeypatch):
  """Worker split changes pq_compute's last digits; ours follow each."""
  rng = np.random.default_rng(11)
  pairs, _ = _pairs(rng, 30, boundary_share=0.0)
  files = _write_maps(str(tmp_path), pairs)
  seen = set()
  for num_chunks in (1, 2, 3, 5, 8):
    reference = cases.pq_compute(monkeypatch, *files, num_chunks=num_chunks)
    metric = _streaming(pairs, num_chunks)
    cases.assert_identical(metric.result(), metric.per_class(), reference)
    seen.add(tuple(v["sq"] for _, v in sorted(reference["per_class"].items())))
  assert len(seen) > 1  # Else this test could not tell the orders apart.


def test_several_crowd_ids_per_class_last_listed_counts(tmp_path,
                                                        monkeypatch):
  """Extra crowd ids: panopticapi keeps the last crowd segment per category
  (here the largest id), not the union of the category's crowd pixels."""
  rng = np.random.default_rng(5)
  pairs, _ = _pairs(rng, 16, boundary_share=0.0)
  crowd_ids = [c * DIVISOR + k for c in cases.GT_THINGS for k in (1, 3)]
  for gt, pred in pairs:  # Predictions mostly on the extra crowd regions.
    for seg in crowd_ids:
      ys, xs = np.nonzero(gt == seg)
      if len(ys):
        pred[ys.min():ys.max() + 2, xs.min():xs.max() + 2] = seg + 180
  files = _write_maps(str(tmp_path), pairs, gt_crowd_ids=crowd_ids)
  reference = cases.pq_compute(monkeypatch, *files, num_chunks=2)
  metric = _streaming(pairs, 2, gt_crowd_ids=crowd_ids)
  cases.assert_identical(metric.result(), metric.per_class(), reference)


def test_worker_pool_pq_compute_and_default_split(tmp_path):
  """The real pq_compute (worker processes, one per CPU) vs our defaults."""
  from panopticapi.evaluation import pq_compute  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(3)
  pairs, _ = _pairs(rng, 12)
  files = _write_maps(str(tmp_path), pairs)
  reference = pq_compute(*files)
  metric = _streaming(pairs, None)
  cases.assert_identical(metric.result(), metric.per_class(), reference)
  cases.assert_identical(*_offline(files, None), reference)


def test_perfect_prediction_scores_one():
  gt = cases.scene(np.random.default_rng(1), 32, 32)
  metric = panoptic_quality.PanopticQuality(cases.NUM_CLASSES, 0, DIVISOR,
                                            cases.THINGS)
  metric.update(gt, gt)
  assert metric.result()["PQ"] == 1.0


def test_empty_prediction_counts_every_segment_as_missed():
  gt = cases.scene(np.random.default_rng(2), 32, 32)
  metric = panoptic_quality.PanopticQuality(cases.NUM_CLASSES, 0, DIVISOR,
                                            cases.THINGS)
  metric.update(gt, np.zeros_like(gt))
  assert metric.result()["PQ"] == 0.0
  crowd = (gt % DIVISOR == 0) & np.isin(gt // DIVISOR, cases.THINGS)
  assert metric.fn.sum() == len(np.unique(gt[(gt > 0) & ~crowd]))
  metric.reset()
  assert metric.fn.sum() == 0 and metric.result()["num_classes"] == 0


def test_bad_streaming_input_is_an_error():
  metric = panoptic_quality.PanopticQuality(cases.NUM_CLASSES, 0, DIVISOR,
                                            cases.THINGS)
  with pytest.raises(ValueError, match="differ in size"):
    metric.update(np.zeros((4, 4)), np.zeros((4, 5)))
  with pytest.raises(ValueError, match=r"classes \[12\]"):
    metric.update(np.ones((2, 2)) * DIVISOR, np.full((2, 2), 12 * DIVISOR))


def _tiny_files(folder, gt_segments, pred_segments, pred_rgb=None):
  ids = np.array([[5, 5], [7, 0]])
  gt_json = cases.write_coco(folder, "gt", [ids], [gt_segments],
                             cases.categories())
  pred_json = cases.write_coco(folder, "pred", [ids], [pred_segments],
                               cases.categories())
  if pred_rgb is not None:
    Image.fromarray(pred_rgb).save(os.path.join(folder, "pred", "0.png"))
  return gt_json, os.path.join(folder, "gt"), pred_json, os.path.join(
      folder, "pred")


@pytest.mark.parametrize("gt_segments, pred_segments, pred_rgb, message", [
    ([], [{"id": 5, "category_id": 1}], None, r"\[7\] are in the PNG"),
    ([], [{"id": 5, "category_id": 1}, {"id": 7, "category_id": 1},
          {"id": 9, "category_id": 1}], None, r"\[9\] of segments_info"),
    ([], [{"id": 5, "category_id": 1}, {"id": 7, "category_id": 33}], None,
     r"unknown category_id \[33\]"),
    ([{"id": 5, "category_id": 1, "iscrowd": 0}], [], None, "'area'"),
    ([{"id": 5, "category_id": 1, "area": 2}], [], None, "numeric 'iscrowd'"),
    ([], [{"id": 5}], None, "'category_id'"),
    ([], [], np.zeros((2, 2), np.uint8), "expected an RGB PNG"),
])
def test_bad_coco_input_names_file_and_field(gt_segments, pred_segments,
                                             pred_rgb, message):
  with tempfile.TemporaryDirectory() as folder:
    files = _tiny_files(folder, gt_segments, pred_segments, pred_rgb)
    with pytest.raises(evaluate_panoptic.EvaluationError, match=message):
      evaluate_panoptic.evaluate(*files, progress=False)
  with pytest.raises(evaluate_panoptic.EvaluationError, match="missing.json"):
    evaluate_panoptic.evaluate("missing.json", "", "missing.json", "",
                               progress=False)


def test_missing_prediction_or_file_name_is_named(tmp_path):
  gt_json, gt_folder, pred_json, pred_folder = _tiny_files(
      str(tmp_path), [], [{"id": 5, "category_id": 1},
                          {"id": 7, "category_id": 2}])
  with open(pred_json) as f:
    pred = json.load(f)
  pred["annotations"][0]["image_id"] = 3
  with open(pred_json, "w") as f:
    json.dump(pred, f)
  with pytest.raises(evaluate_panoptic.EvaluationError,
                     match="no prediction for image 0"):
    evaluate_panoptic.evaluate(gt_json, gt_folder, pred_json, pred_folder,
                               progress=False)
  del pred["annotations"][0]["file_name"]
  pred["annotations"][0]["image_id"] = 0
  with open(pred_json, "w") as f:
    json.dump(pred, f)
  with pytest.raises(evaluate_panoptic.EvaluationError,
                     match="pred.json: an annotation has no 'file_name'"):
    evaluate_panoptic.evaluate(gt_json, gt_folder, pred_json, pred_folder,
                               progress=False)


def test_coco_writer_round_trip_through_panopticapi(tmp_path, monkeypatch):
  from deeplab2_kmax.evaluation import writers  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(4)
  pairs, _ = _pairs(rng, 6)
  files = _write_maps(str(tmp_path), pairs)
  writer = writers.CocoPanopticWriter(str(tmp_path / "out"), DIVISOR, 0,
                                      cases.categories())
  for i, (_, pred) in enumerate(pairs):
    writer.add(i, pred)
  pred_json = writer.close()
  reference = cases.pq_compute(monkeypatch, files[0], pred_json, files[2],
                               str(tmp_path / "out" / "predictions"), 2)
  metric = _streaming(pairs, 2)
  cases.assert_identical(metric.result(), metric.per_class(), reference)
  with pytest.raises(FileExistsError, match="already exist"):
    writers.CocoPanopticWriter(str(tmp_path / "out"), DIVISOR, 0,
                               cases.categories())


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
