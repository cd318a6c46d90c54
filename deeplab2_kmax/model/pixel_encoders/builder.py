"""Builds a pixel encoder from its spec (kMaX-DeepLab §4 backbones).

Every encoder is a `tf_keras.layers.Layer` whose call(images, training) takes
the already-normalised image (x / 127.5 - 1) [B, H, W, 3] and returns a dict
with the non-activated endpoints "stage1" .. "stage5" (os2 or os4 for the
stem, then os4, 8, 16, 32) and their activated copies "res1" .. "res5". It has
an `endpoint_channels` dict and a `deeplab2_variable_map()` method.

The names are `spec.ENCODERS`; each variant family is registered here with
its layer class.
"""

from typing import Callable
from typing import Optional
from typing import Union

import tf_keras

from deeplab2_kmax.model import spec_checks
from deeplab2_kmax.model.layers import convolutions
from deeplab2_kmax.model.layers import spec as layer_spec
from deeplab2_kmax.model.pixel_encoders import axial_resnet
from deeplab2_kmax.model.pixel_encoders import convnext
from deeplab2_kmax.model.pixel_encoders import plain
from deeplab2_kmax.model.pixel_encoders import spec

ENCODER_NAMES = tuple(sorted(spec.ENCODERS))


def _build_resnet(variant, encoder, bn_layer, recompute, name):
  return axial_resnet.AxialResNet(variant, encoder, bn_layer=bn_layer,
                                  recompute=recompute, name=name)


def _build_convnext(variant, encoder, bn_layer, recompute, name):
  del bn_layer  # ConvNeXt has layer norm only.
  return convnext.ConvNeXt(variant, encoder, recompute=recompute, name=name)


def _build_plain(variant, encoder, bn_layer, recompute, name):
  del recompute  # No residual blocks to wrap.
  return plain.PlainEncoder(variant, encoder, bn_layer=bn_layer, name=name)


# Variant family -> builder(variant, spec, bn_layer, recompute, name).
FAMILIES = {
    spec.ResNetVariant: _build_resnet,
    spec.ConvNeXtVariant: _build_convnext,
    spec.PlainVariant: _build_plain,
}


def build_pixel_encoder(
    encoder: Union[spec.PixelEncoderSpec, str],
    *,
    bn_layer: Optional[Callable[..., tf_keras.layers.Layer]] = None,
    recompute: bool = False,
    layer_name: str = "encoder",
    **fields) -> tf_keras.layers.Layer:
  """Returns the pixel encoder `encoder` describes.

  Args:
    encoder: The encoder's spec, or its name (a key of `spec.ENCODERS`).
    bn_layer: The batch-norm factory (default: `batch_norm_class` of the
      `BatchNormSpec` fields in `fields`).
    recompute: Recompute each residual block's activations in the backward
      pass of training (`layers/recompute.py`).
    layer_name: The Keras name of the returned layer.
    **fields: `PixelEncoderSpec` fields replacing the spec's, and
      `BatchNormSpec` fields.
  """
  if isinstance(encoder, str):
    encoder = spec.PixelEncoderSpec(name=encoder)
  encoder_fields, norm_fields = spec_checks.split(
      fields, spec.PixelEncoderSpec, layer_spec.BatchNormSpec)
  encoder = spec_checks.resolve(spec.PixelEncoderSpec, encoder, encoder_fields)
  variant = encoder.variant
  return FAMILIES[type(variant)](
      variant, encoder, bn_layer or convolutions.batch_norm_class(**norm_fields),
      recompute, layer_name)
