"""Pixel encoders (backbones) of kMaX-DeepLab and their factory."""

from deeplab2_kmax.model.pixel_encoders.builder import ENCODER_NAMES
from deeplab2_kmax.model.pixel_encoders.builder import build_pixel_encoder

__all__ = ["ENCODER_NAMES", "build_pixel_encoder"]
