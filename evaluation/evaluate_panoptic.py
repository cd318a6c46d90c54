r"""Offline PQ on COCO-panoptic-format files, identical to panopticapi.

  python -m deeplab2_kmax.evaluation.evaluate_panoptic \
      --gt_json=panoptic_val.json --gt_folder=panoptic_val/ \
      --pred_json=predictions.json --pred_folder=predictions/

Segments are read from each PNG (id = R + 256 G + 256^2 B) and described by
the JSON's `segments_info`; ground-truth id 0 is VOID. The rules, and the
order of every float addition, are panopticapi's `pq_compute` (see
`panoptic_quality`): ground-truth areas come from the JSON's `area`,
predicted areas from pixel counts; a category's crowd region is its last
`iscrowd` segment. Prints PQ / SQ / RQ for all, things and stuff (and per
class with --per_class), with a progress bar.
"""

import json
import os
import sys
from typing import Dict
from typing import Optional

from absl import app
from absl import flags
from absl import logging
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
  flags.DEFINE_integer("num_chunks", 0,
                       "Image runs whose IoUs are summed apart, as "
                       "panopticapi's worker processes (0: CPU count, as "
                       "panopticapi does on this machine).")

_VOID_ID = 0  # panopticapi's VOID segment id in ground-truth PNGs.


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


def read_segment_ids(path: str) -> np.ndarray:
  """[H, W] int64 segment ids of a COCO-panoptic PNG (R + 256 G + 256^2 B)."""
  try:
    with Image.open(path) as image:
      pixels = np.array(image, dtype=np.uint32)  # As panopticapi reads it.
  except OSError as e:
    raise EvaluationError(f"{path}: cannot read the PNG ({e})") from None
  if pixels.ndim != 3 or pixels.shape[2] < 3:
    raise EvaluationError(f"{path}: expected an RGB PNG, got an array of "
                          f"shape {pixels.shape}")
  pixels = pixels.astype(np.int64)
  return pixels[..., 0] + 256 * pixels[..., 1] + 65536 * pixels[..., 2]


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _entry(annotation: dict, key: str, json_path: str):
  if key not in annotation:
    raise EvaluationError(f"{json_path}: an annotation has no '{key}'")
  return annotation[key]


def segment_table(annotation: dict, where: str,
                  ground_truth: bool) -> panoptic_quality.SegmentTable:
  """`segments_info` as a table, in panopticapi's dict order."""
  segments = annotation.get("segments_info")
  if not isinstance(segments, list):
    raise EvaluationError(f"{where}: 'segments_info' is missing")
  by_id = {}
  for segment in segments:
    for field in ("id", "category_id"):
      if not _is_int(segment.get(field)):
        raise EvaluationError(f"{where}: segment {segment.get('id')!r} has no "
                              f"integer '{field}'")
    by_id[segment["id"]] = segment  # A repeated id: the last entry wins.
  crowd, areas = [], []
  for segment in by_id.values() if ground_truth else ():
    if not isinstance(segment.get("iscrowd"), (int, float)):
      raise EvaluationError(f"{where}: segment {segment['id']} has no "
                            "numeric 'iscrowd'")
    crowd.append(segment["iscrowd"] == 1)
    area = segment.get("area", float("nan") if crowd[-1] else None)
    if not isinstance(area, (int, float)) or isinstance(area, bool):
      raise EvaluationError(f"{where}: segment {segment['id']} has no "
                            "numeric 'area'")
    areas.append(area)
  return panoptic_quality.SegmentTable(
      ids=np.array(list(by_id), np.int64).reshape(-1),
      categories=np.array([s["category_id"] for s in by_id.values()],
                          np.int64).reshape(-1),
      crowd=np.array(crowd if ground_truth else [False] * len(by_id), bool),
      areas=np.array(areas if ground_truth else [np.nan] * len(by_id),
                     np.float64))


def _check_prediction(in_png: np.ndarray, table, categories, where: str):
  """panopticapi's checks: PNG (ids `in_png`) and JSON list the same
  segments, of known categories."""
  unlisted = np.setdiff1d(in_png[in_png != _VOID_ID], table.ids)
  if unlisted.size:
    raise EvaluationError(f"{where}: segment ids {unlisted[:5].tolist()} are in "
                          "the PNG but not in segments_info")
  absent = np.setdiff1d(table.ids, in_png)
  if absent.size:
    raise EvaluationError(f"{where}: segments {absent[:5].tolist()} of "
                          "segments_info have no pixels in the PNG")
  unknown = sorted(set(table.categories.tolist()) - set(categories))
  if unknown:
    raise EvaluationError(f"{where}: unknown category_id {unknown[:5]}")


def evaluate(gt_json: str, gt_folder: str, pred_json: str, pred_folder: str,
             progress: bool = True,
             num_chunks: Optional[int] = None) -> Dict[str, object]:
  """PQ of the predictions, as panopticapi's `pq_compute` computes it.

  Args:
    gt_json: Ground-truth COCO-panoptic JSON.
    gt_folder: Its PNG folder.
    pred_json: Prediction JSON (same format).
    pred_folder: Its PNG folder.
    progress: Show a progress bar.
    num_chunks: Runs of images summed apart (panopticapi's worker count);
      default multiprocessing.cpu_count(), as panopticapi on this machine.

  Returns:
    {"summary": PQ/SQ/RQ(_Th/_St), "per_class": {category: values},
     "categories": {category id: JSON entry}}.
  """
  gt = _load_json(gt_json)
  pred = _load_json(pred_json)
  categories = {}
  for info in gt.get("categories", ()):
    if not _is_int(info.get("id")) or "isthing" not in info:
      raise EvaluationError(f"{gt_json}: category {info!r} needs an integer "
                            "'id' and 'isthing'")
    categories[info["id"]] = info
  predictions = {_entry(a, "image_id", pred_json): a
                 for a in pred.get("annotations", ())}
  tally = panoptic_quality.PQTally()
  for annotation in tqdm.tqdm(gt.get("annotations", ()), desc="PQ",
                              disable=not progress):
    image_id = _entry(annotation, "image_id", gt_json)
    if image_id not in predictions:
      raise EvaluationError(f"{pred_json}: no prediction for image "
                            f"{image_id!r}")
    guess = predictions[image_id]
    gt_path = os.path.join(gt_folder, _entry(annotation, "file_name", gt_json))
    pred_path = os.path.join(pred_folder,
                             _entry(guess, "file_name", pred_json))
    gt_ids, pred_ids = read_segment_ids(gt_path), read_segment_ids(pred_path)
    if gt_ids.shape != pred_ids.shape:
      raise EvaluationError(f"{pred_path}: size {pred_ids.shape} differs from "
                            f"{gt_path} {gt_ids.shape}")
    gt_table = segment_table(annotation, f"{gt_json}: image {image_id!r}", True)
    pred_table = segment_table(guess, f"{pred_json}: image {image_id!r}", False)
    gt_map = panoptic_quality.dense_ids(gt_ids)
    pred_map = panoptic_quality.dense_ids(pred_ids)
    _check_prediction(pred_map.values, pred_table, categories, pred_path)
    stray = np.setdiff1d(gt_map.values, np.append(gt_table.ids, _VOID_ID))
    if stray.size:  # panopticapi leaves them unmatched and not void.
      logging.warning("%s: ids %s are not in segments_info; they count as "
                      "no segment (not VOID).", gt_path, stray[:5].tolist())
    tally.add(panoptic_quality.match_image(gt_map, pred_map, gt_table,
                                           pred_table, _VOID_ID))
  per_class = tally.per_category(list(categories), num_chunks)
  summary = panoptic_quality.summarize(
      per_class, [(c, info["isthing"] == 1) for c, info in categories.items()])
  return {"summary": summary, "per_class": per_class,
          "categories": categories}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  for name in ("gt_json", "gt_folder", "pred_json", "pred_folder"):
    if not FLAGS[name].value:
      raise app.UsageError(f"--{name} is required.")
  try:
    result = evaluate(FLAGS.gt_json, FLAGS.gt_folder, FLAGS.pred_json,
                      FLAGS.pred_folder, num_chunks=FLAGS.num_chunks or None)
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
