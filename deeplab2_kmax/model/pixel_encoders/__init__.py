"""Pixel encoders (backbones) of kMaX-DeepLab and their factory.

`spec` (names and hyperparameters) imports without TensorFlow; the factory
is loaded on first use.
"""

__all__ = ["ENCODER_NAMES", "build_pixel_encoder"]


def __getattr__(name):
  if name in __all__:
    from deeplab2_kmax.model.pixel_encoders import builder  # pylint: disable=g-import-not-at-top
    return getattr(builder, name)
  raise AttributeError(name)
