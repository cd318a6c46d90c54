"""Helpers that name variables the way DeepLab2 checkpoints do.

Every component of the pixel path exposes `deeplab2_variable_map()`, a dict
from a DeepLab2 checkpoint key (relative to the component, without the
`/.ATTRIBUTES/VARIABLE_VALUE` suffix) to the matching `tf.Variable` of this
library. The helpers below build those dicts for the shared building blocks.
"""

from typing import Dict
from typing import Mapping

import tensorflow as tf
import tf_keras

VariableMap = Dict[str, tf.Variable]


def prefixed(prefix: str, mapping: Mapping[str, tf.Variable]) -> VariableMap:
  """Prepends `prefix/` to every key of `mapping`."""
  return {f"{prefix}/{key}": value for key, value in mapping.items()}


def merge(*mappings: Mapping[str, tf.Variable]) -> VariableMap:
  """Unions variable maps, failing loudly on a duplicated key."""
  merged = {}
  for mapping in mappings:
    for key, value in mapping.items():
      if key in merged:
        raise ValueError(f"Duplicated DeepLab2 checkpoint key {key!r}.")
      merged[key] = value
  return merged


def batch_norm_map(layer: tf_keras.layers.Layer) -> VariableMap:
  """gamma / beta / moving statistics of a (sync) batch-norm layer."""
  return {
      "gamma": layer.gamma,
      "beta": layer.beta,
      "moving_mean": layer.moving_mean,
      "moving_variance": layer.moving_variance,
  }


def layer_norm_map(layer: tf_keras.layers.LayerNormalization) -> VariableMap:
  return {"gamma": layer.gamma, "beta": layer.beta}


def conv_bn_map(layer: tf_keras.layers.Layer) -> VariableMap:
  """Kernel (and bias) plus batch norm of a `convolutions.Conv2DBN`.

  DeepLab2's `Conv2DSame` stores them as `_conv/...` and `_batch_norm/...`.
  """
  conv = layer._conv  # pylint: disable=protected-access
  mapping = {"_conv/kernel": conv.kernel}
  if conv.use_bias:
    mapping["_conv/bias"] = conv.bias
  norm = layer._batch_norm  # pylint: disable=protected-access
  if norm is not None:
    mapping.update(prefixed("_batch_norm", batch_norm_map(norm)))
  return mapping
