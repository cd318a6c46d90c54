"""`model_options.backbone.drop_path_schedule` sets every block's keep prob.

References written from DeepLab2's definitions, not from our encoders:
* ResNet / MaX-S (DeepLab2's axial_block_groups.BlockGroup, kMaX settings):
  a block has drop path when the stride it runs at (the stage's input stride
  for its first block, twice that after) is >= 16; 'linear' keeps
  1 - (1 - p) * stage / 4 with stage = log2(stride) - 1, 'constant' keeps p.
* ConvNeXt (DeepLab2's convnext): 'linear' is numpy.linspace(1, p) over all
  blocks; 'constant' keeps p everywhere.
"""

import math
import pathlib

import numpy as np
import pytest

from deeplab2_kmax import builders
from deeplab2_kmax import config_loader
from deeplab2_kmax.model import pixel_encoders

DEMO = str(pathlib.Path(__file__).resolve().parents[2] / "configs" /
           "synthetic" / "kmax_tiny_r50_os32.textproto")


def _resnet_reference(depths, keep_prob, schedule):
  probs = []
  for index, depth in enumerate(depths):
    input_stride = 2 ** (index + 1)
    for block in range(depth):
      stride = input_stride if block == 0 else 2 * input_stride
      if stride < 16:
        probs.append(1.0)
      elif schedule == "linear":
        probs.append(1 - (1 - keep_prob) * (math.log2(stride) - 1) / 4)
      else:
        probs.append(keep_prob)
  return probs


def _keep_probs(encoder):
  # pylint: disable=protected-access
  if hasattr(encoder._stages[0], "_blocks"):  # ResNet stages.
    return [block._drop_path.keep_prob for stage in encoder._stages
            for block in stage._blocks]
  return [block._drop_path.keep_prob for stage in encoder._stages
          for block in stage]


@pytest.mark.parametrize("schedule", ["linear", "constant"])
@pytest.mark.parametrize("name", ["resnet50", "axial_resnet50"])
def test_resnet_schedules(name, schedule):
  encoder = pixel_encoders.build_pixel_encoder(
      name, drop_path_keep_prob=0.6, drop_path_schedule=schedule,
      width_multiplier=0.0625)
  expected = _resnet_reference((3, 4, 6, 3), 0.6, schedule)
  np.testing.assert_allclose(_keep_probs(encoder), expected, rtol=1e-6)
  assert min(expected) == pytest.approx(0.6)


@pytest.mark.parametrize("schedule", ["linear", "constant"])
def test_convnext_schedules(schedule):
  depths = (2, 2, 3, 2)
  encoder = pixel_encoders.build_pixel_encoder(
      "convnext_tiny", drop_path_keep_prob=0.7, drop_path_schedule=schedule,
      width_multiplier=0.0625, blocks_per_stage=depths)
  expected = (np.linspace(1.0, 0.7, sum(depths)) if schedule == "linear"
              else np.full(sum(depths), 0.7))
  np.testing.assert_allclose(_keep_probs(encoder), expected, rtol=1e-6)


def test_unknown_schedule_is_a_clear_error():
  with pytest.raises(ValueError, match="drop_path_schedule"):
    pixel_encoders.build_pixel_encoder("resnet50",
                                       drop_path_schedule="cosine")


def test_the_config_reaches_the_encoder_and_defaults_to_deeplab2s():
  config = config_loader.load_config(DEMO, {"DATA_DIR": "/data"})
  backbone = config.model_options.backbone
  assert not backbone.HasField("drop_path_schedule")
  backbone.drop_path_keep_prob = 0.5
  backbone.blocks_per_stage[:] = [1, 1, 2, 2]
  depths = (1, 1, 2, 2)
  default = builders.build_model(config).encoder
  assert _keep_probs(default) == pytest.approx(
      _resnet_reference(depths, 0.5, "linear"))
  backbone.drop_path_schedule = "constant"
  constant = builders.build_model(config).encoder
  assert _keep_probs(constant) == pytest.approx(
      _resnet_reference(depths, 0.5, "constant"))
  backbone.drop_path_schedule = "cosine"
  with pytest.raises(config_loader.ConfigError,
                     match="model_options.backbone.drop_path_schedule"):
    config_loader.validate(config)
