"""Pixel decoders of kMaX-DeepLab.

`spec` imports without TensorFlow; the layer is loaded on first use.
"""

__all__ = ["KMaXPixelDecoder"]


def __getattr__(name):
  if name in __all__:
    from deeplab2_kmax.model.pixel_decoder import kmax  # pylint: disable=g-import-not-at-top
    return getattr(kmax, name)
  raise AttributeError(name)
