"""trainer_options.recompute "blocks": same step, less activation memory.

On the same weights and batch, a training step of the recomputing model must
give the plain model's losses and gradients (the recomputation repeats the
same ops on the same inputs, so up to float32 rounding), draw the same
drop-path masks, and leave every batch-norm moving average where the plain
step leaves it: updated once, not a second time by the recomputation (batch
norm stays in training mode). Inference does not recompute and must be
bit-identical.

The model-level step runs eagerly with the real random drop path, whose
draws match under one seed. A graph or XLA step draws with per-op seeds that
depend on the graph, so the XLA test (blocks and a kMaX layer, to keep the
compilation short) uses a fixed per-image mask instead.

The semantic head's dropout is set to 0: it is not in a recomputed block,
and its generator is seeded at its first call, which would differ between
the two models.
"""

import os
import sys

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from deeplab2_kmax import builders
from deeplab2_kmax import common
from deeplab2_kmax import config_loader
from deeplab2_kmax.losses import max_deeplab_loss
from deeplab2_kmax.model.layers import blocks
from deeplab2_kmax.model.layers import convolutions
from deeplab2_kmax.model.layers import drop_path
from deeplab2_kmax.model.transformer_decoder import kmax

sys.path.insert(0, os.path.dirname(__file__))
import trainer_test_utils as utils  # noqa: E402

_GT_KEYS = (common.GT_SEMANTIC_KEY, common.GT_THING_ID_MASK_KEY,
            common.GT_THING_ID_CLASS_KEY, common.SEMANTIC_LOSS_WEIGHT_KEY)
# Tiny config: 4 encoder blocks, 4 pixel-decoder blocks (2 axial), 3 kMaX
# layers.
_RECOMPUTED_BLOCKS = 11


def _config(data_dir, recompute):
  config = utils.tiny_config(data_dir)
  config.model_options.max_deeplab.instance_discrimination_sample_k = 0
  config.model_options.max_deeplab.semantic_sample_k = 0
  config.model_options.backbone.drop_path_keep_prob = 0.5
  config.model_options.max_deeplab.transformer_decoder.drop_path_keep_prob = (
      0.5)
  config.trainer_options.recompute = recompute
  return config


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  data_dir = utils.tiny_data(str(tmp_path_factory.mktemp("data")))
  batch = next(iter(builders.build_dataset(_config(data_dir, "none"),
                                           training=True, seed=0)))
  models = []
  for recompute in ("none", "blocks"):
    model = builders.build_model(_config(data_dir, recompute))
    model(batch["image"], training=False, return_semantic=True)
    for layer in model.submodules:
      if isinstance(layer, tf_keras.layers.Dropout):
        layer.rate = 0.0
    models.append(model)
  return data_dir, batch, models


def _same_weights(plain, recomputing):
  recomputing.set_weights(plain.get_weights())


def _moving_averages(model):
  return [v.numpy() for v in model.non_trainable_variables
          if "moving_" in v.name]


def _assert_gradients_close(plain, recomputing, variables, atol=0.0):
  """Within 1e-5 of each variable's largest gradient entry (+ atol).

  A variable that does not reach the loss has a None plain gradient and a
  zero gradient through tf.recompute_grad (which asks for zeros).
  """
  assert len(plain) == len(recomputing) == len(variables)
  for a, b, variable in zip(plain, recomputing, variables):
    if a is None:
      assert b is None or not np.any(tf.convert_to_tensor(b).numpy())
      continue
    a, b = tf.convert_to_tensor(a).numpy(), tf.convert_to_tensor(b).numpy()
    assert np.max(np.abs(a - b)) <= 1e-5 * np.max(np.abs(a)) + atol, (
        variable.name)


def _count_recomputation(monkeypatch):
  """Counts tf.recompute_grad wrappers and the runs of what they wrap."""
  counts = {"wrapped": 0, "runs": 0}
  original = tf.recompute_grad

  def counting(f):
    counts["wrapped"] += 1

    def run(*args):
      counts["runs"] += 1
      return f(*args)

    return original(run)

  monkeypatch.setattr(tf, "recompute_grad", counting)
  return counts


def test_recompute_step_matches_plain_and_updates_moving_averages_once(
    setup, monkeypatch):
  data_dir, batch, (plain, recomputing) = setup
  _same_weights(plain, recomputing)
  loss = builders.build_loss(_config(data_dir, "none"))
  masks = []
  original_mask = drop_path.drop_path_mask

  def recorded_mask(inputs, keep_prob):
    mask = original_mask(inputs, keep_prob)
    masks[-1].append(mask.numpy().ravel())
    return mask

  monkeypatch.setattr(drop_path, "drop_path_mask", recorded_mask)
  before = _moving_averages(plain)
  results = []
  counts = _count_recomputation(monkeypatch)
  for model in (plain, recomputing):
    masks.append([])
    tf_keras.utils.set_random_seed(1)
    with tf.GradientTape() as tape:
      outputs = model(batch["image"], training=True)
      losses = loss({k: batch[k] for k in _GT_KEYS}, outputs)
      total = tf.reduce_mean(losses[max_deeplab_loss.TOTAL])
    results.append((losses, tape.gradient(total, model.trainable_variables),
                    dict(counts)))
  (losses, gradients, counts), (losses_r, gradients_r, counts_r) = results
  # Every block recomputed once in the backward pass; none in the plain one.
  assert counts == {"wrapped": 0, "runs": 0}
  assert counts_r == {"wrapped": _RECOMPUTED_BLOCKS,
                      "runs": 2 * _RECOMPUTED_BLOCKS}
  # The same drop-path draws (1 encoder block, 3 per kMaX layer), some drops.
  assert len(masks[0]) == len(masks[1]) == 10
  for a, b in zip(*masks):
    np.testing.assert_array_equal(a, b)
  assert any(np.any(m == 0) for m in masks[0])
  for name, value in losses.items():
    np.testing.assert_allclose(losses_r[name].numpy(), value.numpy(),
                               rtol=1e-5, atol=1e-7, err_msg=name)
  _assert_gradients_close(gradients, gradients_r, plain.trainable_variables)
  after, after_r = _moving_averages(plain), _moving_averages(recomputing)
  assert sum(not np.array_equal(a, b) for a, b in zip(before, after)) > (
      len(before) // 2)
  for a, b in zip(after, after_r):
    np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7)


def test_inference_is_unchanged(setup):
  _, batch, (plain, recomputing) = setup
  _same_weights(plain, recomputing)
  outputs = plain(batch["image"], training=False, return_semantic=True)
  outputs_r = recomputing(batch["image"], training=False,
                          return_semantic=True)
  assert set(outputs) == set(outputs_r)
  for key, value in outputs.items():
    np.testing.assert_array_equal(outputs_r[key].numpy(), value.numpy())


def _alternating_mask(inputs, keep_prob):
  """A fixed drop-path mask: image 0 dropped, image 1 kept, ..."""
  batch = tf.shape(inputs)[0]
  keep = tf.cast(tf.range(batch) % 2, inputs.dtype) / keep_prob
  return tf.reshape(keep, tf.concat(
      [[batch], tf.ones([inputs.shape.rank - 1], tf.int32)], 0))


def _layers(recompute):
  batch_norm = convolutions.batch_norm_class(use_sync_batch_norm=False)
  stage = blocks.BlockStage(
      8, 2, "stage", use_axial_attention=[True, False],
      drop_path_keep_probs=[0.5, 0.5], activation="gelu",
      bn_layer=batch_norm, recompute=recompute)
  layer = kmax.KMaXLayer(
      3, channels=16, ffn_channels=32, num_heads=2, drop_path_keep_prob=0.5,
      pixel_head_channels=8, pixel_output_channels=8, bn_layer=batch_norm,
      recompute=recompute)
  return stage, layer


def test_blocks_compile_with_xla_and_match_plain(monkeypatch):
  monkeypatch.setattr(drop_path, "drop_path_mask", _alternating_mask)
  rng = np.random.default_rng(0)
  pixels = tf.constant(rng.normal(size=[2, 5, 5, 32]), tf.float32)
  centers = tf.constant(rng.normal(size=[2, 4, 16]), tf.float32)
  weights = [tf.constant(rng.normal(size=s), tf.float32)
             for s in ([2, 4, 16], [2, 5, 5, 4])]
  plain, recomputing = _layers(False), _layers(True)
  for stage, layer in (plain, recomputing):
    layer(stage(pixels), centers)  # Builds the variables.
  for a, b in zip(plain, recomputing):
    b.set_weights(a.get_weights())
  counts = _count_recomputation(monkeypatch)
  results = []
  for stage, layer in (plain, recomputing):
    variables = stage.trainable_variables + layer.trainable_variables
    if stage is plain[0]:
      plain_variables = variables

    @tf.function(jit_compile=True)
    def step(pixels, centers, stage=stage, layer=layer, variables=variables):
      with tf.GradientTape() as tape:
        new_centers, auxiliary = layer(stage(pixels, training=True), centers,
                                       training=True)
        loss = tf.reduce_sum(new_centers * weights[0]) + tf.reduce_sum(
            auxiliary[common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY] * weights[1])
      return loss, tape.gradient(loss, variables)

    loss, gradients = step(pixels, centers)
    averages = [v.numpy() for v in stage.non_trainable_variables +
                layer.non_trainable_variables]
    results.append((loss.numpy(), gradients, averages))
  assert counts == {"wrapped": 3, "runs": 6}  # 2 blocks + 1 kMaX layer.
  (loss, gradients, averages), (loss_r, gradients_r, averages_r) = results
  np.testing.assert_allclose(loss_r, loss, rtol=1e-5)
  # A bias before a training-mode batch norm has a zero gradient, which
  # rounds to ~1e-7 differently in the two graphs.
  _assert_gradients_close(gradients, gradients_r, plain_variables,
                          atol=1e-6)
  for a, b in zip(averages, averages_r):
    np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7)


def test_recompute_needs_batch_norms_that_skip_recomputed_updates():
  block = blocks.BottleneckBlock(4, "block", recompute=True)
  with pytest.raises(ValueError, match="moving averages would be updated"):
    block(tf.zeros([1, 3, 3, 16]), training=True)


def test_config_accepts_blocks_and_rejects_bogus(setup):
  data_dir, _, _ = setup
  config = _config(data_dir, "blocks")
  config_loader.validate(config)
  assert builders.model_kwargs(config)["recompute"] == "blocks"
  config.trainer_options.recompute = "bogus"
  with pytest.raises(config_loader.ConfigError,
                     match=r"trainer_options\.recompute.*'bogus'"):
    config_loader.validate(config)
