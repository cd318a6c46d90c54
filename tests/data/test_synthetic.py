"""Tests of the synthetic dataset generator and its builder (SPEC §5)."""

import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from deeplab2_kmax.data import build_synthetic_data
from deeplab2_kmax.data import dataset_registry
from deeplab2_kmax.data import synthetic
from deeplab2_kmax.data import tfrecord

INFO = dataset_registry.get("synthetic_panoptic")
DIVISOR = INFO.panoptic_label_divisor


def _things(panoptic):
  ids = np.unique(panoptic)
  return [int(i) for i in ids if i // DIVISOR in INFO.thing_class_ids]


def test_same_seed_gives_same_bytes_and_seeds_differ():
  a = synthetic.generate(7, "train", 3)
  b = synthetic.generate(7, "train", 3)
  assert a.image.tobytes() == b.image.tobytes()
  assert a.panoptic.tobytes() == b.panoptic.tobytes()
  for other in (synthetic.generate(8, "train", 3),
                synthetic.generate(7, "val", 3),
                synthetic.generate(7, "train", 4)):
    assert a.image.tobytes() != other.image.tobytes()


def test_format_and_label_conventions():
  sample = synthetic.generate(0, "train", 0)
  assert sample.image.shape == (128, 128, 3) and sample.image.dtype == np.uint8
  assert sample.panoptic.shape == (128, 128)
  classes = sample.panoptic // DIVISOR
  instances = sample.panoptic % DIVISOR
  assert classes.min() >= 0 and classes.max() < INFO.num_classes
  stuff_or_void = ~np.isin(classes, INFO.thing_class_ids)
  assert np.all(instances[stuff_or_void] == 0)
  assert np.all(instances[~stuff_or_void] >= 1)


def test_statistics_within_spec_ranges():
  counts, void, class_hits, stuff_hits = [], [], np.zeros(9), np.zeros(9)
  for index in range(60):
    panoptic = synthetic.generate(1, "train", index).panoptic
    things = _things(panoptic)
    counts.append(len(things))
    void.append(np.mean(panoptic // DIVISOR == INFO.ignore_label))
    for thing in things:
      class_hits[thing // DIVISOR] += 1
      rows, cols = np.nonzero(panoptic == thing)
      # Diameter <= 48 px; a rotated square's diagonal is sqrt(2) longer.
      assert np.ptp(rows) + 1 <= 48 * np.sqrt(2) + 2
      assert np.ptp(cols) + 1 <= 48 * np.sqrt(2) + 2
    for stuff in INFO.stuff_class_ids:
      stuff_hits[stuff] += np.any(panoptic // DIVISOR == stuff)
  assert min(counts) >= 1 and max(counts) <= 8
  assert np.mean(counts) > 3  # Uniform 1..8 with some occlusion.
  assert 0.03 < np.mean(void) < 0.08
  share = class_hits[list(INFO.thing_class_ids)] / class_hits.sum()
  assert np.all(share > 0.1) and np.all(share < 0.3)
  assert np.all(stuff_hits[list(INFO.stuff_class_ids)] >= 30)


def test_colour_does_not_identify_class():
  def features(split, n):
    xs, ys = [], []
    for index in range(n):
      sample = synthetic.generate(2, split, index)
      for thing in _things(sample.panoptic):
        xs.append(sample.image[sample.panoptic == thing].mean(0))
        ys.append(thing // DIVISOR)
    return np.array(xs), np.array(ys)

  x_train, y_train = features("train", 40)
  x_val, y_val = features("val", 20)
  classes = sorted(set(y_train))
  centroids = np.stack([x_train[y_train == c].mean(0) for c in classes])
  predicted = np.array(classes)[np.argmin(
      ((x_val[:, None] - centroids[None])**2).sum(-1), axis=1)]
  assert np.mean(predicted == y_val) < 0.4  # Chance is 0.2.


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("synthetic"))
  paths = build_synthetic_data.build(out, num_train=6, num_val=3, seed=5,
                                     num_shards=2, progress=False)
  return out, paths


def test_builder_writes_shards_and_coco_panoptic_gt(built):
  out, paths = built
  assert sorted(os.listdir(out)) == sorted([
      "panoptic_train", "panoptic_train.json", "panoptic_val",
      "panoptic_val.json", "train-00000-of-00002.tfrecord",
      "train-00001-of-00002.tfrecord", "val-00000-of-00002.tfrecord",
      "val-00001-of-00002.tfrecord"])
  with open(paths["val"]["json"]) as f:
    gt = json.load(f)
  categories = {c["id"]: c for c in gt["categories"]}
  assert sorted(categories) == list(range(1, 9))
  for class_id, category in categories.items():
    assert category["isthing"] == int(INFO.class_has_instances[class_id])
  records = [tfrecord.decode_example(r) for r in
             tf.data.TFRecordDataset(paths["val"]["shards"])]
  assert len(records) == len(gt["annotations"]) == 3
  for record, annotation in zip(records, gt["annotations"]):
    png = np.asarray(Image.open(os.path.join(
        paths["val"]["png_dir"], annotation["file_name"]))).astype(np.int64)
    ids = png[..., 0] + 256 * png[..., 1] + 65536 * png[..., 2]
    label = record["label"].numpy()
    expected = np.where(label // DIVISOR == INFO.ignore_label, 0, label)
    np.testing.assert_array_equal(ids, expected)
    assert record["name"].numpy().decode() == annotation["image_id"]
    segments = {s["id"]: s for s in annotation["segments_info"]}
    assert set(segments) == set(np.unique(ids)) - {0}
    for seg_id, segment in segments.items():
      assert segment["area"] == int(np.sum(ids == seg_id))
      assert segment["category_id"] == seg_id // DIVISOR
    index = int(annotation["image_id"].split("_")[1])
    sample = synthetic.generate(5, "val", index)
    np.testing.assert_array_equal(record["image"].numpy(), sample.image)


def test_gt_evaluates_perfectly_with_panopticapi(built, tmp_path):
  pq_compute = pytest.importorskip("panopticapi.evaluation").pq_compute
  out, paths = built
  result = pq_compute(paths["val"]["json"], paths["val"]["json"],
                      paths["val"]["png_dir"], paths["val"]["png_dir"])
  assert result["All"]["pq"] == pytest.approx(1.0)
  assert result["Things"]["n"] >= 1 and result["Stuff"]["n"] >= 1


def test_refuses_to_overwrite(built):
  out, _ = built
  with pytest.raises(FileExistsError, match="--overwrite"):
    build_synthetic_data.build(out, num_train=6, num_val=3, seed=5,
                               num_shards=2, progress=False)


def test_overwrite_replaces_shards_of_another_layout(tmp_path):
  out = str(tmp_path)
  build_synthetic_data.build(out, num_train=4, num_val=2, seed=0,
                             num_shards=4, progress=False)
  build_synthetic_data.build(out, num_train=4, num_val=2, seed=0,
                             num_shards=1, overwrite=True, progress=False)
  assert sorted(f for f in os.listdir(out) if f.endswith(".tfrecord")) == [
      "train-00000-of-00001.tfrecord", "val-00000-of-00001.tfrecord"]
  assert len(os.listdir(os.path.join(out, "panoptic_val"))) == 2


def test_cli_reports_existing_output(built):
  out, _ = built
  result = subprocess.run(
      [sys.executable, "-m", "deeplab2_kmax.data.build_synthetic_data",
       f"--output_dir={out}", "--num_train=6", "--num_val=3",
       "--num_shards=2"], capture_output=True, text=True, timeout=120)
  assert result.returncode != 0
  assert "already exists" in result.stderr + result.stdout
