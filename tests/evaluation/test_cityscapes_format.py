"""Cityscapes-format predictions, scored by cityscapesscripts' panoptic code.

The ground truth is written here in the layout of cityscapesscripts'
`createPanopticImgs` (label ids; stuff segment = label id, thing = label id *
1000 + k, crowd thing = label id with iscrowd); the predictions go through
`CityscapesPanopticWriter`. cityscapesscripts' PQ on those files must equal
our streaming PQ on the train-id maps.
"""

import json
import os

import numpy as np
from PIL import Image
import pytest

from deeplab2_kmax.data import cityscapes_classes
from deeplab2_kmax.data import dataset_registry
from deeplab2_kmax.evaluation import panoptic_quality
from deeplab2_kmax.evaluation import writers

cs_eval = pytest.importorskip(
    "cityscapesscripts.evaluation.evalPanopticSemanticLabeling")

INFO = dataset_registry.get("cityscapes_panoptic")
DIVISOR = INFO.panoptic_label_divisor  # 1000
VOID = INFO.ignore_label  # 255
STUFF = [c for c in range(INFO.num_classes) if not INFO.class_has_instances[c]]
THINGS = [c for c in range(INFO.num_classes) if INFO.class_has_instances[c]]
TRAIN_TO_LABEL = {train: label for label, train in
                  cityscapes_classes.LABEL_ID_TO_TRAIN_ID.items()}


def _random_gt(rng, size):
  """Train-id panoptic map: stuff background and blobs, things, crowd, void."""
  height, width = size
  ids = np.full(size, rng.choice(STUFF) * DIVISOR, np.int64)
  for _ in range(rng.integers(1, 5)):
    y, x = rng.integers(0, height - 4), rng.integers(0, width - 4)
    ids[y:y + rng.integers(3, 20), x:x + rng.integers(3, 20)] = (
        rng.choice(STUFF) * DIVISOR)
  for instance in range(1, rng.integers(2, 8)):
    y, x = rng.integers(0, height - 2), rng.integers(0, width - 2)
    h, w = rng.integers(1, 16), rng.integers(1, 16)
    inst = 0 if rng.random() < 0.15 else instance  # 0: crowd.
    ids[y:y + h, x:x + w] = rng.choice(THINGS) * DIVISOR + inst
  ids[rng.random(size) < 0.03] = VOID * DIVISOR
  return ids


def _perturb(rng, gt):
  pred = np.roll(gt, rng.integers(-2, 3), axis=rng.integers(0, 2)).copy()
  for seg in np.unique(pred):
    r = rng.random()
    if r < 0.15:
      pred[pred == seg] = VOID * DIVISOR  # Dropped.
    elif r < 0.25 and seg // DIVISOR in THINGS:
      pred[pred == seg] = (seg // DIVISOR) * DIVISOR + 50  # Merged.
  y, x = rng.integers(0, gt.shape[0] - 8), rng.integers(0, gt.shape[1] - 8)
  pred[y:y + 6, x:x + 6] = rng.choice(THINGS) * DIVISOR + 99  # Spurious.
  thing = np.isin(pred // DIVISOR, THINGS) & (pred % DIVISOR == 0)
  pred[thing] += 77  # Predicted things are never crowd.
  return pred


def _write_gt(folder, maps):
  """createPanopticImgs layout: <id>_gtFine_panoptic.png + one JSON."""
  os.makedirs(folder)
  annotations = []
  for n, panoptic in enumerate(maps):
    image_id = f"frankfurt_000000_{n:06d}"
    segment_ids = np.zeros(panoptic.shape, np.int64)
    segments = []
    for label in np.unique(panoptic):
      train_id, instance = int(label // DIVISOR), int(label % DIVISOR)
      if train_id == VOID:
        continue
      label_id = TRAIN_TO_LABEL[train_id]
      is_thing = train_id in THINGS
      segment_id = label_id * 1000 + instance if is_thing and instance else (
          label_id)
      segment_ids[panoptic == label] = segment_id
      segments.append({"id": segment_id, "category_id": label_id,
                       "iscrowd": int(is_thing and instance == 0),
                       "area": int((panoptic == label).sum())})
    file_name = f"{image_id}_gtFine_panoptic.png"
    Image.fromarray(np.stack(
        [segment_ids % 256, segment_ids // 256 % 256, segment_ids // 65536],
        -1).astype(np.uint8)).save(os.path.join(folder, file_name))
    annotations.append({"image_id": image_id, "file_name": file_name,
                        "segments_info": segments})
  categories = [{"id": TRAIN_TO_LABEL[c], "name": INFO.class_names[c],
                 "isthing": int(c in THINGS)} for c in range(INFO.num_classes)]
  path = folder + ".json"
  with open(path, "w") as f:
    json.dump({"annotations": annotations, "categories": categories}, f)
  return path


def test_cityscapes_writer_matches_cityscapesscripts(tmp_path):
  rng = np.random.default_rng(7)
  gts = [_random_gt(rng, (40, 56)) for _ in range(8)]
  preds = [_perturb(rng, gt) for gt in gts]
  gt_json = _write_gt(str(tmp_path / "gt"), gts)
  writer = writers.CityscapesPanopticWriter(
      str(tmp_path / "out"), DIVISOR, VOID, INFO.class_names,
      INFO.class_has_instances)
  for n, pred in enumerate(preds):
    writer.add(f"frankfurt_000000_{n:06d}", pred)
  pred_json = writer.close()

  with open(gt_json) as f:
    gt_data = json.load(f)
  with open(pred_json) as f:
    pred_data = json.load(f)
  categories = {c["id"]: c for c in gt_data["categories"]}
  by_image = {a["image_id"]: a for a in pred_data["annotations"]}
  pairs = [(a, by_image[a["image_id"]]) for a in gt_data["annotations"]]
  # The single-process core of evaluatePanoptic (its worker pool would fork
  # a process that has TensorFlow loaded).
  stat = cs_eval.pq_compute_single_core(0, pairs, str(tmp_path / "gt"),
                                        str(tmp_path / "out" / "predictions"),
                                        categories)
  reference = cs_eval.average_pq(stat, categories)

  metric = panoptic_quality.PanopticQuality(INFO.num_classes, VOID, DIVISOR,
                                            THINGS)
  for gt, pred in zip(gts, preds):
    metric.update(gt, pred)
  ours = metric.result()
  for suffix, name in (("", "All"), ("_Th", "Things"), ("_St", "Stuff")):
    for key in ("pq", "sq", "rq"):
      assert abs(ours[key.upper() + suffix] - reference[name][key]) <= 1e-6, (
          key, name)
  for train_id, values in metric.per_class().items():
    label_id = TRAIN_TO_LABEL[train_id]
    for key in ("pq", "sq", "rq"):
      assert abs(values[key] - reference["per_class"][label_id][key]) <= 1e-6


def test_cityscapes_writer_semantic_label_ids(tmp_path):
  rng = np.random.default_rng(3)
  pred = _perturb(rng, _random_gt(rng, (24, 30)))
  writer = writers.CityscapesPanopticWriter(
      str(tmp_path), DIVISOR, VOID, INFO.class_names, INFO.class_has_instances)
  writer.add("aachen_000001_000019", pred)
  writer.close()
  label_ids = np.array(Image.open(
      tmp_path / "predictions_labelIds" / "aachen_000001_000019_labelIds.png"))
  train_ids = pred // DIVISOR
  expected = np.vectorize(lambda t: TRAIN_TO_LABEL.get(int(t), 0))(train_ids)
  np.testing.assert_array_equal(label_ids, expected)
