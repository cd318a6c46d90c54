r"""Where the demo loses its things: segmentation, classification or thresholds.

  python -m benchmarks.demo_diagnosis --checkpoint=demo_output/model/ckpt-1500 \
      [--config=configs/synthetic/kmax_tiny_plain_os8.textproto] [--num_images=96]

Runs the checkpoint on the first `--num_images` images of the synthetic
training and validation splits (regenerated from the data seed, so no
records are needed) and prints, per split, one JSON line with:

  demo / relaxed      PQ with the config's evaluator, and with class
                      thresholds and area limits at 0;
  agnostic_*          the same with every thing class mapped to one, so only
                      the segmentation of things is scored;
  oracle_recall       ground-truth things whose best slot (hard argmax over
                      slots) has IoU > 0.5, and oracle_class_accuracy, how
                      often that slot's argmax class is right;
  confusion           rows: ground-truth thing class, columns: the slot's
                      argmax over all classes, then void.

Then, for the validation split, PQ under a sweep of the thing class
threshold with and without area limits. docs/demo.md reports its output.
Not a test.
"""

import argparse
import copy
import json

import numpy as np
import tensorflow as tf

from deeplab2_kmax import builders
from deeplab2_kmax import common
from deeplab2_kmax import config_loader
from deeplab2_kmax.data import synthetic
from deeplab2_kmax.evaluation import panoptic_quality

_DEFAULT_CONFIG = "configs/synthetic/kmax_tiny_plain_os8.textproto"
_SWEEP = (0.0, 0.2, 0.3, 0.5, 0.7)
_BATCH = 8


def _with_limits(config, thing_threshold, stuff_threshold, area_limits):
  """A copy of `config` with these class thresholds and area limits."""
  config = copy.deepcopy(config)
  evaluator = config.evaluator_options
  maskwise = evaluator.maskwise_postprocessing
  maskwise.transformer_class_confidence_threshold_thing = thing_threshold
  maskwise.transformer_class_confidence_threshold_stuff = stuff_threshold
  evaluator.thing_area_limit, evaluator.stuff_area_limit = area_limits
  return config


def _new_pq(info):
  return panoptic_quality.PanopticQuality(
      info.num_classes, info.ignore_label, info.panoptic_label_divisor,
      list(info.thing_class_ids))


class _Diagnosis:
  """Accumulates the figures of one split."""

  def __init__(self, info, num_classes_out: int):
    self._info = info
    self._things = list(info.thing_class_ids)
    self._divisor = info.panoptic_label_divisor
    self.pq = {name: _new_pq(info) for name in
               ("demo", "relaxed", "agnostic_demo", "agnostic_relaxed")}
    self.num_things = 0
    self.found = 0
    self.best_ious = []
    self.confusion = np.zeros((len(self._things), num_classes_out + 1),
                              np.int64)

  def agnostic(self, panoptic: np.ndarray) -> np.ndarray:
    """Every thing becomes the first thing class; instance ids stay distinct."""
    panoptic = panoptic.copy()
    classes = panoptic // self._divisor
    is_thing = np.isin(classes, self._things)
    # Instances of different classes may share an id: keep them apart.
    instance = (panoptic[is_thing] % self._divisor
                + (classes[is_thing] - self._things[0]) * 40)
    panoptic[is_thing] = self._things[0] * self._divisor + instance
    return panoptic

  def add_oracle(self, truth, assignment, class_probs):
    """Best-IoU slot of every ground-truth thing and that slot's class."""
    valid = truth // self._divisor != self._info.ignore_label
    for segment in np.unique(truth):
      label = segment // self._divisor
      if label not in self._things or segment % self._divisor == 0:
        continue
      mask = truth == segment
      self.num_things += 1
      best_iou, best_slot = 0.0, -1
      for slot in np.unique(assignment[mask]):
        predicted = (assignment == slot) & valid
        iou = (predicted & mask).sum() / (predicted | mask).sum()
        if iou > best_iou:
          best_iou, best_slot = iou, slot
      self.best_ious.append(best_iou)
      if best_iou > 0.5:
        self.found += 1
        self.confusion[self._things.index(label),
                       int(np.argmax(class_probs[best_slot]))] += 1

  def result(self):
    figures = {}
    for name, pq in self.pq.items():
      r = pq.result()
      figures[name] = {k: round(100 * float(r[k]), 1)
                       for k in ("PQ", "PQ_Th", "PQ_St", "SQ_Th", "RQ_Th")}
    matched = self.confusion.sum()
    correct = sum(self.confusion[i, i] for i in range(len(self._things)))
    figures["oracle_recall"] = round(self.found / max(self.num_things, 1), 3)
    figures["mean_best_iou"] = round(float(np.mean(self.best_ious)), 3)
    figures["oracle_class_accuracy"] = round(correct / max(matched, 1), 3)
    figures["confusion"] = self.confusion.tolist()
    return figures


def _samples(seed, split, num_images):
  for start in range(0, num_images, _BATCH):
    yield [synthetic.generate(seed, split, i)
           for i in range(start, min(start + _BATCH, num_images))]


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--checkpoint", required=True)
  parser.add_argument("--config", default=_DEFAULT_CONFIG)
  parser.add_argument("--num_images", type=int, default=96)
  parser.add_argument("--data_seed", type=int, default=0,
                      help="the seed the demo's data were built with")
  args = parser.parse_args()

  config = config_loader.load_config(args.config, {"DATA_DIR": "unused"})
  info = builders.dataset_info(config)
  crop = tuple(config.eval_dataset_options.crop_size)
  if crop != (synthetic.IMAGE_SIZE, synthetic.IMAGE_SIZE):
    raise SystemExit(f"--config: eval crop_size {crop} must be the synthetic "
                     f"image size {synthetic.IMAGE_SIZE}")
  model = builders.build_model(config, crop_size=crop)
  tf.train.Checkpoint(model=model).read(args.checkpoint).expect_partial()
  # Class-logit index i is this class id (things first, then stuff).
  thing_ids, stuff_ids = builders.class_ids(info)
  num_logits = len(thing_ids) + len(stuff_ids)
  post_demo = builders.build_post_processor(config)
  post_relaxed = builders.build_post_processor(
      _with_limits(config, 0.0, 0.0, (0, 0)))
  evaluator = config.evaluator_options
  stuff_threshold = (evaluator.maskwise_postprocessing
                     .transformer_class_confidence_threshold_stuff)
  shipped_limits = (evaluator.thing_area_limit, evaluator.stuff_area_limit)
  # Only the thing threshold and the area limits move in the sweep.
  sweep = [((t, limits), builders.build_post_processor(
      _with_limits(config, t, stuff_threshold, limits)))
           for t in _SWEEP for limits in (shipped_limits, (0, 0))]
  sweep_pq = [_new_pq(info) for _ in sweep]

  for split in ("train", "val"):
    diagnosis = _Diagnosis(info, num_logits)
    for batch in _samples(args.data_seed, split, args.num_images):
      images = tf.constant(np.stack([s.image for s in batch]), tf.float32)
      outputs = model(images, training=False)
      demo = post_demo(outputs, crop)[common.PRED_PANOPTIC_KEY].numpy()
      relaxed = post_relaxed(outputs, crop)[common.PRED_PANOPTIC_KEY].numpy()
      swept = ([post(outputs, crop)[common.PRED_PANOPTIC_KEY].numpy()
                for _, post in sweep] if split == "val" else [])
      mask_logits = outputs[common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY].numpy()
      class_probs = tf.nn.softmax(
          outputs[common.PRED_TRANSFORMER_CLASS_LOGITS_KEY]).numpy()
      for j, sample in enumerate(batch):
        truth = sample.panoptic
        diagnosis.pq["demo"].update(truth, demo[j])
        diagnosis.pq["relaxed"].update(truth, relaxed[j])
        diagnosis.pq["agnostic_demo"].update(
            diagnosis.agnostic(truth), diagnosis.agnostic(demo[j]))
        diagnosis.pq["agnostic_relaxed"].update(
            diagnosis.agnostic(truth), diagnosis.agnostic(relaxed[j]))
        for pq, panoptic in zip(sweep_pq, swept):
          pq.update(truth, panoptic[j])
        # Masks may be at a stride of the image: repeat each mask pixel.
        assignment = np.argmax(mask_logits[j], -1)
        if assignment.shape[0] > truth.shape[0]:
          step = assignment.shape[0] // truth.shape[0]
          assignment = assignment[::step, ::step]
        stride = truth.shape[0] // assignment.shape[0]
        assignment = np.repeat(np.repeat(assignment, stride, 0), stride, 1)
        diagnosis.add_oracle(truth, assignment, class_probs[j])
    print(json.dumps({"split": split, **diagnosis.result()}), flush=True)

  for ((threshold, limits), _), pq in zip(sweep, sweep_pq):
    r = pq.result()
    print(json.dumps({"split": "val", "thing_class_threshold": threshold,
                      "area_limits": list(limits),
                      **{k: round(100 * float(r[k]), 1)
                         for k in ("PQ", "PQ_Th", "PQ_St")}}), flush=True)


if __name__ == "__main__":
  main()
