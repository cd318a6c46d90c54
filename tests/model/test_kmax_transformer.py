"""kMaX transformer decoder, heads and meta-architecture (SPEC §2.3-2.4)."""

import numpy as np
import pytest
import tensorflow as tf

from deeplab2_kmax import common
from deeplab2_kmax.model import kmax_deeplab
from deeplab2_kmax.model.heads import max_deeplab
from deeplab2_kmax.model.transformer_decoder import kmax

TINY = dict(backbone_width_multiplier=0.125, backbone_blocks_per_stage=[1, 1, 1, 1],
            pixel_decoder_num_blocks=[1, 1, 1, 1],
            pixel_decoder_width_multiplier=0.125, num_mask_slots=8,
            transformer_channels=32, transformer_ffn_channels=64,
            transformer_num_heads=4, pixel_head_channels=16,
            pixel_output_channels=16, semantic_head_channels=16,
            semantic_low_level_channels=(8, 8), aspp_channels=16,
            semantic_decoder_channels=16, use_sync_batch_norm=False)


def _gelu(x):
  return tf.nn.gelu(x, approximate=False).numpy()


def test_kmeans_update_is_equation_7():
  """The M-step sums each centre's pixel values (Eq. 7), by hand in NumPy."""
  layer = kmax.KMaXLayer(num_classes=3, channels=8, ffn_channels=16,
                         num_heads=2, pixel_head_channels=8,
                         pixel_output_channels=8)
  rng = np.random.default_rng(0)
  pixels = tf.constant(rng.standard_normal((1, 3, 4, 6)), tf.float32)
  centers = tf.constant(rng.standard_normal((1, 5, 8)), tf.float32)
  layer(pixels, centers)
  # Make every batch norm the identity and silence the other residuals, so
  # the layer output is gelu(C + Aᵀ V) with V = the pixel value projection.
  for variable in layer.variables:
    name = variable.name
    if "moving_variance" in name or "gamma" in name:
      variable.assign(tf.ones_like(variable) * (1.0 - 1e-3)
                      if "moving_variance" in name else tf.ones_like(variable))
    elif "moving_mean" in name or "beta" in name:
      variable.assign(tf.zeros_like(variable))
  for sub in (layer.memory_conv3_bn, layer.memory_ffn_conv2_bn):
    sub._batch_norm.gamma.assign(tf.zeros_like(sub._batch_norm.gamma))  # pylint: disable=protected-access
  outputs, aux = layer(pixels, centers, training=False)

  flat = pixels.numpy().reshape(1, 12, 6)
  pixel_features = _gelu(_gelu(flat) @ layer.pixel_conv1_bn_act._conv.kernel.numpy()[0])  # pylint: disable=protected-access
  values = pixel_features @ layer.pixel_v_conv_bn._conv.kernel.numpy()[0]  # pylint: disable=protected-access
  assignment = np.eye(5)[aux[common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY]
                         .numpy().reshape(1, 12, 5).argmax(-1)]
  update = assignment.transpose(0, 2, 1) @ values  # Sum, not mean.
  update = update @ layer.kmeans_memory_conv3_bn._conv.kernel.numpy()[0]  # pylint: disable=protected-access
  expected = _gelu(centers.numpy() + update)
  # The FFN residual is zero (gamma 0), so one more gelu is applied.
  np.testing.assert_allclose(outputs.numpy(), _gelu(expected), atol=1e-4)


def test_no_gradient_through_the_argmax():
  layer = kmax.KMaXLayer(num_classes=3, channels=8, ffn_channels=16,
                         num_heads=2, pixel_head_channels=8,
                         pixel_output_channels=8)
  pixels = tf.random.normal([1, 3, 3, 6])
  centers = tf.random.normal([1, 4, 8])
  layer(pixels, centers)
  head = layer.auxiliary_clustering_predictor
  with tf.GradientTape() as tape:
    outputs, _ = layer(pixels, centers, training=False)
    loss = tf.reduce_sum(outputs)
  gradients = tape.gradient(loss, head.trainable_variables)
  # The auxiliary head feeds the centres only through the stopped argmax.
  assert all(g is None for g in gradients)


def test_training_returns_one_auxiliary_output_per_layer():
  model = kmax_deeplab.KMaXDeepLab(num_classes=5, transformer_num_blocks=(2, 2, 2), **TINY)
  outputs = model(tf.random.uniform([2, 64, 64, 3], 0, 255), training=True)
  assert len(outputs[common.PRED_AUXILIARY_OUTPUTS]) == 6
  for aux in outputs[common.PRED_AUXILIARY_OUTPUTS]:
    for key in (common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY,
                common.PRED_PIXEL_SPACE_NORMALIZED_FEATURE_KEY,
                common.PRED_TRANSFORMER_CLASS_LOGITS_KEY):
      assert aux[key].shape == outputs[key].shape
  assert outputs[common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY].shape == (2, 16, 16, 8)
  assert outputs[common.PRED_TRANSFORMER_CLASS_LOGITS_KEY].shape == (2, 8, 6)
  assert outputs[common.PRED_SEMANTIC_LOGITS_KEY].shape[-1] == 5


@pytest.mark.parametrize("size", [(65, 97), (64, 96), (33, 33)])
def test_odd_and_even_sizes(size):
  model = kmax_deeplab.KMaXDeepLab(num_classes=5, transformer_num_blocks=(1, 1, 1), **TINY)
  outputs = model(tf.random.uniform([1, *size, 3], 0, 255), training=False)
  height, width = ((s - 1) // 4 + 1 for s in size)
  assert outputs[common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY].shape == (
      1, height, width, 8)


def test_drop_query_keeps_half_in_training_all_at_inference():
  model = kmax_deeplab.KMaXDeepLab(num_classes=5, transformer_num_blocks=(1, 1, 1),
                                   drop_query_keep_number=4, **TINY)
  images = tf.random.uniform([2, 64, 64, 3], 0, 255)
  training = model(images, training=True)
  inference = model(images, training=False)
  assert training[common.PRED_TRANSFORMER_CLASS_LOGITS_KEY].shape[1] == 4
  assert inference[common.PRED_TRANSFORMER_CLASS_LOGITS_KEY].shape[1] == 8


def test_softmax_baseline_runs_and_trains():
  model = kmax_deeplab.KMaXDeepLab(num_classes=5, transformer_num_blocks=(1, 1, 1),
                                   cross_attention="softmax", **TINY)
  images = tf.random.uniform([1, 64, 64, 3], 0, 255)
  with tf.GradientTape() as tape:
    outputs = model(images, training=True)
    loss = tf.reduce_mean(outputs[common.PRED_TRANSFORMER_CLASS_LOGITS_KEY])
  layer = model.transformer_decoder.kmax_layers[0]
  gradients = tape.gradient(loss, layer.pixel_kv_conv_bn.trainable_variables)
  assert all(g is not None for g in gradients)
  with pytest.raises(ValueError, match="cross_attention"):
    kmax.KMaXLayer(3, cross_attention="argmax")


def test_void_prior_gives_void_probability_0_9():
  bias = max_deeplab.void_prior_bias(134)
  logits = np.zeros(134)
  logits[-1] = bias
  probs = np.exp(logits) / np.exp(logits).sum()
  assert probs[-1] == pytest.approx(0.9)


@pytest.mark.parametrize("gamma", [0.1, 1.0])
def test_mask_logit_gamma_init_reaches_every_head(gamma):
  model = kmax_deeplab.KMaXDeepLab(num_classes=5, transformer_num_blocks=(1, 1, 1),
                                   mask_logits_gamma_init=gamma, **TINY)
  model(tf.zeros([1, 33, 33, 3]), training=False, return_semantic=True)
  gammas = [v.numpy() for k, v in model.deeplab2_variable_map().items()
            if k.endswith("pixel_space_mask_batch_norm/gamma")]
  assert len(gammas) == 1 + model.num_kmax_layers
  np.testing.assert_allclose(np.concatenate(gammas), gamma)


def test_the_layer_returns_the_assignment_it_used():
  layer = kmax.KMaXLayer(num_classes=3, channels=8, ffn_channels=16,
                         num_heads=2, pixel_head_channels=8,
                         pixel_output_channels=8)
  pixels = tf.random.normal([2, 3, 4, 6])
  centers = tf.random.normal([2, 5, 8])
  _, aux = layer(pixels, centers, training=False)
  assignment = aux[kmax.ASSIGNMENT_KEY]
  assert assignment.dtype == tf.int32 and assignment.shape == (2, 3, 4)
  np.testing.assert_array_equal(
      assignment,
      aux[common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY].numpy().argmax(-1))


def test_resized_assignment_keeps_each_layer_pixel():
  """At inference each layer's assignment is resized (nearest, aligned
  corners) to the final resolution: the pixels that sit on the layer's own
  grid keep the layer's assignment, which there is also the argmax of the
  bilinearly resized logits."""
  model = kmax_deeplab.KMaXDeepLab(num_classes=5,
                                   transformer_num_blocks=(1, 1, 1), **TINY)
  images = tf.random.uniform([1, 65, 65, 3], 0, 255)
  outputs = model(images, training=False, return_auxiliary=True)
  decoded = model.pixel_decoder(model.encoder(images / 127.5 - 1.0))
  own = model.transformer_decoder(decoded)[common.PRED_AUXILIARY_OUTPUTS]
  for layer_aux, aux, step in zip(own, outputs[common.PRED_AUXILIARY_OUTPUTS],
                                  (8, 4, 2)):
    resized = aux[kmax_deeplab.ASSIGNMENT_KEY].numpy()
    assert resized.shape == (1, 17, 17)
    np.testing.assert_array_equal(resized[:, ::step, ::step],
                                  layer_aux[kmax.ASSIGNMENT_KEY])
    logits = aux[common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY].numpy()
    np.testing.assert_array_equal(resized[:, ::step, ::step],
                                  logits[:, ::step, ::step].argmax(-1))
