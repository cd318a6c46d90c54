"""How a kMaX layer splits its channels into attention heads (no TensorFlow).

The one rule both the layer and `config_loader.check_config` apply: the
centre self-attention's queries and keys have `channels // 2` channels, its
values `channels`, and each is split evenly over the heads.
"""

from typing import Tuple


def attention_channels(channels: int, num_heads: int) -> Tuple[int, int]:
  """(key channels, value channels) of a kMaX layer of `channels`.

  Raises:
    ValueError: if either does not split evenly into `num_heads` heads.
  """
  key_channels, value_channels = channels // 2, channels
  if num_heads <= 0 or key_channels % num_heads or value_channels % num_heads:
    raise ValueError(
        f"{num_heads} heads do not divide the key channels "
        f"{key_channels} (channels // 2) and the value channels "
        f"{value_channels} of channels {channels}")
  return key_channels, value_channels
