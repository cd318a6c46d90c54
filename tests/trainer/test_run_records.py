"""What a run records besides checkpoints: experiment name, config, images.

* `experiment_name`: in model_dir/experiment.textproto (the config the run
  used, which parses back equal) and the `experiment` text summary.
* `save_prediction_images_steps`: the `predictions` image summary at exactly
  those steps (not at Orbit's other summary steps), rendered from the
  training step's own outputs, leaving the training itself unchanged.
"""

import glob
import io
import os

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf
import trainer_test_utils as utils

from deeplab2_kmax import builders
from deeplab2_kmax import config_loader
from deeplab2_kmax import visualization
from deeplab2_kmax.trainer import train_lib
from deeplab2_kmax.trainer import trainer as trainer_lib


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return utils.tiny_data(str(tmp_path_factory.mktemp("synthetic")))


def _summaries(directory):
  """{tag: {step: tensor proto}} of every event file in `directory`."""
  found = {}
  for path in glob.glob(os.path.join(directory, "events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        found.setdefault(value.tag, {})[event.step] = value.tensor
  return found


def _weights(model_dir):
  reader = tf.train.load_checkpoint(train_lib.latest_checkpoint(model_dir))
  return {name: reader.get_tensor(name)
          for name in reader.get_variable_to_shape_map()
          if name.startswith("model/")}


@pytest.fixture(scope="module")
def runs(data_dir, tmp_path_factory):
  """(config, model_dir) of 2 steps with and without prediction images.

  Orbit writes summaries at steps 1 and 2; the images are due at step 2.
  """
  results = []
  for image_steps in (2, 0):
    config = utils.lean_config(data_dir, steps=2)
    config.experiment_name = "records_test"
    trainer = config.trainer_options
    trainer.save_prediction_images_steps = image_steps
    trainer.steps_per_loop = 1
    trainer.save_summaries_steps = 1
    model_dir = str(tmp_path_factory.mktemp("model"))
    train_lib.run_experiment(config, model_dir, "train")
    results.append((config, model_dir))
  return results


def test_experiment_name_and_config(runs):
  config, model_dir = runs[0]
  with open(os.path.join(model_dir, train_lib.EXPERIMENT_FILE)) as f:
    written = f.read()
  assert written.startswith("# experiment_name: records_test\n# mode: train")
  assert config_loader.parse_config(written) == config
  summaries = _summaries(os.path.join(model_dir, "train"))
  text = tf.make_ndarray(summaries["experiment"][0]).item().decode()
  assert text.startswith("**records_test** (train)")
  assert 'experiment_name: "records_test"' in text


def test_prediction_images(runs):
  config, model_dir = runs[0]
  summaries = _summaries(os.path.join(model_dir, "train"))
  assert set(summaries["total_loss"]) == {1, 2}
  assert set(summaries["predictions"]) == {2}
  encoded = tf.make_ndarray(summaries["predictions"][2])
  width, height = int(encoded[0]), int(encoded[1])
  assert (height, width) == (64, 4 * 64 + 3 * 4)
  assert len(encoded) - 2 == min(2, trainer_lib.MAX_SUMMARY_IMAGES)
  info = builders.dataset_info(config)
  classes = {tuple(c) for c in info.colormap} | {(0, 0, 0)}
  centres = {tuple(c) for c in visualization.cluster_palette(8)}
  for png in encoded[2:]:
    strip = np.asarray(Image.open(io.BytesIO(png)))
    panels = [strip[:, i * 68:i * 68 + 64].reshape(-1, 3) for i in range(4)]
    assert len({tuple(c) for c in panels[0]}) > 10  # An image.
    for panel, allowed in ((panels[1], classes), (panels[2], classes),
                           (panels[3], centres)):
      assert {tuple(c) for c in panel} <= allowed


def test_prediction_images_leave_training_unchanged(runs):
  (_, with_images), (_, without) = runs
  assert "predictions" not in _summaries(os.path.join(without, "train"))
  weights = _weights(with_images)
  reference = _weights(without)
  assert weights.keys() == reference.keys() and weights
  for name, value in weights.items():
    np.testing.assert_array_equal(value, reference[name], err_msg=name)
