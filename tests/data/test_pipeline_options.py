"""`PipelineOptions`: defaults that agree with the config's, checked input."""

import dataclasses

import pytest

from deeplab2_kmax import builders
from deeplab2_kmax import config_loader
from deeplab2_kmax.data import input_pipeline


def _config(copy_paste: str = ""):
  return config_loader.parse_config(f"""
    train_dataset_options {{ batch_size: 2 crop_size: [33, 49]
      augmentations {{ {copy_paste} }} }}
    eval_dataset_options {{ batch_size: 3 crop_size: [65, 65] }}
  """)


def test_an_unset_config_gives_the_pipeline_defaults():
  expected = input_pipeline.PipelineOptions(batch_size=3, crop_size=(65, 65))
  assert builders.dataset_options(_config(), training=False) == expected


def test_training_defaults_differ_only_in_the_scale_step():
  # The config's scale step is DeepLab2's 0.25; at scale range [1, 1] it
  # draws nothing either way.
  training = builders.dataset_options(
      _config("panoptic_copy_paste {}"), training=True)
  expected = input_pipeline.PipelineOptions(
      batch_size=2, crop_size=(33, 49), copy_paste=True,
      scale_factor_step=0.25)
  assert training == expected


def test_the_field_dict_lists_every_option():
  kwargs = builders.dataset_kwargs(_config(), training=True)
  fields = [f.name for f in dataclasses.fields(input_pipeline.PipelineOptions)]
  assert list(kwargs) == fields


@pytest.mark.parametrize("crop_size", [(0, 8), (8,), (8, 8, 8)])
def test_a_bad_crop_size_is_named(crop_size):
  with pytest.raises(ValueError, match="crop_size must be"):
    input_pipeline.PipelineOptions(batch_size=1, crop_size=crop_size)
