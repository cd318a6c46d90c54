"""Fine-tuning from a checkpoint trained on other classes.

With `restore_semantic_last_layer_from_initial_checkpoint: false` every
variable is restored except the class-specific ones, which keep their fresh
initialisation. Which variables are class-specific is not taken from the
code under test: they are the variables whose shape changes with the number
of classes (two models with different class counts, compared).
"""

import logging

import numpy as np
import pytest
import tensorflow as tf
import tf_keras
import trainer_test_utils as utils

from deeplab2_kmax import builders
from deeplab2_kmax.model import kmax_deeplab
from deeplab2_kmax.trainer import initial_checkpoint
from deeplab2_kmax.trainer import train_lib

_CROP = 64


def _built(kwargs, seed):
  tf_keras.utils.set_random_seed(seed)
  model = kmax_deeplab.KMaXDeepLab(**kwargs)
  model(tf.zeros([1, _CROP, _CROP, 3]), training=False, return_semantic=True)
  return model


def _by_name(model):
  """{variable name without the model's own scope: variable}."""
  return {v.name.split("/", 1)[1]: v for v in model.variables}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  """(config, checkpoint of a model with 3 more classes, its variables)."""
  directory = tmp_path_factory.mktemp("init")
  config = utils.tiny_config(str(directory), crop=_CROP)
  kwargs = builders.model_kwargs(config)
  other = dict(kwargs, num_classes=kwargs["num_classes"] + 3,
               semantic_num_classes=kwargs["semantic_num_classes"] + 3)
  source = _built(other, seed=1)
  path = tf.train.Checkpoint(model=source).write(str(directory / "ckpt"))
  values = {name: v.numpy() for name, v in _by_name(source).items()}
  return config, path, values


def test_all_but_the_class_specific_layers_are_restored(setup, caplog):
  config, path, source = setup
  model = _built(builders.model_kwargs(config), seed=2)
  fresh = {name: v.numpy() for name, v in _by_name(model).items()}
  assert fresh.keys() == source.keys()
  class_specific = {name for name in fresh
                    if fresh[name].shape != source[name].shape}
  # Class heads: the final one and one per kMaX layer (kernel, bias); the
  # semantic head's last convolution (kernel, bias).
  assert len(class_specific) == 2 * (model.num_kmax_layers + 1) + 2
  with caplog.at_level(logging.INFO, logger="absl"):
    skipped = initial_checkpoint.restore(model, path,
                                         restore_class_layers=False)
  assert {name.split("/", 1)[1] for name in skipped} == class_specific
  for name, variable in _by_name(model).items():
    expected = fresh[name] if name in class_specific else source[name]
    np.testing.assert_array_equal(variable.numpy(), expected, err_msg=name)
    if name not in class_specific and variable.trainable and "kernel" in name:
      assert not np.array_equal(fresh[name], source[name]), name
  logged = caplog.text
  assert "restore_semantic_last_layer_from_initial_checkpoint" in logged
  assert all(name in logged for name in skipped)


def test_restoring_other_classes_names_the_field(setup):
  config, path, _ = setup
  model = _built(builders.model_kwargs(config), seed=2)
  with pytest.raises(initial_checkpoint.InitialCheckpointError,
                     match="restore_semantic_last_layer_from_initial_"):
    initial_checkpoint.restore(model, path)


def test_the_trainer_reads_the_config_field(setup):
  config, path, source = setup
  config.model_options.initial_checkpoint = path
  model = builders.build_model(config, crop_size=(_CROP, _CROP))
  with pytest.raises(train_lib.ExperimentError, match="initial_checkpoint"):
    train_lib._restore_initial_checkpoint(config, model)  # pylint: disable=protected-access
  config.model_options.restore_semantic_last_layer_from_initial_checkpoint = (
      False)
  train_lib._restore_initial_checkpoint(config, model)  # pylint: disable=protected-access
  encoder = [name for name in _by_name(model) if name.startswith("encoder/")]
  assert encoder
  for name in encoder:
    np.testing.assert_array_equal(_by_name(model)[name].numpy(), source[name])
