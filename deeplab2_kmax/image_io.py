"""Reads image files as the RGB uint8 arrays the predictor and tools take.

Any file Pillow opens works: grayscale (8, 16 or 32 bit), RGBA, palette and
RGB images become [H, W, 3] uint8 RGB, 16-bit values scaled to 8 bits (not
clipped), transparency composited on black, and the EXIF orientation
applied so the array is the picture as a viewer shows it.
"""

import os

import numpy as np
from PIL import Image
from PIL import ImageOps
from PIL import UnidentifiedImageError


class ImageReadError(ValueError):
  """A file that cannot be read as an image; the message names it."""


def _high_depth_to_uint8(image: Image.Image) -> np.ndarray:
  """A 16-bit, 32-bit integer or float single-channel image as uint8 [H, W].

  Scaled to the full 8-bit range, not clipped: 16-bit images by 255/65535;
  32-bit integers by their likely depth (8 or 16 bits, else their maximum);
  floats in [0, 1] by 255.
  """
  values = np.asarray(image, dtype=np.float64)
  peak = float(values.max()) if values.size else 0.0
  if image.mode.startswith("I;16"):
    full = 65535.0
  elif image.mode == "F" and peak <= 1.0:
    full = 1.0
  else:
    full = next((f for f in (255.0, 65535.0) if peak <= f), peak)
  return np.clip(np.rint(values * (255.0 / full)), 0, 255).astype(np.uint8)


def _to_rgb(image: Image.Image) -> np.ndarray:
  """An opened, EXIF-transposed Pillow image as [H, W, 3] uint8 RGB."""
  if image.mode.startswith("I") or image.mode == "F":
    gray = _high_depth_to_uint8(image)
    return np.repeat(gray[..., None], 3, axis=-1)
  if image.mode in ("RGBA", "LA") or (
      image.mode == "P" and "transparency" in image.info):
    # Composite on black so transparent areas do not show stale colours.
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
    image = Image.alpha_composite(background, rgba)
  return np.asarray(image.convert("RGB"), dtype=np.uint8)


def read_rgb_image(path: str) -> np.ndarray:
  """Reads `path` as [H, W, 3] uint8 RGB.

  Args:
    path: An image file Pillow can open.

  Returns:
    The picture as displayed: EXIF orientation applied, grayscale, RGBA,
    palette and 16-bit images converted (16-bit scaled, not clipped).

  Raises:
    ImageReadError: `path` is missing or not a readable image (named).
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise ImageReadError(f"{path}: no such image file")
  try:
    with Image.open(path) as image:
      image.load()
      return _to_rgb(ImageOps.exif_transpose(image))
  except (UnidentifiedImageError, OSError, ValueError) as e:
    raise ImageReadError(f"{path}: not a readable image ({e})") from None


def image_extensions() -> frozenset:
  """Lower-case file extensions (with the dot) Pillow can read."""
  Image.init()
  return frozenset(ext for ext, fmt in Image.registered_extensions().items()
                   if fmt in Image.OPEN)
