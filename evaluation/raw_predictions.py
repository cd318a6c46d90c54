"""Raw predictions in DeepLab2's files (`evaluator_options.save_raw_predictions`).

For every image, at its original size:
  raw_semantic/NAME.png: the semantic prediction (`semantic_pred`, the
    threshold-free map, as DeepLab2 writes), one uint8 class id per pixel;
  raw_panoptic/NAME.png (or NAME.npy): the panoptic map, class id and
    instance id (panoptic // divisor, panoptic % divisor) in one of DeepLab2's
    `raw_panoptic_format`s:
      'two_channel_png': R = class, G = instance (each < 256), B = 0;
      'three_channel_png': R = class, G = instance // 256,
        B = instance % 256 (instance < 65536);
      'two_channel_numpy_array': [H, W, 3] int32, class, instance, 0.
Class ids are the dataset's, or mapped through `class_map` (Cityscapes'
training ids -> evaluation ids; ids beyond the map, void, become 0).
"""

import os
from typing import Optional
from typing import Sequence

import numpy as np
from PIL import Image

FORMATS = ("two_channel_png", "three_channel_png", "two_channel_numpy_array")


def _map_classes(semantic: np.ndarray, class_map: Optional[np.ndarray]):
  if class_map is None:
    return semantic
  inside = (semantic >= 0) & (semantic < len(class_map))
  return np.where(inside, class_map[np.clip(semantic, 0, len(class_map) - 1)],
                  0)


def encode_panoptic(panoptic: np.ndarray, label_divisor: int, raw_format: str,
                    class_map: Optional[np.ndarray] = None) -> np.ndarray:
  """[H, W] panoptic ids -> [H, W, 3] (uint8 for PNGs, int32 for numpy)."""
  if raw_format not in FORMATS:
    raise ValueError(f"raw_panoptic_format {raw_format!r} is not one of "
                     f"{FORMATS}")
  panoptic = np.asarray(panoptic, np.int64)
  semantic = _map_classes(panoptic // label_divisor, class_map)
  instance = panoptic % label_divisor
  if raw_format == "two_channel_numpy_array":
    return np.stack([semantic, instance, np.zeros_like(semantic)],
                    -1).astype(np.int32)
  limit = 256 if raw_format == "two_channel_png" else 65536
  for name, values, bound in (("class", semantic, 256),
                              ("instance", instance, limit)):
    if values.size and (values.max() >= bound or values.min() < 0):
      raise ValueError(
          f"raw_panoptic_format {raw_format!r} cannot hold {name} id "
          f"{values.max()} (limit {bound - 1}); use "
          "'two_channel_numpy_array'")
  if raw_format == "two_channel_png":
    channels = [semantic, instance, np.zeros_like(semantic)]
  else:
    channels = [semantic, instance // 256, instance % 256]
  return np.stack(channels, -1).astype(np.uint8)


class RawPredictionWriter:
  """Writes raw_semantic/ and raw_panoptic/ under `save_dir`."""

  def __init__(self, save_dir: str, label_divisor: int, raw_format: str,
               class_map: Optional[Sequence[int]] = None):
    if raw_format not in FORMATS:
      raise ValueError(f"raw_panoptic_format {raw_format!r} is not one of "
                       f"{FORMATS}")
    self._semantic_dir = os.path.join(save_dir, "raw_semantic")
    self._panoptic_dir = os.path.join(save_dir, "raw_panoptic")
    for folder in (self._semantic_dir, self._panoptic_dir):
      os.makedirs(folder, exist_ok=True)
    self._divisor = label_divisor
    self._format = raw_format
    self._class_map = (None if class_map is None
                       else np.asarray(class_map, np.int64))

  def add(self, image_name: str, panoptic: np.ndarray,
          semantic: np.ndarray):
    """Writes one image's maps; returns (semantic path, panoptic path)."""
    stem = os.path.splitext(os.path.basename(image_name))[0]
    semantic = _map_classes(np.asarray(semantic, np.int64), self._class_map)
    if semantic.size and (semantic.max() > 255 or semantic.min() < 0):
      raise ValueError(f"{image_name}: class id {semantic.max()} does not fit "
                       "the uint8 raw semantic PNG")
    semantic_path = os.path.join(self._semantic_dir, stem + ".png")
    Image.fromarray(semantic.astype(np.uint8)).save(semantic_path)
    encoded = encode_panoptic(panoptic, self._divisor, self._format,
                              self._class_map)
    if self._format == "two_channel_numpy_array":
      panoptic_path = os.path.join(self._panoptic_dir, stem + ".npy")
      np.save(panoptic_path, encoded)
    else:
      panoptic_path = os.path.join(self._panoptic_dir, stem + ".png")
      Image.fromarray(encoded).save(panoptic_path)
    return semantic_path, panoptic_path
