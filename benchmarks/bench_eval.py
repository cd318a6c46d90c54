r"""PQ over generated 640x480 image pairs: this evaluator vs panopticapi.

  python -m benchmarks.bench_eval [--num_images=500]

Writes the pairs once in COCO panoptic format (PNG + JSON), then times
panopticapi's `pq_compute` on the files and this library's streaming
evaluator on the same files (PNG decoding included for both), and checks
that PQ / SQ / RQ agree. Not a test.
"""

import argparse
import json
import os
import tempfile
import time

import numpy as np
from PIL import Image

from benchmarks import harness
from deeplab2_kmax.evaluation import panoptic_quality

DIVISOR = 256
THINGS = tuple(range(1, 81))
NUM_CLASSES = 134


def _image_pair(rng, height=480, width=640):
  gt = np.full((height, width), rng.integers(81, 134) * DIVISOR, np.int64)
  for _ in range(rng.integers(3, 8)):  # Stuff regions.
    y, x = rng.integers(0, height - 60), rng.integers(0, width - 60)
    gt[y:y + rng.integers(40, 240), x:x + rng.integers(40, 320)] = (
        rng.integers(81, 134) * DIVISOR)
  for k in range(1, rng.integers(5, 25)):
    y, x = rng.integers(0, height - 10), rng.integers(0, width - 10)
    gt[y:y + rng.integers(4, 120), x:x + rng.integers(4, 120)] = (
        rng.integers(1, 81) * DIVISOR + k)
  gt[rng.random((height, width)) < 0.02] = 0
  pred = np.roll(gt, rng.integers(-6, 7), axis=1)
  return gt, pred


def _write(folder, name, maps):
  os.makedirs(os.path.join(folder, name))
  annotations = []
  for i, ids in enumerate(maps):
    Image.fromarray(np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1)
                    .astype(np.uint8)).save(
                        os.path.join(folder, name, f"{i}.png"))
    segments = [{"id": int(s), "category_id": int(s // DIVISOR), "iscrowd": 0,
                 "area": int(n)}  # pq_compute reads the area from the JSON.
                for s, n in zip(*np.unique(ids, return_counts=True)) if s]
    annotations.append({"image_id": i, "file_name": f"{i}.png",
                        "segments_info": segments})
  categories = [{"id": c, "name": str(c), "isthing": int(c in THINGS)}
                for c in range(1, NUM_CLASSES)]
  path = os.path.join(folder, name + ".json")
  with open(path, "w") as f:
    json.dump({"annotations": annotations, "categories": categories,
               "images": [{"id": i} for i in range(len(maps))]}, f)
  return path


def _read(path):
  rgb = np.asarray(Image.open(path), np.int64)
  return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


def measure(num_images: int = 500):
  """(panopticapi seconds, our seconds, panopticapi PQ, our PQ)."""
  from panopticapi import evaluation  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  with tempfile.TemporaryDirectory() as folder:
    pairs = [_image_pair(rng) for _ in range(num_images)]
    gt_json = _write(folder, "gt", [g for g, _ in pairs])
    pred_json = _write(folder, "pred", [p for _, p in pairs])
    del pairs
    start = time.perf_counter()
    reference = evaluation.pq_compute(gt_json, pred_json,
                                      os.path.join(folder, "gt"),
                                      os.path.join(folder, "pred"))
    panopticapi_s = time.perf_counter() - start
    start = time.perf_counter()
    metric = panoptic_quality.PanopticQuality(NUM_CLASSES, 0, DIVISOR, THINGS)
    for i in range(num_images):
      metric.update(_read(os.path.join(folder, "gt", f"{i}.png")),
                    _read(os.path.join(folder, "pred", f"{i}.png")))
    ours = metric.result()
    ours_s = time.perf_counter() - start
  return panopticapi_s, ours_s, reference["All"]["pq"], ours["PQ"]


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--num_images", type=int, default=500)
  args = parser.parse_args()
  panopticapi_s, ours_s, reference_pq, ours_pq = measure(args.num_images)
  rows = [
      {"evaluator": "panopticapi pq_compute", "seconds": f"{panopticapi_s:.1f}",
       "PQ": f"{100 * reference_pq:.4f}"},
      {"evaluator": "deeplab2_kmax PanopticQuality", "seconds": f"{ours_s:.1f}",
       "PQ": f"{100 * ours_pq:.4f}"},
  ]
  harness.print_table(rows, ["evaluator", "seconds", "PQ"])
  print(f"\n{args.num_images} image pairs 640x480; speed-up "
        f"{panopticapi_s / ours_s:.1f}x; |PQ difference| = "
        f"{abs(reference_pq - ours_pq):.2e}")


if __name__ == "__main__":
  main()
