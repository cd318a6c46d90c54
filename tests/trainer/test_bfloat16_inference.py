"""bfloat16 inference (`precision`): fallback, agreement, config, no leak.

bfloat16 keeps 8 significant bits, so a model computing in it moves its mask
logits by parts in a thousand; the panoptic map changes only where two
slots' logits are that close. An untrained model's slots are all close,
which would test the tie-break, not the arithmetic: the comparison uses the
tiny model after a short training on the synthetic shapes (module fixture),
whose float32 map has several segments per image.

`precision.bfloat16_is_fast` is patched both ways, so the fallback and the
bfloat16 path are both tested whatever the CPU.
"""

import logging

import numpy as np
import pytest
import tensorflow as tf
import tf_keras
import trainer_test_utils as utils

from deeplab2_kmax import builders
from deeplab2_kmax import common
from deeplab2_kmax import config_loader
from deeplab2_kmax import precision
from deeplab2_kmax.tools import predict
from deeplab2_kmax.trainer import evaluator as evaluator_lib
from deeplab2_kmax.trainer import export_lib

_TRAIN_STEPS = 150
_PER_PIXEL = ("panoptic_pred", "semantic_pred", "instance_pred",
              "semantic_scores", "instance_scores")


def _train(config, prefix: str) -> str:
  """A few Adam steps on four training batches; returns the checkpoint."""
  tf_keras.utils.set_random_seed(0)
  model = builders.build_model(config, crop_size=(64, 64))
  loss = builders.build_loss(config)
  batches = list(builders.build_dataset(config, training=True,
                                        seed=0).take(4))
  optimizer = tf_keras.optimizers.Adam(3e-3)

  @tf.function
  def step(batch):
    with tf.GradientTape() as tape:
      outputs = model(batch["image"], training=True)
      total = tf.reduce_mean(loss(batch, outputs)["total_loss"])
    variables = model.trainable_variables
    optimizer.apply_gradients(zip(tape.gradient(total, variables), variables))

  for index in range(_TRAIN_STEPS):
    step(batches[index % len(batches)])
  return tf.train.Checkpoint(model=model).save(prefix)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """(config, checkpoint, val images uint8 [4, 64, 64, 3])."""
  data_dir = utils.tiny_data(str(tmp_path_factory.mktemp("data")))
  config = utils.tiny_config(data_dir)
  utils.accept_every_segment(config)
  checkpoint = _train(config, str(tmp_path_factory.mktemp("ckpt") / "ckpt"))
  images = tf.concat([batch["image"] for batch in builders.build_dataset(
      config, training=False)], 0)
  return config, checkpoint, tf.cast(images, tf.uint8)


def _serve(config, checkpoint, images, asked):
  """The serving module's outputs per image, the module and its model."""
  model = export_lib.restore_model(config, checkpoint, asked)
  module = export_lib.serving_module(model, config)
  outputs = [{key: value.numpy() for key, value in module.serve(image).items()}
             for image in images]
  return outputs, module, model


@pytest.fixture(scope="module")
def float32_outputs(trained):
  return _serve(*trained, "float32")[0]


def test_without_native_bfloat16_falls_back_to_float32_and_warns(
    trained, float32_outputs, monkeypatch, caplog):
  monkeypatch.setattr(precision, "bfloat16_is_fast", lambda: False)
  with caplog.at_level(logging.WARNING):
    outputs, module, model = _serve(*trained, "bfloat16")
  assert "running float32 instead" in caplog.text
  assert "avx512_bf16" in caplog.text
  assert model.compute_dtype == "float32"
  assert module.precision.numpy().decode() == "float32"
  for ours, reference in zip(outputs, float32_outputs):
    assert ours.keys() == reference.keys()
    for key in ours:
      np.testing.assert_array_equal(ours[key], reference[key], err_msg=key)
  config, _, _ = trained
  fallback = evaluator_lib._inference_model(  # pylint: disable=protected-access
      _with_eval_precision(config, "bfloat16"), model,
      tf.distribute.get_strategy())
  assert fallback is model


def _with_eval_precision(config, value):
  config = type(config).FromString(config.SerializeToString())
  config.evaluator_options.precision = value
  return config


def test_trained_model_in_bfloat16_agrees_with_float32(
    trained, float32_outputs, monkeypatch):
  monkeypatch.setattr(precision, "bfloat16_is_fast", lambda: True)
  outputs, module, model = _serve(*trained, "bfloat16")
  assert model.compute_dtype == "bfloat16"
  assert {v.dtype for v in model.variables} == {tf.float32}
  assert module.precision.numpy().decode() == "bfloat16"
  # The head's logits are float32 (the segments are decided on them).
  raw = model(tf.zeros([1, 64, 64, 3]), training=False)
  for key in (common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY,
              common.PRED_TRANSFORMER_CLASS_LOGITS_KEY):
    assert raw[key].dtype == tf.float32, key
  # The signature keeps its uint8 input and float32 / int32 outputs.
  signature = module.serve.get_concrete_function()
  assert signature.inputs[0].dtype == tf.uint8
  for key, spec in signature.structured_outputs.items():
    assert spec.dtype in (tf.float32, tf.int32), key
  panoptic = np.stack([o["panoptic_pred"] for o in outputs])
  reference = np.stack([o["panoptic_pred"] for o in float32_outputs])
  assert min(len(np.unique(r)) for r in reference) >= 2  # Not one segment.
  assert np.mean(panoptic == reference) >= 0.99


def test_evaluator_runs_a_bfloat16_copy_with_the_models_weights(
    trained, monkeypatch):
  monkeypatch.setattr(precision, "bfloat16_is_fast", lambda: True)
  config, checkpoint, _ = trained
  config = _with_eval_precision(config, "bfloat16")
  model = export_lib.restore_model(config, checkpoint, "float32")
  evaluator = evaluator_lib.KMaXEvaluator(
      config, model, builders.build_post_processor(config),
      builders.build_dataset(config, training=False),
      tf.distribute.get_strategy(), builders.dataset_info(config))
  assert evaluator.precision == "bfloat16"
  assert tf_keras.mixed_precision.global_policy().name == "float32"
  copy = evaluator._inference_model  # pylint: disable=protected-access
  assert copy is not model and copy.compute_dtype == "bfloat16"
  evaluator.eval_begin()  # Refreshes the copy from the model.
  for ours, source in zip(copy.variables, model.variables):
    np.testing.assert_array_equal(ours.numpy(), source.numpy())


@pytest.mark.parametrize("field", ["evaluator_options", "export_options"])
def test_unknown_precision_is_rejected_naming_the_field(field):
  text = utils.DEMO_CONFIG.read_text().replace("${DATA_DIR}", "/data")
  config = config_loader.parse_config(text)
  getattr(config, field).precision = "float16"
  with pytest.raises(config_loader.ConfigError,
                     match=rf"{field}.precision': 'float16' is not one of "
                           r"'float32', 'bfloat16'"):
    config_loader.validate(config)
  with pytest.raises(precision.PrecisionError, match="--precision: 'fp8'"):
    precision.resolve("fp8", "--precision")


def test_global_policy_is_unchanged_after_building_or_predicting(
    trained, tmp_path, monkeypatch):
  monkeypatch.setattr(precision, "bfloat16_is_fast", lambda: True)
  config, checkpoint, images = trained
  previous = tf_keras.mixed_precision.global_policy()
  tf_keras.mixed_precision.set_global_policy("mixed_float16")
  try:
    model = precision.build_model(config, (64, 64), "bfloat16")
    assert model.compute_dtype == "bfloat16"
    assert tf_keras.mixed_precision.global_policy().name == "mixed_float16"
    with pytest.raises(RuntimeError):
      with precision.policy_scope("bfloat16"):
        raise RuntimeError("build failed")
    assert tf_keras.mixed_precision.global_policy().name == "mixed_float16"
  finally:
    tf_keras.mixed_precision.set_global_policy(previous)
  config_file = tmp_path / "config.textproto"
  config_file.write_text(str(config))
  predictor = predict.load_predictor(
      config_file=str(config_file), checkpoint_path=checkpoint,
      precision="bfloat16")
  assert tf_keras.mixed_precision.global_policy().name == previous.name
  result = predictor(images[0].numpy())
  assert result.panoptic.shape == (64, 64)
  with pytest.raises(predict.PredictError, match="--precision"):
    predict.load_predictor(saved_model=str(tmp_path), precision="bfloat16")
