"""model_summary: parameter counts and profiler FLOPs (issue: Model)."""

import json
import subprocess
import sys

import numpy as np
import tensorflow as tf
import tf_keras

from deeplab2_kmax.tools import model_summary

REPO = __import__("pathlib").Path(__file__).resolve().parents[2]


class _OneConv(tf_keras.Model):
  """Stands in for the model: one 3x3 conv with known cost."""

  def __init__(self):
    super().__init__()
    self.conv = tf_keras.layers.Conv2D(16, 3, padding="same", use_bias=False)

  def call(self, images, training=False, return_semantic=False):
    del training, return_semantic
    return {"x": self.conv(images)}


def test_float_ops_of_a_known_convolution():
  model = _OneConv()
  model(tf.zeros([1, 20, 24, 3]))
  # 2 FLOPs per multiply-add, one multiply-add per output x kernel tap x cin.
  assert model_summary.count_float_ops(model, (20, 24)) == 2 * 20 * 24 * 16 * 9 * 3


def test_cli_last_line_is_json_with_consistent_counts(tmp_path):
  config = REPO / "configs" / "synthetic" / "kmax_tiny_r50_os32.textproto"
  result = subprocess.run(
      [sys.executable, "-m", "deeplab2_kmax.tools.model_summary",
       f"--config_file={config}", "--crop_size=65,65",
       f"--define=DATA_DIR={tmp_path}"],
      capture_output=True, text=True, check=True)
  summary = json.loads(result.stdout.strip().splitlines()[-1])
  assert summary["crop_size"] == [65, 65]
  assert 0 < summary["params_without_aux_semantic"] < summary["params_total"]
  assert summary["flops_multiply_adds"] > 0

  from deeplab2_kmax import builders  # pylint: disable=g-import-not-at-top
  from deeplab2_kmax import config_loader  # pylint: disable=g-import-not-at-top
  loaded = config_loader.load_config(str(config), {"DATA_DIR": str(tmp_path)})
  model = builders.build_model(loaded, crop_size=(65, 65))
  total = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
  semantic = sum(int(np.prod(v.shape))
                 for v in model.semantic_branch.trainable_variables)
  assert summary["params_total"] == total
  assert summary["params_without_aux_semantic"] == total - semantic


def test_bad_crop_size_is_named(tmp_path):
  config = REPO / "configs" / "synthetic" / "kmax_tiny_r50_os32.textproto"
  result = subprocess.run(
      [sys.executable, "-m", "deeplab2_kmax.tools.model_summary",
       f"--config_file={config}", "--crop_size=65",
       f"--define=DATA_DIR={tmp_path}"], capture_output=True, text=True)
  assert result.returncode != 0
  assert "--crop_size" in result.stderr
