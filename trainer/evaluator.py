"""Evaluation (Orbit `StandardEvaluator`): inference, post-processing, metrics.

The model and the mask-wise merging run in one `tf.function` (XLA when
`evaluator_options.jit_compile`) at the evaluation crop. On the host, each
image's maps are then mapped back to the original image
(`undo_preprocessing.to_original_size`: drop the padding, nearest resize, as
DeepLab2 and the SavedModel) and scored against the original-size ground
truth with vectorised NumPy:
  PQ / SQ / RQ (all, things, stuff) on the panoptic map;
  mIoU on `semantic_pred` (every pixel gets a class, as DeepLab2);
  COCO mask AP (`coco_ap`) with DeepLab2's score, class confidence x mean
    mask probability, under DeepLab2's names (`AP_Mask`, and the 11 other
    COCOeval stats with `detailed_ap_metrics`).
Saved predictions are the same original-size maps: with `save_predictions`
the whole split in the official format and `num_vis_samples` visualisations
(`visualization.prediction_strip`) per evaluation, with
`save_raw_predictions` DeepLab2's raw files (`raw_predictions`).

`evaluator_options.precision: 'bfloat16'` evaluates a copy of the model
built under Keras' mixed_bfloat16 policy (`precision`), its variables
refreshed from the model at each evaluation (a model already computing in
bfloat16 is used as it is); the outputs are cast to float32 before the
merging. Where bfloat16 is not native, a warning says so and float32 runs;
`KMaXEvaluator.precision` is the precision that ran.
"""

import os
from typing import Dict

from absl import logging
import numpy as np
import orbit
import tensorflow as tf

from deeplab2_kmax import common
from deeplab2_kmax import precision as precision_lib
from deeplab2_kmax import visualization
from deeplab2_kmax.evaluation import coco_instance_ap
from deeplab2_kmax.evaluation import mean_iou
from deeplab2_kmax.evaluation import panoptic_quality
from deeplab2_kmax.evaluation import raw_predictions
from deeplab2_kmax.post_processing import undo_preprocessing

# The post-processed maps the metrics and the writers read.
_MAPS = (common.PRED_PANOPTIC_KEY, common.PRED_SEMANTIC_KEY,
         common.PRED_SEMANTIC_SCORES_KEY, common.PRED_INSTANCE_SCORES_KEY)
_GROUND_TRUTH = (common.GT_PANOPTIC_RAW, common.GT_SIZE_RAW,
                 common.RESIZED_SIZE, common.IMAGE_NAME)


class KMaXEvaluator(orbit.StandardEvaluator):
  """Runs the eval split and returns PQ / PQ_Th / PQ_St / SQ / RQ / mIoU / AP."""

  def __init__(self, config, model, post_processor, dataset, strategy,
               dataset_info, model_dir: str = None, global_step=None):
    self._model = model
    self._inference_model = _inference_model(config, model, strategy)
    self.precision = precision_lib.model_precision(self._inference_model)
    logging.info("Evaluating in %s", self.precision)
    self._post_processor = post_processor
    self._strategy = strategy
    self._info = dataset_info
    self._crop = tuple(config.eval_dataset_options.crop_size)
    options = config.evaluator_options
    self._metrics_wanted = set(options.metrics or
                               ["panoptic_quality", "mean_iou"])
    self._detailed_ap = options.detailed_ap_metrics
    self._pq = None
    self._miou = None
    self._ap = None
    self._writer = None
    self._raw_writer = None
    self._vis_dir = None
    self._vis_left = 0
    self._options = options
    self._renders = options.save_predictions and options.num_vis_samples > 0
    self._save_dir = None
    if options.save_predictions or options.save_raw_predictions:
      self._save_dir = options.override_save_dir or model_dir
    self._global_step = global_step
    self._predict = tf.function(self._predict_fn,
                                jit_compile=options.jit_compile)
    super().__init__(dataset, options=orbit.StandardEvaluatorOptions(
        use_tf_function=True))

  def _predict_fn(self, images):
    # The merging runs in float32 whatever the model computes in.
    outputs = precision_lib.outputs_to_float32(
        self._inference_model(images, training=False))
    predictions = self._post_processor(outputs, self._crop)
    return {key: predictions[key] for key in _MAPS}

  def eval_begin(self):
    if self._inference_model is not self._model:  # The weights evaluated.
      for target, source in zip(self._inference_model.variables,
                                self._model.variables):
        target.assign(source)
    info = self._info
    self._pq = panoptic_quality.PanopticQuality(
        info.num_classes, info.ignore_label, info.panoptic_label_divisor,
        info.thing_class_ids)
    self._miou = mean_iou.MeanIoU(info.num_classes, info.ignore_label)
    self._ap = (coco_instance_ap.InstanceAP(info)
                if "coco_ap" in self._metrics_wanted else None)
    step = int(self._global_step.numpy()) if self._global_step is not None else 0
    if self._options.save_predictions:
      self._writer = self._make_writer(step)
      self._vis_left = self._options.num_vis_samples
      self._vis_dir = os.path.join(self._save_dir, f"vis_step{step}")
    if self._options.save_raw_predictions:
      self._raw_writer = self._make_raw_writer()

  def _make_raw_writer(self):
    class_map = None
    if self._options.convert_raw_to_eval_ids:
      if self._info.name != "cityscapes_panoptic":
        raise ValueError(
            "evaluator_options.convert_raw_to_eval_ids: "
            f"{self._info.name} has no evaluation ids; set it to false")
      from deeplab2_kmax.evaluation import writers  # pylint: disable=g-import-not-at-top
      class_map = writers.CITYSCAPES_TRAIN_ID_TO_LABEL_ID
    return raw_predictions.RawPredictionWriter(
        self._save_dir, self._info.panoptic_label_divisor,
        self._options.raw_panoptic_format, class_map)

  def _make_writer(self, step: int):
    from deeplab2_kmax.evaluation import writers  # pylint: disable=g-import-not-at-top
    info = self._info
    name = f"predictions_step{step}"
    if info.name == "cityscapes_panoptic":
      return writers.CityscapesPanopticWriter(
          self._save_dir, info.panoptic_label_divisor, info.ignore_label,
          info.class_names, info.class_has_instances, name=name)
    # A dataset described by a file writes its source category ids.
    ids = info.category_ids or range(info.num_classes)
    categories = [{"id": ids[c], "name": info.class_names[c],
                   "isthing": int(info.class_has_instances[c])}
                  for c in range(info.num_classes) if c != info.ignore_label]
    return writers.CocoPanopticWriter(
        self._save_dir, info.panoptic_label_divisor, info.ignore_label,
        categories, name=name, category_ids=info.category_ids)

  def eval_step(self, iterator):
    def step_fn(batch):
      outputs = self._predict(batch[common.IMAGE])
      outputs.update({key: batch[key] for key in _GROUND_TRUTH})
      if self._renders:  # The images travel only when rendered.
        outputs[common.IMAGE] = batch[common.IMAGE]
      return outputs
    outputs = self._strategy.run(step_fn, args=(next(iterator),))
    return tf.nest.map_structure(
        lambda x: tf.concat(self._strategy.experimental_local_results(x), 0),
        outputs)

  def eval_reduce(self, state=None, step_outputs=None):
    outputs = tf.nest.map_structure(lambda x: x.numpy(), step_outputs)
    for i, name in enumerate(outputs[common.IMAGE_NAME]):
      height, width = (int(v) for v in outputs[common.GT_SIZE_RAW][i])
      if height == 0:  # Padding of the last batch.
        continue
      maps = undo_preprocessing.to_original_size(
          {key: outputs[key][i:i + 1] for key in _MAPS},
          outputs[common.RESIZED_SIZE][i], (height, width))
      maps = {key: value[0].numpy() for key, value in maps.items()}
      gt = outputs[common.GT_PANOPTIC_RAW][i, :height, :width]
      name = name.decode() if isinstance(name, bytes) else name
      self._score(gt, maps, name)
      if common.IMAGE in outputs and self._vis_left > 0:
        resized = outputs[common.RESIZED_SIZE][i]
        self._visualise(outputs[common.IMAGE][i, :resized[0], :resized[1]],
                        gt, maps[common.PRED_PANOPTIC_KEY], name)
    return state

  def _visualise(self, image, gt, panoptic, name: str):
    """Writes image | ground truth | prediction at the original size."""
    index = self._options.num_vis_samples - self._vis_left
    self._vis_left -= 1
    os.makedirs(self._vis_dir, exist_ok=True)
    strip = visualization.prediction_strip(
        visualization.resize_nearest(image, gt.shape), gt, panoptic,
        self._info.panoptic_label_divisor, self._info.colormap,
        self._info.ignore_label)
    stem = os.path.splitext(os.path.basename(name))[0]
    visualization.save_png(
        strip, os.path.join(self._vis_dir, f"{index:06d}_{stem}.png"))

  def _score(self, gt: np.ndarray, maps: Dict[str, np.ndarray], name: str):
    """Updates the metrics (and the writer) with one original-size image."""
    panoptic = maps[common.PRED_PANOPTIC_KEY]
    self._pq.update(gt, panoptic)
    self._miou.update(gt // self._info.panoptic_label_divisor,
                      maps[common.PRED_SEMANTIC_KEY])
    # (class confidence, mask confidence) maps, as `coco_instance_ap` takes.
    scores = (maps[common.PRED_SEMANTIC_SCORES_KEY],
              maps[common.PRED_INSTANCE_SCORES_KEY])
    if self._ap is not None:
      self._ap.update(gt, panoptic, *scores)
    if self._writer is not None:
      self._writer.add(name, panoptic, coco_instance_ap.segment_scores(
          panoptic, *scores, self._info.panoptic_label_divisor,
          self._info.ignore_label))
    if self._raw_writer is not None:
      self._raw_writer.add(name, panoptic, maps[common.PRED_SEMANTIC_KEY])

  def eval_end(self, state=None) -> Dict[str, float]:
    if self._writer is not None:
      self._writer.close()
      self._writer = None
    self._raw_writer = None
    self._vis_left = 0
    results = {}
    if "panoptic_quality" in self._metrics_wanted:
      results.update({k: v for k, v in self._pq.result().items()
                      if not k.startswith("num_")})
    if "mean_iou" in self._metrics_wanted:
      results.update(self._miou.result())
    if self._ap is not None:
      ap = self._ap.result()
      results.update(ap if self._detailed_ap else {"AP_Mask": ap["AP_Mask"]})
    return {k: np.float32(v) for k, v in results.items()}


def _inference_model(config, model, strategy):
  """The model evaluation runs: `model`, or its copy in the asked precision.

  The copy is built (under `strategy`) only for `evaluator_options.precision`
  'bfloat16', where it runs natively, on a model computing in another
  precision; 'float32' evaluates `model` as it is.
  """
  options = config.evaluator_options
  wanted = precision_lib.resolve(options.precision,
                                 "evaluator_options.precision")
  if (wanted == precision_lib.FLOAT32 or
      precision_lib.model_precision(model) == wanted):
    return model
  with strategy.scope():
    copy = precision_lib.build_model(
        config, config.eval_dataset_options.crop_size, wanted)
  shapes = [v.shape for v in copy.variables]
  if shapes != [v.shape for v in model.variables]:
    raise ValueError("evaluator_options.precision: the bfloat16 copy of the "
                     "model has other variables than the model evaluated")
  return copy
