r"""Offline PQ on COCO-panoptic-format files (like panopticapi's pq_compute).

  python -m deeplab2_kmax.evaluation.evaluate_panoptic \
      --gt_json=panoptic_val.json --gt_folder=panoptic_val/ \
      --pred_json=predictions.json --pred_folder=predictions/

Segments are read from each PNG (id = R + 256 G + 256^2 B) and labelled by
the JSON's `segments_info`; `iscrowd` ground-truth segments are crowd
regions. Prints PQ / SQ / RQ for all, things and stuff (and per class with
--per_class), with a progress bar.
"""

import json
import os
import sys
from typing import Dict
from typing import Tuple

from absl import app
from absl import flags
import numpy as np
from PIL import Image
import tqdm

from deeplab2_kmax.evaluation import panoptic_quality

FLAGS = flags.FLAGS


def _define_flags() -> None:
  """CLI flags; defined only when run as a program (modules share names)."""
  flags.DEFINE_string("gt_json", None, "Ground-truth JSON.")
  flags.DEFINE_string("gt_folder", None, "Ground-truth PNG folder.")
  flags.DEFINE_string("pred_json", None, "Prediction JSON.")
  flags.DEFINE_string("pred_folder", None,
                      "Prediction PNG folder.")
  flags.DEFINE_bool("per_class", False, "Also print every class.")

_VOID_CLASS = 0  # COCO panoptic category ids start at 1.


class EvaluationError(ValueError):
  """A missing or inconsistent input; the message names the file."""


def _load_json(path: str) -> dict:
  try:
    with open(path) as f:
      return json.load(f)
  except OSError as e:
    raise EvaluationError(f"{path}: cannot read ({e.strerror})") from None
  except json.JSONDecodeError as e:
    raise EvaluationError(f"{path}: not valid JSON ({e})") from None


def _read_png(folder: str, name: str) -> np.ndarray:
  path = os.path.join(folder, name)
  try:
    rgb = np.asarray(Image.open(path).convert("RGB"), np.int64)
  except OSError as e:
    raise EvaluationError(f"{path}: cannot read the PNG ({e})") from None
  return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


def to_panoptic(ids: np.ndarray, segments, divisor: int,
                png_path: str) -> Tuple[np.ndarray, set]:
  """COCO segment ids -> class * divisor + k (void 0); crowd panoptic ids."""
  panoptic = np.zeros(ids.shape, np.int64)
  crowd = set()
  known = np.zeros(ids.shape, bool)
  for k, segment in enumerate(segments, start=1):
    region = ids == segment["id"]
    known |= region
    label = segment["category_id"] * divisor + k
    panoptic[region] = label
    if segment.get("iscrowd", 0):
      crowd.add(label)
  stray = np.unique(ids[~known & (ids != 0)])
  if stray.size:
    raise EvaluationError(f"{png_path}: segment ids {stray[:5].tolist()} are "
                          "not listed in segments_info")
  return panoptic, crowd


def evaluate(gt_json: str, gt_folder: str, pred_json: str, pred_folder: str,
             progress: bool = True) -> Dict[str, object]:
  gt = _load_json(gt_json)
  pred = _load_json(pred_json)
  categories = {c["id"]: c for c in gt["categories"]}
  things = [c for c, info in categories.items() if info.get("isthing")]
  divisor = 1 << 16  # Above any instance count per image.
  predictions = {a["image_id"]: a for a in pred["annotations"]}
  metric = panoptic_quality.PanopticQuality(
      max(categories) + 1, _VOID_CLASS, divisor, things)
  for annotation in tqdm.tqdm(gt["annotations"], desc="PQ",
                              disable=not progress):
    image_id = annotation["image_id"]
    if image_id not in predictions:
      raise EvaluationError(f"{pred_json}: no prediction for image "
                            f"{image_id!r}")
    guess = predictions[image_id]
    gt_path = os.path.join(gt_folder, annotation["file_name"])
    pred_path = os.path.join(pred_folder, guess["file_name"])
    gt_map, crowd = to_panoptic(_read_png(gt_folder, annotation["file_name"]),
                                annotation["segments_info"], divisor, gt_path)
    pred_map, _ = to_panoptic(_read_png(pred_folder, guess["file_name"]),
                              guess["segments_info"], divisor, pred_path)
    if gt_map.shape != pred_map.shape:
      raise EvaluationError(f"{pred_path}: size {pred_map.shape} differs from "
                            f"{gt_path} {gt_map.shape}")
    # Crowd segments are marked explicitly; thing instances are never 0 here.
    metric.update(gt_map, pred_map, gt_crowd_ids=crowd)
  return {"summary": metric.result(), "per_class": metric.per_class(),
          "categories": categories}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  for name in ("gt_json", "gt_folder", "pred_json", "pred_folder"):
    if not FLAGS[name].value:
      raise app.UsageError(f"--{name} is required.")
  try:
    result = evaluate(FLAGS.gt_json, FLAGS.gt_folder, FLAGS.pred_json,
                      FLAGS.pred_folder)
  except EvaluationError as e:
    print(f"ERROR: {e}", file=sys.stderr)
    sys.exit(1)
  summary = result["summary"]
  print(f"{'':8s} {'PQ':>6s} {'SQ':>6s} {'RQ':>6s} {'N':>4s}")
  for name, suffix in (("All", ""), ("Things", "_Th"), ("Stuff", "_St")):
    print(f"{name:8s} {100 * summary['PQ' + suffix]:6.2f} "
          f"{100 * summary['SQ' + suffix]:6.2f} "
          f"{100 * summary['RQ' + suffix]:6.2f} "
          f"{summary['num_classes' + suffix]:4d}")
  if FLAGS.per_class:
    for cls, values in sorted(result["per_class"].items()):
      name = result["categories"][cls].get("name", cls)
      print(f"  {name!s:20s} PQ {100 * values['pq']:6.2f}")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
