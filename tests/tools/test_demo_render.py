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
  panels = [image] + [
      visualization.resize_nearest(
          palette[np.argmax(aux[common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY][0], -1)],
          (64, 64)) for aux in auxiliary]
  expected = visualization.hstack_panels(panels)
  written = np.asarray(Image.open(paths[1]).convert("RGB"))
  np.testing.assert_array_equal(written, expected)
