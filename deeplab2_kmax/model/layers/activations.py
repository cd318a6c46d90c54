"""Activation functions by name."""

from typing import Callable
from typing import Optional

import tensorflow as tf


def _gelu(x):
  # The exact (erf) form, as DeepLab2 uses for kMaX-DeepLab.
  return tf.nn.gelu(x, approximate=False)


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
