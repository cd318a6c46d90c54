"""Residual bottleneck and axial blocks, and stages of them.

Bottleneck block: He et al., "Deep Residual Learning", CVPR 2016 (v1.5: the
stride sits in the 3x3 conv). Axial block: Axial-DeepLab (ECCV 2020) §3.2,
the bottleneck whose 3x3 conv is replaced by height-axis then width-axis
attention; kMaX-DeepLab uses it in the MaX-S backbone and in the enhanced
pixel decoder (kMaX-DeepLab §3.3).

Following DeepLab2, a block takes the NON-activated output of the previous
block, activates it, and returns the non-activated residual sum. The last
batch norm of the residual branch starts at gamma = 0 (Goyal et al. 2017).
"""

from typing import Callable
from typing import Optional
from typing import Sequence

import tensorflow as tf
import tf_keras

from deeplab2_kmax.model.layers import activations
from deeplab2_kmax.model.layers import axial_attention
from deeplab2_kmax.model.layers import checkpoint_keys
from deeplab2_kmax.model.layers import convolutions
from deeplab2_kmax.model.layers import drop_path
from deeplab2_kmax.model.layers import recompute


class BottleneckBlock(tf_keras.layers.Layer):
  """1x1 reduce, 3x3 conv (or axial attention), 1x1 expand to 4 * filters.

  With `use_axial_attention` the reduction has 2 * filters channels and the
  attention has key depth `filters` and value depth 2 * filters (as in DeepLab2).
  A projection shortcut (1x1 conv + BN, strided) is built when the input
  channels differ from 4 * filters; otherwise a strided block subsamples.
  `atrous_rate` dilates the 3x3 conv (ignored by axial attention).
  With `recompute`, training keeps only the block's input for the backward
  pass and recomputes its activations there (`recompute.recomputed_call`).
  """

  def __init__(self,
               filters: int,
               name: str,
               strides: int = 1,
               atrous_rate: int = 1,
               use_axial_attention: bool = False,
               activation: str = "relu",
               drop_path_keep_prob: float = 1.0,
               bn_layer: Callable[..., tf_keras.layers.Layer] = (
                   tf_keras.layers.BatchNormalization),
               recompute: bool = False):
    super().__init__(name=name)
    self._filters = filters
    self._recompute = recompute
    self._strides = strides
    self._activation = activation
    self._activation_fn = activations.get(activation)
    self._bn_layer = bn_layer
    self._use_axial_attention = use_axial_attention
    reduce_channels = 2 * filters if use_axial_attention else filters
    self._reduce = convolutions.Conv2DBN(
        reduce_channels, 1, name="conv1_bn_act", bn_layer=bn_layer,
        activation=activation)
    if use_axial_attention:
      self._attention = axial_attention.AxialAttention2D(
          filters, name="attention", strides=strides, bn_layer=bn_layer)
    else:
      self._spatial = convolutions.Conv2DBN(
          filters, 3, name="conv2_bn_act", strides=strides,
          atrous_rate=atrous_rate, bn_layer=bn_layer, activation=activation)
    self._expand = convolutions.Conv2DBN(
        4 * filters, 1, name="conv3_bn", bn_layer=bn_layer,
        bn_gamma_initializer="zeros")
    self._drop_path = drop_path.DropPath(drop_path_keep_prob)
    self._shortcut = None

  @property
  def output_channels(self) -> int:
    return 4 * self._filters

  def build(self, input_shape):
    if int(input_shape[-1]) != 4 * self._filters:
      self._shortcut = convolutions.Conv2DBN(
          4 * self._filters, 1, name="shortcut", strides=self._strides,
          bn_layer=self._bn_layer)
    super().build(input_shape)

  def call(self, inputs, training=False):
    if training and self._recompute:
      return self._recomputed_call(inputs)
    residual, shortcut = self._branches(inputs, training)
    return self._drop_path(residual, training=training) + shortcut

  def _recomputed_call(self, inputs):
    """Training call; the drop-path mask is drawn once, outside."""
    mask = self._drop_path.sample_mask(inputs, training=True)

    def forward(x, *masks):
      residual, shortcut = self._branches(x, training=True)
      if masks:
        residual = residual * tf.cast(masks[0], residual.dtype)
      return residual + shortcut

    masks = [] if mask is None else [mask]
    return recompute.recomputed_call(self, forward, inputs, *masks)

  def _branches(self, inputs, training):
    """(residual branch before drop path, shortcut) of the block."""
    x = self._activation_fn(inputs)
    if self._shortcut is not None:
      shortcut = self._shortcut(x, training=training)
    else:
      shortcut = x[:, ::self._strides, ::self._strides]
    residual = self._reduce(x, training=training)
    if self._use_axial_attention:
      residual = self._activation_fn(
          self._attention(residual, training=training))
    else:
      residual = self._spatial(residual, training=training)
    return self._expand(residual, training=training), shortcut

  def deeplab2_variable_map(self) -> checkpoint_keys.VariableMap:
    maps = [
        checkpoint_keys.prefixed(
            "_conv1_bn_act", checkpoint_keys.conv_bn_map(self._reduce)),
        checkpoint_keys.prefixed(
            "_conv3_bn", checkpoint_keys.conv_bn_map(self._expand)),
    ]
    if self._use_axial_attention:
      maps.append(checkpoint_keys.prefixed(
          "_attention", self._attention.deeplab2_variable_map()))
    else:
      maps.append(checkpoint_keys.prefixed(
          "_conv2_bn_act", checkpoint_keys.conv_bn_map(self._spatial)))
    if self._shortcut is not None:
      maps.append(checkpoint_keys.prefixed(
          "_shortcut", checkpoint_keys.conv_bn_map(self._shortcut)))
    return checkpoint_keys.merge(*maps)


class BlockStage(tf_keras.layers.Layer):
  """A sequence of bottleneck/axial blocks at one resolution.

  The first block carries the stride; `atrous_rate` dilates every 3x3 conv.
  `use_axial_attention` and `drop_path_keep_probs` are given per block;
  `recompute` applies to every block.
  """

  def __init__(self,
               filters: int,
               num_blocks: int,
               name: str,
               strides: int = 1,
               atrous_rate: int = 1,
               use_axial_attention: Optional[Sequence[bool]] = None,
               drop_path_keep_probs: Optional[Sequence[float]] = None,
               activation: str = "relu",
               bn_layer: Callable[..., tf_keras.layers.Layer] = (
                   tf_keras.layers.BatchNormalization),
               recompute: bool = False):
    super().__init__(name=name)
    use_axial_attention = use_axial_attention or [False] * num_blocks
    drop_path_keep_probs = drop_path_keep_probs or [1.0] * num_blocks
    if len(use_axial_attention) != num_blocks or (
        len(drop_path_keep_probs) != num_blocks):
      raise ValueError(f"{name}: expected {num_blocks} per-block settings.")
    self._blocks = [
        BottleneckBlock(
            filters,
            name=f"block{index + 1}",
            strides=strides if index == 0 else 1,
            atrous_rate=atrous_rate,
            use_axial_attention=use_axial_attention[index],
            activation=activation,
            drop_path_keep_prob=drop_path_keep_probs[index],
            bn_layer=bn_layer, recompute=recompute)
        for index in range(num_blocks)
    ]

  @property
  def output_channels(self) -> int:
    return self._blocks[-1].output_channels

  def call(self, inputs, training=False):
    x = inputs
    for block in self._blocks:
      x = block(x, training=training)
    return x

  def deeplab2_variable_map(self) -> checkpoint_keys.VariableMap:
    return checkpoint_keys.merge(*[
        checkpoint_keys.prefixed(f"_block{index + 1}",
                                 block.deeplab2_variable_map())
        for index, block in enumerate(self._blocks)
    ])
