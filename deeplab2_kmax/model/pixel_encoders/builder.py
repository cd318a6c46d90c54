"""Builds a pixel encoder by name (SPEC §2.1).

Every encoder is a `tf_keras.layers.Layer` whose call(images, training) takes
the already-normalised image (x / 127.5 - 1) [B, H, W, 3] and returns a dict
with the non-activated endpoints "stage1" .. "stage5" (os2 or os4 for the
stem, then os4, 8, 16, 32) and their activated copies "res1" .. "res5". It has
an `endpoint_channels` dict and a `deeplab2_variable_map()` method.
"""

from typing import Callable
from typing import Optional
from typing import Sequence

import tf_keras

from deeplab2_kmax.model.layers import convolutions
from deeplab2_kmax.model.pixel_encoders import axial_resnet
from deeplab2_kmax.model.pixel_encoders import convnext

ENCODER_NAMES = tuple(sorted(
    list(axial_resnet.VARIANTS) + list(convnext.VARIANTS)))
DROP_PATH_SCHEDULES = ("constant", "linear")


def build_pixel_encoder(
    name: str,
    *,
    drop_path_keep_prob: float = 1.0,
    drop_path_schedule: str = "linear",
    width_multiplier: float = 1.0,
    blocks_per_stage: Optional[Sequence[int]] = None,
    use_sync_batch_norm: bool = True,
    bn_layer: Optional[Callable[..., tf_keras.layers.Layer]] = None,
    recompute: bool = False,
    layer_name: str = "encoder") -> tf_keras.layers.Layer:
  """Returns the pixel encoder `name` (one of ENCODER_NAMES).

  Args:
    name: Backbone name, e.g. "resnet50", "axial_resnet50", "convnext_base".
    drop_path_keep_prob: Keep probability of stochastic depth at the deepest
      blocks.
    drop_path_schedule: "linear": the keep probability falls linearly with
      depth from 1 to `drop_path_keep_prob` (DeepLab2's kMaX encoders: per
      stage for ResNets, per block for ConvNeXt); "constant": every block
      with drop path keeps `drop_path_keep_prob`.
    width_multiplier: Scales every channel count (1.0 = the published model;
      small values give tiny CPU variants through the same code path).
    blocks_per_stage: Overrides the four per-stage depths.
    use_sync_batch_norm: Synchronised batch norm across replicas (ResNets;
      ConvNeXt has layer norm only).
    bn_layer: Overrides the batch-norm factory (e.g. other momentum).
    recompute: Recompute each residual block's activations in the backward
      pass of training (`layers/recompute.py`).
    layer_name: The Keras name of the returned layer.
  """
  if not 0.0 < drop_path_keep_prob <= 1.0:
    raise ValueError("drop_path_keep_prob must be in (0, 1], got "
                     f"{drop_path_keep_prob}.")
  if drop_path_schedule not in DROP_PATH_SCHEDULES:
    raise ValueError(f"drop_path_schedule must be one of "
                     f"{DROP_PATH_SCHEDULES}, got {drop_path_schedule!r}.")
  if width_multiplier <= 0:
    raise ValueError(f"width_multiplier must be > 0, got {width_multiplier}.")
  if name in axial_resnet.VARIANTS:
    return axial_resnet.AxialResNet(
        axial_resnet.VARIANTS[name],
        drop_path_keep_prob=drop_path_keep_prob,
        drop_path_schedule=drop_path_schedule,
        width_multiplier=width_multiplier,
        blocks_per_stage=blocks_per_stage,
        bn_layer=bn_layer or convolutions.batch_norm_class(
            use_sync_batch_norm),
        recompute=recompute,
        name=layer_name)
  if name in convnext.VARIANTS:
    return convnext.ConvNeXt(
        convnext.VARIANTS[name],
        drop_path_keep_prob=drop_path_keep_prob,
        drop_path_schedule=drop_path_schedule,
        width_multiplier=width_multiplier,
        blocks_per_stage=blocks_per_stage,
        recompute=recompute,
        name=layer_name)
  raise ValueError(f"Unknown pixel encoder {name!r}; expected one of "
                   f"{list(ENCODER_NAMES)}.")
