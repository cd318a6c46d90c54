"""ConvNeXt pixel encoders (kMaX-DeepLab §4).

Liu et al., "A ConvNet for the 2020s", CVPR 2022, §2 (Fig. 4): a 4x4
stride-4 patchify stem + LayerNorm, then four stages of blocks
(7x7 depthwise conv -> LayerNorm -> 1x1 to 4C -> GELU -> 1x1 to C ->
layer scale -> stochastic depth -> residual), with LayerNorm + 2x2 stride-2
conv between stages. kMaX-DeepLab (§4) uses ConvNeXt-T/S/B/L; as in DeepLab2,
inputs are zero-padded before each downsampling ((1, 2) before the stem, (0, 1)
before the others) so that 32k+1 crops give (H-1)/s + 1 features.

Endpoints: "stage1" = stem output (os4), "stage2".."stage5" = stage outputs
(os4 .. os32), and activated (GELU) copies "res1".."res5".
"""

from typing import Dict

import numpy as np
import tensorflow as tf
import tf_keras

from deeplab2_kmax.model.layers import activations
from deeplab2_kmax.model.layers import checkpoint_keys
from deeplab2_kmax.model.layers import drop_path
from deeplab2_kmax.model.layers import recompute
from deeplab2_kmax.model.pixel_encoders import spec
from deeplab2_kmax.model.pixel_encoders import staged

_LAYER_NORM_EPSILON = 1e-6


def _truncated_normal():
  return tf_keras.initializers.TruncatedNormal(stddev=0.02)


class DepthwiseConv7x7(tf_keras.layers.Layer):
  """7x7 depthwise conv with bias, kernel stored as [7, 7, 1, C].

  The layout is that of a grouped `Conv2D(groups=C)` (DeepLab2's variable);
  the computation uses the faster depthwise op.
  """

  def __init__(self, name: str = "depthwise_conv"):
    super().__init__(name=name)

  def build(self, input_shape):
    channels = int(input_shape[-1])
    self.kernel = self.add_weight(
        name="kernel", shape=[7, 7, 1, channels],
        initializer=_truncated_normal())
    self.bias = self.add_weight(
        name="bias", shape=[channels], initializer="zeros")
    super().build(input_shape)

  def call(self, inputs):
    kernel = tf.reshape(self.kernel, [7, 7, -1, 1])
    outputs = tf.nn.depthwise_conv2d(
        inputs, kernel, strides=[1, 1, 1, 1], padding="SAME")
    return tf.nn.bias_add(outputs, self.bias)


class ConvNeXtBlock(tf_keras.layers.Layer):
  """Depthwise 7x7 -> LN -> MLP(4x, GELU) -> layer scale -> residual.

  With `recompute`, training recomputes the block's activations in the
  backward pass (`recompute.recomputed_call`).
  """

  def __init__(self,
               channels: int,
               name: str,
               drop_path_keep_prob: float = 1.0,
               layer_scale_init_value: float = 1e-6,
               recompute: bool = False):
    super().__init__(name=name)
    self._recompute = recompute
    self._depthwise = DepthwiseConv7x7()
    self._norm = tf_keras.layers.LayerNormalization(
        epsilon=_LAYER_NORM_EPSILON, name="norm")
    self._expand = tf_keras.layers.Dense(
        4 * channels, kernel_initializer=_truncated_normal(),
        name="pointwise_conv1")
    self._project = tf_keras.layers.Dense(
        channels, kernel_initializer=_truncated_normal(),
        name="pointwise_conv2")
    self._activation_fn = activations.get("gelu")
    self.layer_scale = self.add_weight(
        name="layer_scale", shape=[1, 1, 1, channels],
        initializer=tf_keras.initializers.Constant(layer_scale_init_value))
    self._drop_path = drop_path.DropPath(drop_path_keep_prob)

  def call(self, inputs, training=False):
    if not (training and self._recompute):
      return inputs + self._drop_path(self._branch(inputs), training=training)
    mask = self._drop_path.sample_mask(inputs, training=True)

    def forward(x, *masks):
      branch = self._branch(x)
      if masks:
        branch = branch * tf.cast(masks[0], branch.dtype)
      return x + branch

    masks = [] if mask is None else [mask]
    return recompute.recomputed_call(self, forward, inputs, *masks)

  def _branch(self, inputs):
    """The residual branch before drop path."""
    x = self._norm(self._depthwise(inputs))
    x = self._project(self._activation_fn(self._expand(x)))
    # Cast: a recomputation runs outside this layer's call, where Keras
    # would not cast the variable to the compute dtype.
    return tf.cast(self.layer_scale, x.dtype) * x

  def deeplab2_variable_map(self) -> checkpoint_keys.VariableMap:
    return {
        "depthwise_conv/kernel": self._depthwise.kernel,
        "depthwise_conv/bias": self._depthwise.bias,
        "norm/gamma": self._norm.gamma,
        "norm/beta": self._norm.beta,
        "pointwise_conv1/kernel": self._expand.kernel,
        "pointwise_conv1/bias": self._expand.bias,
        "pointwise_conv2/kernel": self._project.kernel,
        "pointwise_conv2/bias": self._project.bias,
        # The layer scale is tracked first under its weight name.
        "layer_scale": self.layer_scale,
    }


class _Downsample(tf_keras.layers.Layer):
  """Zero-pad, then conv (stem: k4 s4 then LN; later: LN then k2 s2)."""

  def __init__(self, channels: int, is_stem: bool, name: str):
    super().__init__(name=name)
    self._is_stem = is_stem
    self._padding = (1, 2) if is_stem else (0, 1)
    kernel = 4 if is_stem else 2
    self._conv = tf_keras.layers.Conv2D(
        channels, kernel, strides=kernel, kernel_initializer=_truncated_normal(),
        name="conv")
    self._norm = tf_keras.layers.LayerNormalization(
        epsilon=_LAYER_NORM_EPSILON, name="norm")

  def call(self, inputs):
    begin, end = self._padding
    x = tf.pad(inputs, [[0, 0], [begin, end], [begin, end], [0, 0]])
    if self._is_stem:
      return self._norm(self._conv(x))
    return self._conv(self._norm(x))

  def deeplab2_variable_map(self) -> checkpoint_keys.VariableMap:
    # DeepLab2 keeps these in a Sequential; weighted layers are numbered.
    conv_index, norm_index = (0, 1) if self._is_stem else (1, 0)
    return {
        f"layer_with_weights-{conv_index}/kernel": self._conv.kernel,
        f"layer_with_weights-{conv_index}/bias": self._conv.bias,
        f"layer_with_weights-{norm_index}/gamma": self._norm.gamma,
        f"layer_with_weights-{norm_index}/beta": self._norm.beta,
    }


class ConvNeXt(staged.StagedEncoder):
  """ConvNeXt backbone returning endpoints at os4 .. os32."""

  def __init__(self,
               variant: spec.ConvNeXtVariant,
               encoder: spec.PixelEncoderSpec,
               *,
               layer_scale_init_value: float = 1e-6,
               recompute: bool = False,
               name: str = "encoder"):
    """A ConvNeXt of `variant` with `encoder`'s hyperparameters (checked)."""
    super().__init__(name=name)
    depths = tuple(encoder.blocks_per_stage or variant.depths)
    widths = [int(round(w * encoder.width_multiplier)) for w in variant.widths]
    # 'linear' (DeepLab2's ConvNeXt): from 1 at the first block to
    # drop_path_keep_prob at the last; 'constant': the same for all.
    keep_prob = encoder.drop_path_keep_prob
    if encoder.drop_path_schedule == "linear":
      keep_probs = np.linspace(1.0, keep_prob, sum(depths)).tolist()
    else:
      keep_probs = [keep_prob] * sum(depths)
    self._downsamples = []
    self._stages = []
    self.endpoint_channels: Dict[str, int] = {"stage1": widths[0]}
    for index, (depth, width) in enumerate(zip(depths, widths)):
      self._downsamples.append(_Downsample(
          width, is_stem=index == 0,
          name="stem" if index == 0 else f"downsampling_block_{index - 1}"))
      first = sum(depths[:index])
      self._stages.append([
          ConvNeXtBlock(width, name=f"convnext_block_{index}_{j}",
                        drop_path_keep_prob=keep_probs[first + j],
                        layer_scale_init_value=layer_scale_init_value,
                        recompute=recompute)
          for j in range(depth)])
      self.endpoint_channels[f"stage{index + 2}"] = width
    self._activation_fn = activations.get("gelu")

  def call_stage(self, name: str, inputs, training=False):
    # "stage1" is the stem; "stage2" has no downsampling (the stem did it).
    index = self.stage_names.index(name)
    if index == 0:
      return self._downsamples[0](inputs)
    x = self._downsamples[index - 1](inputs) if index > 1 else inputs
    for block in self._stages[index - 1]:
      x = block(x, training=training)
    return x

  def deeplab2_variable_map(self) -> checkpoint_keys.VariableMap:
    """Keys follow DeepLab2's object graph (lists of Keras Sequentials).

    No DeepLab2 ConvNeXt key list is available to check these against.
    """
    maps = []
    for index, (downsample, stage) in enumerate(
        zip(self._downsamples, self._stages)):
      maps.append(checkpoint_keys.prefixed(
          f"downsample_layers/{index}", downsample.deeplab2_variable_map()))
      for j, block in enumerate(stage):
        maps.append(checkpoint_keys.prefixed(
            f"stages/{index}/layer_with_weights-{j}",
            block.deeplab2_variable_map()))
    return checkpoint_keys.merge(*maps)
