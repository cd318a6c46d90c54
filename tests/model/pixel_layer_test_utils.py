"""Helpers shared by the pixel-path layer tests."""

import numpy as np


def randomize(layer, seed=0):
  """Gives every variable of a built layer random values (BN variances > 0)."""
  rng = np.random.default_rng(seed)
  for variable in layer.variables:
    if "moving_variance" in variable.name:
      value = rng.uniform(0.5, 1.5, variable.shape)
    else:
      value = 0.5 * rng.standard_normal(variable.shape)
    variable.assign(value.astype(np.float32))


def numpy_map(layer):
  """deeplab2_variable_map() with NumPy values."""
  return {k: v.numpy().astype(np.float64)
          for k, v in layer.deeplab2_variable_map().items()}


def bn_params(values, prefix, squeeze=False):
  params = [values[f"{prefix}/{leaf}"] for leaf in
            ("gamma", "beta", "moving_mean", "moving_variance")]
  if squeeze:
    params = [np.squeeze(p) for p in params]
  return tuple(params)
