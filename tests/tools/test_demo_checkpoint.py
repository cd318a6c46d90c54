"""The checkpoint the demo continues from scores what docs/demo.md states."""

import numpy as np
import pytest
import tensorflow as tf

from deeplab2_kmax import builders
from deeplab2_kmax import common
from deeplab2_kmax.data import synthetic
from deeplab2_kmax.evaluation import panoptic_quality
from deeplab2_kmax.tools import demo

# docs/demo.md, "The shipped checkpoint": PQ / PQ^Th / PQ^St in percent of
# `configs/synthetic/checkpoint/kmax_demo` on the first 50 validation images
# of the demo's data (seed 0), with the demo config's evaluator.
STATED = {"PQ": 64.7, "PQ_Th": 55.0, "PQ_St": 81.0}
NUM_IMAGES = 50


def shipped_checkpoint_pq(num_images: int = NUM_IMAGES):
  config = demo.load_demo_config(demo.DEFAULT_CONFIG, "unused",
                                 initial_checkpoint=demo.DEFAULT_CHECKPOINT)
  info = builders.dataset_info(config)
  crop = tuple(config.eval_dataset_options.crop_size)
  model = builders.build_model(config, crop_size=crop)
  tf.train.Checkpoint(model=model).read(
      demo.DEFAULT_CHECKPOINT).assert_existing_objects_matched()
  post_processor = builders.build_post_processor(config)
  metric = panoptic_quality.PanopticQuality(
      info.num_classes, info.ignore_label, info.panoptic_label_divisor,
      list(info.thing_class_ids))
  predict = tf.function(lambda images: post_processor(
      model(images, training=False), crop)[common.PRED_PANOPTIC_KEY])
  for start in range(0, num_images, 10):
    samples = [synthetic.generate(0, "val", i)
               for i in range(start, min(start + 10, num_images))]
    images = tf.constant(np.stack([s.image for s in samples]), tf.float32)
    for sample, predicted in zip(samples, predict(images).numpy()):
      metric.update(sample.panoptic, predicted)
  result = metric.result()
  return {key: 100 * float(result[key]) for key in STATED}


def test_shipped_checkpoint_scores_its_stated_figures():
  measured = shipped_checkpoint_pq()
  for key, stated in STATED.items():
    assert measured[key] == pytest.approx(stated, abs=1.0), (key, measured)


def test_missing_checkpoint_is_named_before_any_data_is_built(tmp_path):
  with pytest.raises(demo.DemoError, match="--initial_checkpoint"):
    demo.run_demo(str(tmp_path / "out"),
                  initial_checkpoint=str(tmp_path / "missing"))
  assert not (tmp_path / "out").exists()


if __name__ == "__main__":
  print(shipped_checkpoint_pq())
