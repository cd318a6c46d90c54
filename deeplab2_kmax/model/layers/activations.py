"""Activation functions by name."""

from typing import Callable
from typing import Optional

import tensorflow as tf

from deeplab2_kmax.model.layers import rewrites


def _gelu(x):
  """The exact (erf) GELU, as DeepLab2 uses for kMaX-DeepLab.

  Written x / 2 (1 + erf(x / sqrt 2)) rather than with `tf.nn.gelu`'s
  erfc: a fifth faster on CPU (on [1, 201, 301, 256]: 34.6 vs 44.7 ms),
  equal to 1e-6, and in the form TensorFlow's CPU graph rewrite fuses into
  a preceding matmul + bias (other arrangements are not fused). Inside
  `rewrites.deeplab2_order_of_operations`, `tf.nn.gelu` as DeepLab2 calls it.
  """
  if not rewrites.enabled():
    return tf.nn.gelu(x, approximate=False)
  return 0.5 * x * (1.0 + tf.math.erf(x * 0.7071067811865476))


_ACTIVATIONS = {
    "relu": tf.nn.relu,
    "gelu": _gelu,
    "sigmoid": tf.nn.sigmoid,
    "swish": tf.nn.swish,
}


def get(name: Optional[str]) -> Optional[Callable[[tf.Tensor], tf.Tensor]]:
  """Returns the activation called `name`, or None for None / 'none'."""
  if name is None or name == "none":
    return None
  try:
    return _ACTIVATIONS[name]
  except KeyError:
    raise ValueError(f"Unknown activation {name!r}; expected one of "
                     f"{sorted(_ACTIVATIONS)} or 'none'.") from None
