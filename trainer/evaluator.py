"""Evaluation (Orbit `StandardEvaluator`): inference, post-processing, PQ/mIoU/AP.

The model and the mask-wise merging run in one `tf.function` (XLA when
`evaluator_options.jit_compile`); the metrics stream on the host with
vectorised NumPy.
"""

from typing import Dict

import numpy as np
import orbit
import tensorflow as tf

from deeplab2_kmax import common
from deeplab2_kmax.evaluation import mean_iou
from deeplab2_kmax.evaluation import panoptic_quality


class KMaXEvaluator(orbit.StandardEvaluator):
  """Runs the eval split and returns PQ / PQ_Th / PQ_St / SQ / RQ / mIoU."""

  def __init__(self, config, model, post_processor, dataset, strategy,
               dataset_info, model_dir: str = None, global_step=None):
    self._model = model
    self._post_processor = post_processor
    self._strategy = strategy
    self._info = dataset_info
    self._crop = tuple(config.eval_dataset_options.crop_size)
    self._metrics_wanted = set(config.evaluator_options.metrics or
                               ["panoptic_quality", "mean_iou"])
    self._pq = None
    self._miou = None
    self._ap = None
    self._writer = None
    self._save_dir = None
    options = config.evaluator_options
    if options.save_predictions:
      self._save_dir = options.override_save_dir or model_dir
    self._global_step = global_step
    self._predict = tf.function(self._predict_fn,
                                jit_compile=options.jit_compile)
    super().__init__(dataset, options=orbit.StandardEvaluatorOptions(
        use_tf_function=True))

  def _predict_fn(self, images):
    outputs = self._model(images, training=False)
    return self._post_processor(outputs, self._crop)

  def eval_begin(self):
    info = self._info
    self._pq = panoptic_quality.PanopticQuality(
        info.num_classes, info.ignore_label, info.panoptic_label_divisor,
        info.thing_class_ids)
    self._miou = mean_iou.MeanIoU(info.num_classes, info.ignore_label)
    if "coco_ap" in self._metrics_wanted:
      from deeplab2_kmax.evaluation import coco_instance_ap  # pylint: disable=g-import-not-at-top
      self._ap = coco_instance_ap.InstanceAP(info)
    else:
      self._ap = None
    if self._save_dir:
      from deeplab2_kmax.evaluation import writers  # pylint: disable=g-import-not-at-top
      step = int(self._global_step.numpy()) if self._global_step is not None else 0
      name = f"predictions_step{step}"
      if info.name == "cityscapes_panoptic":
        self._writer = writers.CityscapesPanopticWriter(
            self._save_dir, info.panoptic_label_divisor, info.ignore_label,
            info.class_names, info.class_has_instances, name=name)
      else:
        categories = [{"id": c, "name": info.class_names[c],
                       "isthing": int(info.class_has_instances[c])}
                      for c in range(info.num_classes)
                      if c != info.ignore_label]
        self._writer = writers.CocoPanopticWriter(
            self._save_dir, info.panoptic_label_divisor, info.ignore_label,
            categories, name=name)

  def eval_step(self, iterator):
    def step_fn(batch):
      predictions = self._predict(batch[common.IMAGE])
      return {
          "panoptic": predictions[common.PRED_PANOPTIC_KEY],
          "scores": predictions[common.PRED_INSTANCE_SCORES_KEY],
          "gt": batch[common.GT_PANOPTIC_RAW],
          "size": batch[common.GT_SIZE_RAW],
          "name": batch[common.IMAGE_NAME],
      }
    outputs = self._strategy.run(step_fn, args=(next(iterator),))
    return tf.nest.map_structure(
        lambda x: tf.concat(self._strategy.experimental_local_results(x), 0),
        outputs)

  def eval_reduce(self, state=None, step_outputs=None):
    outputs = tf.nest.map_structure(lambda x: x.numpy(), step_outputs)
    divisor = self._info.panoptic_label_divisor
    for pred, scores, gt, size, name in zip(
        outputs["panoptic"], outputs["scores"], outputs["gt"], outputs["size"],
        outputs["name"]):
      height, width = int(size[0]), int(size[1])
      if height == 0:  # Padding of the last batch.
        continue
      pred, gt = pred[:height, :width], gt[:height, :width]
      self._pq.update(gt, pred)
      self._miou.update(gt // divisor, pred // divisor)
      if self._ap is not None:
        self._ap.update(gt, pred, scores[:height, :width])
      if self._writer is not None:
        self._writer.add(name.decode() if isinstance(name, bytes) else name,
                         pred, scores[:height, :width])
    return state

  def eval_end(self, state=None) -> Dict[str, float]:
    if self._writer is not None:
      self._writer.close()
      self._writer = None
    results = {}
    if "panoptic_quality" in self._metrics_wanted:
      results.update({k: v for k, v in self._pq.result().items()
                      if not k.startswith("num_")})
    if "mean_iou" in self._metrics_wanted:
      results.update(self._miou.result())
    if self._ap is not None:
      results.update(self._ap.result())
    return {k: np.float32(v) for k, v in results.items()}
