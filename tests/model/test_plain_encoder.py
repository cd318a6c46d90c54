"""The demo's plain encoder against a NumPy conv / batch-norm / ReLU / max-pool."""

import numpy as np
import pixel_numpy_reference as ref
import pytest
import tensorflow as tf

from deeplab2_kmax.model import pixel_encoders
from deeplab2_kmax.model import spec_checks
from deeplab2_kmax.model.pixel_encoders import spec


def _max_pool_2x2(x):
  """2x2 stride-2 max-pool; an odd edge row/column is pooled alone ('same')."""
  batch, height, width, channels = x.shape
  out = np.full([batch, -(-height // 2), -(-width // 2), channels], -np.inf)
  for i in range(out.shape[1]):
    for j in range(out.shape[2]):
      out[:, i, j] = x[:, 2 * i:2 * i + 2, 2 * j:2 * j + 2].max(axis=(1, 2))
  return out


def _numpy_forward(encoder, images):
  """Every stage's endpoint, from the encoder's variables in inference mode."""
  endpoints = {}
  x = images
  for name, stage in zip(encoder.stage_names, encoder._stages):  # pylint: disable=protected-access
    for conv_bn in stage:
      kernel, gamma, beta, mean, variance = (
          v.numpy() for v in conv_bn.weights)
      x = ref.relu(ref.batch_norm(ref.conv2d(x, kernel), gamma, beta, mean,
                                  variance))
    x = endpoints[name] = _max_pool_2x2(x)
  return endpoints


@pytest.mark.parametrize("size", [(33, 47), (32, 64)])
def test_endpoints_equal_the_numpy_reference(size):
  encoder = pixel_encoders.build_pixel_encoder(
      "plain_cnn", width_multiplier=0.125, blocks_per_stage=(1, 2, 1, 1),
      use_sync_batch_norm=False)
  rng = np.random.default_rng(0)
  images = rng.uniform(-1, 1, (2, *size, 3)).astype(np.float32)
  encoder(images, training=False)
  for variable in encoder.weights:  # Batch-norm statistics off their init.
    if "moving_mean" in variable.name or "beta" in variable.name:
      variable.assign(rng.normal(0, 0.2, variable.shape))
    elif "moving_variance" in variable.name or "gamma" in variable.name:
      variable.assign(rng.uniform(0.5, 1.5, variable.shape))
  outputs = encoder(images, training=False)
  expected = _numpy_forward(encoder, images.astype(np.float64))
  assert [len(stage) for stage in encoder._stages] == [2, 1, 2, 1, 1]  # pylint: disable=protected-access
  for level, stride in enumerate((2, 4, 8, 16, 32), start=1):
    name = f"stage{level}"
    assert outputs[name].shape[1:3] == (-(-size[0] // stride),
                                        -(-size[1] // stride))
    assert outputs[name].shape[-1] == encoder.endpoint_channels[name]
    np.testing.assert_allclose(outputs[name].numpy(), expected[name],
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(outputs[f"res{level}"].numpy(),
                                  outputs[name].numpy())


def test_widths_follow_the_multiplier():
  encoder = pixel_encoders.build_pixel_encoder(
      "plain_cnn", width_multiplier=0.5, use_sync_batch_norm=False)
  widths = spec.ENCODERS["plain_cnn"].widths
  assert list(encoder.endpoint_channels.values()) == [w // 2 for w in widths]


def test_drop_path_is_refused_naming_the_field():
  with pytest.raises(spec_checks.SpecError, match="drop_path_keep_prob"):
    spec.PixelEncoderSpec(name="plain_cnn", drop_path_keep_prob=0.8)


def test_trains_with_gradients_everywhere():
  encoder = pixel_encoders.build_pixel_encoder(
      "plain_cnn", width_multiplier=0.125, use_sync_batch_norm=False)
  images = tf.random.stateless_uniform([2, 32, 32, 3], (1, 2), -1, 1)
  with tf.GradientTape() as tape:
    loss = tf.reduce_sum(encoder(images, training=True)["res5"] ** 2)
  gradients = tape.gradient(loss, encoder.trainable_variables)
  assert all(g is not None for g in gradients)
