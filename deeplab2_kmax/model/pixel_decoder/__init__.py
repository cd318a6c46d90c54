"""Pixel decoders of kMaX-DeepLab."""

from deeplab2_kmax.model.pixel_decoder.kmax import KMaXPixelDecoder

__all__ = ["KMaXPixelDecoder"]
