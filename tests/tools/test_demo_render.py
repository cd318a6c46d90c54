"""The demo's cluster panels are the argmax each kMaX layer used (issue 8)."""

import sys

import numpy as np
from PIL import Image
import tensorflow as tf

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve()
                       .parents[1] / "trainer"))
import trainer_test_utils as utils  # pylint: disable=g-import-not-at-top,wrong-import-position

from deeplab2_kmax import builders  # pylint: disable=g-import-not-at-top,wrong-import-position
from deeplab2_kmax import common  # pylint: disable=g-import-not-at-top,wrong-import-position
from deeplab2_kmax import visualization  # pylint: disable=g-import-not-at-top,wrong-import-position
from deeplab2_kmax.data import dataset_registry  # pylint: disable=g-import-not-at-top,wrong-import-position
from deeplab2_kmax.model import kmax_deeplab  # pylint: disable=g-import-not-at-top,wrong-import-position
from deeplab2_kmax.tools import demo  # pylint: disable=g-import-not-at-top,wrong-import-position
from deeplab2_kmax.trainer import export_lib  # pylint: disable=g-import-not-at-top,wrong-import-position


def test_cluster_panels_are_the_argmax_of_each_layer(tmp_path):
  config = utils.tiny_config(str(tmp_path / "data"))
  model = builders.build_model(config, crop_size=(64, 64))
  saved = str(tmp_path / "saved")
  export_lib.export_from_model(model, config, saved)
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (64, 64, 3)).astype(np.uint8)
  panoptic = np.zeros((64, 64), np.int64)
  info = dataset_registry.get("synthetic_panoptic")
  paths = demo.render_examples(saved, [{"name": "x", "image": image,
                                        "panoptic": panoptic}], info,
                               str(tmp_path / "render"), num_centres=8)
  assert [p.rsplit("/", 1)[-1] for p in paths] == ["x.png", "x_clusters.png"]

  outputs = model(tf.constant(image[None], tf.float32), training=False,
                  return_auxiliary=True)
  auxiliary = outputs[common.PRED_AUXILIARY_OUTPUTS]
  assert len(auxiliary) == model.num_kmax_layers
  palette = visualization.cluster_palette(8)
  # The assignment each layer used (its own k-means argmax), not one
  # recomputed from the resized mask logits.
  panels = [image] + [
      visualization.resize_nearest(
          palette[aux[kmax_deeplab.ASSIGNMENT_KEY][0].numpy()], (64, 64))
      for aux in auxiliary]
  expected = visualization.hstack_panels(panels)
  written = np.asarray(Image.open(paths[1]).convert("RGB"))
  np.testing.assert_array_equal(written, expected)


def test_validation_examples_are_the_stored_originals(tmp_path):
  from deeplab2_kmax.data import build_synthetic_data  # pylint: disable=g-import-not-at-top
  from deeplab2_kmax.data import synthetic  # pylint: disable=g-import-not-at-top
  data = str(tmp_path / "data")
  build_synthetic_data.build(data, num_train=1, num_val=3, seed=5,
                             num_shards=1, image_size=40, progress=False)
  config = utils.tiny_config(data)
  examples = demo.validation_examples(config, 2)
  assert [e["name"] for e in examples] == ["val_000000", "val_000001"]
  for index, example in enumerate(examples):
    expected = synthetic.generate(5, "val", index, image_size=40)
    np.testing.assert_array_equal(example["image"], expected.image)
    np.testing.assert_array_equal(example["panoptic"], expected.panoptic)


def test_summary_ends_with_one_line_of_figures():
  text = demo._summary({  # pylint: disable=protected-access
      "metrics": {"PQ": 0.612, "PQ_Th": 0.47, "PQ_St": 0.851,
                  "AP_Mask": 0.302, "mIoU": 0.7},
      "seconds": 754.0, "model_dir": "out/model",
      "saved_model": "out/saved_model",
      "renders": ["out/render/a.png", "out/render/a_clusters.png"]})
  assert text.splitlines()[-1] == (
      "kMaX-DeepLab demo: PQ 61.2, PQ^Th 47.0, PQ^St 85.1, AP 30.2, "
      "mIoU 70.0 | 12.6 min | renders: out/render (2 PNGs)")
