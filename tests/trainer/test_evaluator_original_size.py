"""The evaluator scores (and saves) predictions at the original image size.

A colour-coded stand-in model predicts each pixel's segment from its colour,
so a correctly mapped-back prediction nearly equals the ground truth (up to
resampling at borders), while a prediction read from the padded, resized
crop without mapping it back does not. Images are smaller and larger than
the crop, portrait and landscape; configs are a COCO-like resize (long side
to the crop) and a Cityscapes-like pad only.
"""

import contextlib
import io
import json
import os

import numpy as np
from PIL import Image
from pycocotools import coco as coco_api
from pycocotools import cocoeval
from pycocotools import mask as mask_api
import pytest
import tensorflow as tf
import trainer_test_utils as utils

from deeplab2_kmax import builders
from deeplab2_kmax import common
from deeplab2_kmax.data import build_synthetic_data
from deeplab2_kmax.data import synthetic
from deeplab2_kmax.data import tfrecord
from deeplab2_kmax.trainer import evaluator as evaluator_lib

pq_compute = pytest.importorskip("panopticapi.evaluation").pq_compute

SIZES = ((20, 28), (26, 14), (50, 70), (70, 44))  # (H, W).
COLOUR_STEP = 50.0  # Red value of slot k: k * 50; padding (127.5) -> slot 3.
# Slot -> panoptic id (synthetic: divisor 256, stuff 1-3, things 4-8); slot 5
# is void, predicted by a slot whose class is void.
SLOT_IDS = (1 * 256, 2 * 256, 4 * 256 + 1, 5 * 256 + 1, 4 * 256 + 2, 0)


def _ground_truth(height, width):
  """Two stuff halves, three thing boxes and a void strip, by fraction."""
  slots = np.zeros((height, width), np.int64)
  slots[height // 2:] = 1
  for slot, (top, left, bottom, right) in (
      (2, (0.1, 0.1, 0.45, 0.5)), (3, (0.55, 0.55, 0.95, 0.95)),
      (4, (0.2, 0.6, 0.7, 0.9)), (5, (0.0, 0.0, 1.0, 0.06))):
    slots[int(top * height):int(bottom * height),
          int(left * width):int(right * width)] = slot
  return slots


class _ColourCodedModel:
  """Mask logits from the red channel; slot k has the class of SLOT_IDS[k]."""

  def __init__(self, dataset_info):
    things, stuff = builders.class_ids(dataset_info)
    order = list(things) + list(stuff)
    logits = np.zeros((len(SLOT_IDS), len(order) + 1), np.float32)
    for slot, panoptic_id in enumerate(SLOT_IDS):
      cls = panoptic_id // 256
      logits[slot, order.index(cls) if cls else -1] = 6.0
    self._class_logits = tf.constant(logits)

  def __call__(self, images, training=False):
    del training
    slot = tf.cast(tf.round(images[..., 0] / COLOUR_STEP), tf.int32)
    slot = tf.clip_by_value(slot, 0, len(SLOT_IDS) - 1)
    batch = tf.shape(images)[0]
    return {
        common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY:
            10.0 * tf.one_hot(slot, len(SLOT_IDS)),
        common.PRED_TRANSFORMER_CLASS_LOGITS_KEY: tf.tile(
            self._class_logits[tf.newaxis], [batch, 1, 1]),
    }


def _write_dataset(directory):
  """TFRecord of the four images + the COCO panoptic GT (JSON + PNGs)."""
  png_dir = os.path.join(directory, "gt")
  os.makedirs(png_dir)
  records, images, annotations = [], [], []
  for index, (height, width) in enumerate(SIZES):
    slots = _ground_truth(height, width)
    panoptic = np.array(SLOT_IDS)[slots].astype(np.int32)
    rgb = np.zeros((height, width, 3), np.uint8)
    rgb[..., 0] = slots * COLOUR_STEP
    name = f"image_{index}"
    records.append(tfrecord.encode_example(
        tfrecord.encode_png(rgb), "png", name, height, width, panoptic))
    Image.fromarray(build_synthetic_data.panoptic_to_rgb(panoptic)).save(
        os.path.join(png_dir, name + ".png"))
    images.append({"id": name, "file_name": name + ".png", "height": height,
                   "width": width})
    annotations.append({
        "image_id": name, "file_name": name + ".png",
        "segments_info": build_synthetic_data.segments_info(panoptic)})
  tfrecord.write_sharded(records, [os.path.join(directory, "val.tfrecord")],
                         len(records))
  with open(os.path.join(directory, "gt.json"), "w") as f:
    json.dump({"images": images, "annotations": annotations,
               "categories": build_synthetic_data.coco_categories()}, f)


def _evaluate(directory, crop, resize):
  config = utils.tiny_config(directory)
  options = config.eval_dataset_options
  options.file_pattern[:] = [os.path.join(directory, "val.tfrecord")]
  options.batch_size = 3  # Batches of 3 and 1; raw labels padded per batch.
  options.crop_size[:] = crop
  # 0 disables a bound, as in the Cityscapes configs.
  options.min_resize_value[:] = [resize]
  options.max_resize_value[:] = [resize]
  evaluator_options = config.evaluator_options
  evaluator_options.thing_area_limit = 0
  evaluator_options.stuff_area_limit = 0
  evaluator_options.detailed_ap_metrics = True
  evaluator_options.save_predictions = True
  evaluator_options.override_save_dir = os.path.join(directory, f"out{crop}")
  evaluator_options.metrics[:] = ["panoptic_quality", "coco_ap", "mean_iou"]
  info = builders.dataset_info(config)
  evaluator = evaluator_lib.KMaXEvaluator(
      config, _ColourCodedModel(info), builders.build_post_processor(config),
      builders.build_dataset(config, training=False),
      tf.distribute.get_strategy(), info)
  results = evaluator.evaluate(tf.constant(-1))
  return ({k: float(v) for k, v in results.items()},
          os.path.join(evaluator_options.override_save_dir,
                       "predictions_step0"))


def _saved_predictions_ap(directory, predictions):
  """pycocotools on the saved PNGs and their JSON scores vs the GT."""
  with open(os.path.join(directory, "gt.json")) as f:
    gt_json = json.load(f)
  with open(predictions + ".json") as f:
    pred_json = json.load(f)
  things = synthetic.INFO.thing_class_ids
  images, gt_anns, detections = [], [], []
  for number, (image, gt_ann, pred_ann) in enumerate(zip(
      gt_json["images"], gt_json["annotations"], pred_json["annotations"]),
                                                      start=1):
    images.append({"id": number, "height": image["height"],
                   "width": image["width"]})
    for folder, ann, out in ((os.path.join(directory, "gt"), gt_ann, gt_anns),
                             (predictions, pred_ann, detections)):
      rgb = np.asarray(Image.open(os.path.join(folder, ann["file_name"])),
                       np.int64)
      ids = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
      for segment in ann["segments_info"]:
        if segment["category_id"] not in things:
          continue
        mask = np.asfortranarray((ids == segment["id"]).astype(np.uint8))
        rle = mask_api.encode(mask)
        out.append({"id": len(out) + 1, "image_id": number, "iscrowd": 0,
                    "category_id": segment["category_id"], "area":
                    float(mask.sum()), "bbox": list(mask_api.toBbox(rle)),
                    "segmentation": rle, "score": segment.get("score", 1.0)})
  with contextlib.redirect_stdout(io.StringIO()):
    reference = coco_api.COCO()
    reference.dataset = {"images": images, "annotations": gt_anns,
                         "categories": [{"id": c} for c in things]}
    reference.createIndex()
    evaluator = cocoeval.COCOeval(reference, reference.loadRes(detections),
                                  "segm")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
  return evaluator.stats


@pytest.mark.parametrize("crop,resize", [((33, 33), 33),  # COCO-like.
                                         ((41, 49), 0)])  # Pad only.
def test_predictions_are_scored_and_saved_at_the_original_size(
    tmp_path, crop, resize):
  directory = str(tmp_path)
  _write_dataset(directory)
  results, predictions = _evaluate(directory, crop, resize)
  for index, (height, width) in enumerate(SIZES):
    saved = Image.open(os.path.join(predictions, f"image_{index}.png"))
    assert saved.size == (width, height)
  with contextlib.redirect_stdout(io.StringIO()):
    reference = pq_compute(os.path.join(directory, "gt.json"),
                           predictions + ".json",
                           os.path.join(directory, "gt"), predictions)
  assert results["PQ"] == pytest.approx(reference["All"]["pq"], abs=1e-6)
  assert results["PQ_Th"] == pytest.approx(reference["Things"]["pq"],
                                           abs=1e-6)
  # Mapped back, every segment is found again (borders aside).
  assert results["PQ"] > 0.8 and results["mIoU"] > 0.8
  stats = _saved_predictions_ap(directory, predictions)
  assert results["AP_Mask"] == pytest.approx(stats[0], abs=1e-6)
  assert results["AP_Mask_@IoU=0.5"] == pytest.approx(stats[1], abs=1e-6)
  assert results["AR_Mask_maxdets=100"] == pytest.approx(stats[8], abs=1e-6)
