"""Generated panoptic cases for the PQ tests, and panopticapi as reference.

Maps use DeepLab2's encoding (class * DIVISOR + instance; class 0 = void;
thing class with instance 0 = crowd). `write_coco` turns them into
COCO-panoptic PNG + JSON; `coco_variants` then rewrites the ground truth in
ways only COCO files can express (random segment ids, several crowd
segments of one category, JSON areas that differ from pixel counts,
unlisted ids, unknown categories, shuffled orders).
"""

import contextlib
import io
import json
import os

import numpy as np
from PIL import Image

DIVISOR = 256
STUFF = (1, 2, 6, 9)
THINGS = (3, 4, 5, 7, 8)
FP_ONLY = 7  # A thing class that only predictions use.
FN_ONLY = 8  # A thing class that predictions never use.
ABSENT = (9, 10)  # Listed categories that no image uses (10 is a thing).
NUM_CLASSES = 11  # 0 = void.
GT_THINGS = (3, 4, 5, 8)


def _rect(rng, height, width, max_size):
  y, x = rng.integers(0, height - 1), rng.integers(0, width - 1)
  return (slice(y, y + rng.integers(1, max_size)),
          slice(x, x + rng.integers(1, max_size)))


def scene(rng, height, width):
  """Ground truth: stuff, thing instances, crowd regions, void."""
  gt = np.full((height, width), rng.choice([1, 2, 6]) * DIVISOR, np.int64)
  for _ in range(rng.integers(1, 4)):
    gt[_rect(rng, height, width, 14)] = rng.choice([1, 2, 6]) * DIVISOR
  for instance in range(1, rng.integers(2, 9)):
    gt[_rect(rng, height, width, 12)] = (
        rng.choice(GT_THINGS) * DIVISOR + instance)
  for cls in rng.choice(GT_THINGS, size=rng.integers(0, 3), replace=False):
    for _ in range(rng.integers(1, 4)):  # Several crowd regions per class.
      gt[_rect(rng, height, width, 9)] = cls * DIVISOR
  gt[_rect(rng, height, width, 8)] = 0
  gt[rng.random((height, width)) < 0.04] = 0
  return gt


def prediction(rng, gt):
  """Shifted, shrunk, dropped, relabelled, split and spurious segments."""
  pred = np.roll(gt, rng.integers(-1, 2), axis=rng.integers(0, 2)).copy()
  height, width = gt.shape
  for seg in np.unique(pred[pred > 0]):
    mask = pred == seg
    r = rng.random()
    if r < 0.12:
      pred[mask] = 0  # Dropped: FN.
    elif r < 0.2:  # Wrong class: FN + FP.
      pred[mask] = rng.choice(STUFF[:3] + THINGS[:3]) * DIVISOR + 60
    elif r < 0.35:  # Split in two.
      ys, xs = np.nonzero(mask)
      half = mask & (np.arange(width)[None, :] < np.median(xs))
      pred[half] = seg + 100 if seg % DIVISOR else seg + 101
    elif r < 0.5:  # Shrunk by a few pixels (IoU near 0.5 for small ones).
      ys, xs = np.nonzero(mask)
      pred[mask & (np.arange(height)[:, None] <= ys.min() +
                   rng.integers(0, 3))] = 0
  pred[pred // DIVISOR == FN_ONLY] = 3 * DIVISOR + 150
  for k in range(rng.integers(1, 5)):  # Spurious, often on void or crowd.
    cls = rng.choice([FP_ONLY, 3, 4, 5, 1])
    crowd = np.argwhere((gt % DIVISOR == 0) & (gt // DIVISOR == cls))
    void = np.argwhere(gt == 0)
    anchors = crowd if (len(crowd) and rng.random() < 0.6) else void
    if len(anchors) == 0 or rng.random() < 0.2:
      region = _rect(rng, height, width, 7)
    else:
      y, x = anchors[rng.integers(len(anchors))]
      region = (slice(max(y - 1, 0), y + rng.integers(1, 4)),
                slice(max(x - 1, 0), x + rng.integers(1, 4)))
    pred[region] = cls * DIVISOR + 200 + k
  return pred


def _twice_minus_half(a, v, n, i, b, crowd_counts):
  """2 * numerator - denominator of the IoU and of the ignore share."""
  on_void = min(b, v)
  on_crowd = min(max(b - v, 0), n) if crowd_counts else 0
  return 2 * i - (a + i + b - i - on_void), 2 * (on_void + on_crowd) - (i + b)


def boundary_scene(rng, rows, width=24):
  """Rows of one segment pair each, sized to land on the 0.5 thresholds.

  Row layout: gt segment [0, a), void [a, a + v), crowd [a + v, a + v + n)
  (of the row's class or another), stuff after. The prediction covers the
  last i pixels of the gt segment and b more to its right, so IoU
  i / (a + i + b - i - void) and the void + crowd share of unmatched
  predictions land exactly on, just below or just above 0.5.

  Returns:
    (gt, pred, number of rows whose IoU or ignore share is exactly 0.5).
  """
  assert rows <= 40  # Instance ids below stay distinct.
  gt = np.full((rows, width), 6 * DIVISOR, np.int64)
  pred = np.full((rows, width), 6 * DIVISOR + 1, np.int64)
  exact = 0
  for row in range(rows):
    a, v, n = rng.integers(2, 8), rng.integers(0, 5), rng.integers(0, 5)
    cls = rng.choice([3, 4, 5])
    crowd_class = rng.choice([cls, cls, 4])
    gt[row, :a] = cls * DIVISOR + row + 1
    gt[row, a:a + v] = 0
    gt[row, a + v:a + v + n] = crowd_class * DIVISOR
    i = rng.integers(1, a + 1)
    edges = [b for b in range(width - a + 1) if 0 in _twice_minus_half(
        a, v, n, i, b, crowd_class == cls)]
    b = int(rng.integers(0, width - a + 1))
    if edges and rng.random() < 0.8:
      b = int(np.clip(rng.choice(edges) + rng.choice([0, 0, 1, -1]), 0,
                      width - a))
    exact += 0 in _twice_minus_half(a, v, n, i, b, crowd_class == cls)
    pred[row, a - i:a + b] = cls * DIVISOR + 40 + row
    pred[row, :a - i] = 0 if rng.random() < 0.5 else cls * DIVISOR + 90 + row
  return gt, pred, exact


def segments_info(ids, crowd_ids=()):
  """COCO segments of a map whose ids are the panoptic ids (0 = VOID)."""
  segments = []
  for seg, area in zip(*np.unique(ids, return_counts=True)):
    if seg == 0:
      continue
    cls = int(seg // DIVISOR)
    crowd = (cls in THINGS and seg % DIVISOR == 0) or int(seg) in crowd_ids
    segments.append({"id": int(seg), "category_id": cls,
                     "iscrowd": int(crowd), "area": int(area)})
  return segments


def categories(order=None):
  ids = list(range(1, NUM_CLASSES)) if order is None else list(order)
  return [{"id": c, "name": f"class{c}", "isthing": int(c in THINGS)}
          for c in ids]


def write_coco(folder, name, id_maps, segments, category_list):
  """PNGs (id = R + 256 G + 256^2 B) and the JSON; returns the JSON path."""
  os.makedirs(os.path.join(folder, name), exist_ok=True)
  annotations = []
  for i, (ids, segs) in enumerate(zip(id_maps, segments)):
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1)
    Image.fromarray(rgb.astype(np.uint8)).save(
        os.path.join(folder, name, f"{i}.png"))
    annotations.append({"image_id": i, "file_name": f"{i}.png",
                        "segments_info": segs})
  path = os.path.join(folder, name + ".json")
  with open(path, "w") as f:
    json.dump({"images": [{"id": i, "file_name": f"{i}.png"}
                          for i in range(len(id_maps))],
               "annotations": annotations, "categories": category_list}, f)
  return path


QUIRKS = ("random_ids", "crowd_split", "areas", "unlisted", "unknown",
          "shuffle")


def coco_variants(rng, gt, pred, quirks=QUIRKS):
  """COCO ids / segments of one pair, with the quirks only files express.

  Args:
    rng: np.random.Generator.
    gt: Ground-truth map (DeepLab2 encoding).
    pred: Prediction map.
    quirks: Subset of QUIRKS: random segment ids (else the panoptic ids);
      crowd regions split into several crowd segments of one category;
      listed areas that differ from pixel counts (smaller, a third, +0.5);
      ids whose segment is not listed; a category absent from the list;
      segments listed in random order.

  Returns:
    (gt ids, gt segments, pred ids, pred segments).
  """
  gt_ids, pred_ids = np.zeros_like(gt), np.zeros_like(pred)
  used = set()

  def new_id(preferred):
    if "random_ids" not in quirks and preferred > 0:
      return preferred
    while True:
      value = int(rng.integers(1 << 21, 1 << 24))
      if value not in used:
        used.add(value)
        return value

  gt_segments, pred_segments = [], []
  for seg in np.unique(gt[gt > 0]):
    cls, mask = int(seg // DIVISOR), gt == seg
    crowd = cls in THINGS and seg % DIVISOR == 0
    parts = [mask]
    if crowd and "crowd_split" in quirks:  # Column thirds, distinct ids.
      cut = np.arange(gt.shape[1]) * 3 // gt.shape[1]
      parts = [mask & (cut == t)[None, :] for t in range(3)]
      parts = [m for m in parts if m.any()]
    for part in parts:
      value = new_id(int(seg) if len(parts) == 1 else -1)
      gt_ids[part] = value
      area = int(part.sum())
      r = rng.random()
      if "areas" in quirks and r < 0.16:
        area = (max(area - int(rng.integers(1, 4)), 1) if r < 0.1 else
                max(area // 3, 1) if r < 0.13 else area + 0.5)
      if "unlisted" in quirks and 0.94 < r <= 0.97:
        continue  # Pixels of an id no segment lists: neither VOID nor TP.
      category = 42 if ("unknown" in quirks and r > 0.97) else cls
      gt_segments.append({"id": value, "category_id": category,
                          "iscrowd": int(crowd), "area": area})
  for seg in np.unique(pred[pred > 0]):
    value = new_id(int(seg) + (1 << 20))  # Distinct from gt ids.
    pred_ids[pred == seg] = value
    pred_segments.append({"id": value, "category_id": int(seg // DIVISOR)})
  if "shuffle" in quirks:
    rng.shuffle(gt_segments)
    rng.shuffle(pred_segments)
  return gt_ids, gt_segments, pred_ids, pred_segments


class _SerialPool:
  """multiprocessing.Pool stand-in: runs each task at once, in order."""

  def __init__(self, processes):
    del processes

  def apply_async(self, function, args):
    result = function(*args)
    return type("Done", (), {"get": lambda self: result})()

  def close(self):
    pass


def pq_compute(monkeypatch, gt_json, pred_json, gt_folder, pred_folder,
               num_chunks=None):
  """panopticapi's unmodified pq_compute; with `num_chunks`, its worker
  split is that many processes run one after another (same sums)."""
  from panopticapi import evaluation  # pylint: disable=g-import-not-at-top

  with monkeypatch.context() as patch, contextlib.redirect_stdout(
      io.StringIO()):
    if num_chunks is not None:
      patch.setattr(evaluation.multiprocessing, "cpu_count",
                    lambda: num_chunks)
      patch.setattr(evaluation.multiprocessing, "Pool", _SerialPool)
    return evaluation.pq_compute(gt_json, pred_json, gt_folder, pred_folder)


def assert_identical(summary, per_class, reference):
  """Exact equality of our summary / per-class values with pq_compute's."""
  for suffix, name in (("", "All"), ("_Th", "Things"), ("_St", "Stuff")):
    for key in ("pq", "sq", "rq"):
      assert summary[key.upper() + suffix] == reference[name][key], (
          key, name, summary[key.upper() + suffix], reference[name][key])
    assert summary["num_classes" + suffix] == reference[name]["n"]
  assert set(per_class) <= set(reference["per_class"])
  for category, values in reference["per_class"].items():
    ours = per_class.get(category, {"pq": 0.0, "sq": 0.0, "rq": 0.0})
    for key in ("pq", "sq", "rq"):
      assert ours[key] == values[key], (category, key, ours[key], values[key])
