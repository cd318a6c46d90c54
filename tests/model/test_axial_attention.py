"""Axial attention vs. a pixel-by-pixel NumPy reference."""

import numpy as np
import pixel_layer_test_utils as utils
import pixel_numpy_reference as ref
import tensorflow as tf

from deeplab2_kmax.model.layers import axial_attention


def _reference_1d(x, values, prefix, key_depth, value_depth, heads):
  return ref.axial_attention_1d(
      x, values[f"{prefix}qkv_kernel"],
      values[f"{prefix}_query_rpe/embeddings"],
      values[f"{prefix}_key_rpe/embeddings"],
      values[f"{prefix}_value_rpe/embeddings"],
      key_depth, value_depth, heads,
      utils.bn_params(values, f"{prefix}_batch_norm_qkv"),
      utils.bn_params(values, f"{prefix}_batch_norm_similarity", squeeze=True),
      [p.reshape(2, heads, -1) for p in utils.bn_params(
          values, f"{prefix}_batch_norm_retrieved_output")])


def test_relative_distance_indices_match_brute_force():
  indices = axial_attention.relative_distance_indices(3, 7)
  for o in range(3):
    for p in range(7):
      assert indices[o, p] == (p - (o + 2)) + 254
  assert axial_attention.relative_distance_indices(300, 300).max() == 508
  assert axial_attention.relative_distance_indices(300, 300).min() == 0


def test_axial_attention_matches_numpy_reference():
  layer = axial_attention.AxialAttention(8, 12, name="attention", num_heads=2)
  x = np.random.default_rng(1).standard_normal([2, 5, 6]).astype(np.float32)
  layer(x)
  utils.randomize(layer, seed=2)
  values = utils.numpy_map(layer)
  assert values["_query_rpe/embeddings"].shape == (509, 4)
  assert values["_value_rpe/embeddings"].shape == (509, 6)
  assert values["_batch_norm_similarity/gamma"].shape == (3, 1, 2, 1, 1)
  assert values["_batch_norm_retrieved_output/gamma"].shape == (2, 1, 2, 1, 6)
  expected = _reference_1d(x.astype(np.float64), values, "", 8, 12, 2)
  actual = layer(x, training=False).numpy()
  np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4)


def test_axial_attention_2d_height_then_width_with_stride():
  layer = axial_attention.AxialAttention2D(4, strides=2, num_heads=2)
  x = np.random.default_rng(3).standard_normal([1, 5, 4, 3]).astype(np.float32)
  layer(x)
  utils.randomize(layer, seed=4)
  values = utils.numpy_map(layer)
  # Height axis: every column is a sequence.
  columns = np.transpose(x, [0, 2, 1, 3]).reshape(4, 5, 3).astype(np.float64)
  y = _reference_1d(columns, values, "_height_axis/", 4, 8, 2)
  y = np.transpose(y.reshape(1, 4, 5, 8), [0, 2, 1, 3])[:, ::2]
  rows = y.reshape(3, 4, 8)
  z = _reference_1d(rows, values, "_width_axis/", 4, 8, 2)
  expected = z.reshape(1, 3, 4, 8)[:, :, ::2]
  actual = layer(x, training=False).numpy()
  assert actual.shape == (1, 3, 2, 8)
  np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4)


def test_long_axis_uses_blocks_with_flange():
  layer = axial_attention.AxialAttention(
      4, 6, name="attention", num_heads=2, query_block=4, memory_flange=2)
  x = np.random.default_rng(5).standard_normal([2, 11, 3]).astype(np.float32)
  layer(x)
  utils.randomize(layer, seed=6)
  values = utils.numpy_map(layer)
  expected = ref.axial_attention_1d(
      x.astype(np.float64), values["qkv_kernel"],
      values["_query_rpe/embeddings"], values["_key_rpe/embeddings"],
      values["_value_rpe/embeddings"], 4, 6, 2,
      utils.bn_params(values, "_batch_norm_qkv"),
      utils.bn_params(values, "_batch_norm_similarity", squeeze=True),
      [p.reshape(2, 2, -1) for p in utils.bn_params(
          values, "_batch_norm_retrieved_output")],
      query_block=4, memory_flange=2)
  actual = layer(x, training=False).numpy()
  np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4)


def test_axis_longer_than_129_runs_locally():
  layer = axial_attention.AxialAttention(8, 16, name="attention")
  outputs = layer(tf.random.normal([1, 300, 4]), training=True)
  assert outputs.shape == (1, 300, 16)
  assert np.all(np.isfinite(outputs.numpy()))
