"""Maps per-pixel predictions at the evaluation crop back to the original image.

The evaluation input is the image resized to fit the crop
(`preprocessing.eval_resized_size`) and padded bottom/right. The inverse, as
DeepLab2 undoes its preprocessing before its metrics and in its SavedModel:
keep the top-left `resized_size` block (drop the padding), then resize that
block to the original size with nearest neighbour and aligned corners, the
kernel the input pipeline resizes labels with. Label maps and score maps are
resized alike (a score map stays constant over each segment it scores), and
no logits are resized. The evaluator and the SavedModel both call
`to_original_size`, so metrics, saved predictions and served predictions are
the same maps.
"""

from typing import Dict
from typing import Mapping

import tensorflow as tf

from deeplab2_kmax import common

# Post-processed [B, H, W] maps that are mapped back to the original image.
PER_PIXEL_KEYS = (
    common.PRED_PANOPTIC_KEY, common.PRED_SEMANTIC_KEY,
    common.PRED_INSTANCE_KEY, common.PRED_INSTANCE_SCORES_KEY,
    common.PRED_SEMANTIC_SCORES_KEY)


def to_original_size(maps: Mapping[str, tf.Tensor], resized_size,
                     original_size) -> Dict[str, tf.Tensor]:
  """Crops each [B, H, W] map to `resized_size`, resizes to `original_size`.

  Args:
    maps: [B, crop_h, crop_w] tensors (any dtype the nearest-neighbour kernel
      takes: ints, floats) of images that share both sizes.
    resized_size: (height, width) of the image inside the padded crop.
    original_size: (height, width) of the original image.

  Returns:
    The same keys, [B, original_h, original_w], same dtypes.
  """
  resized_size = tf.cast(resized_size, tf.int32)
  original_size = tf.cast(original_size, tf.int32)
  restored = {}
  for key, value in maps.items():
    valid = value[:, :resized_size[0], :resized_size[1], tf.newaxis]
    restored[key] = tf.raw_ops.ResizeNearestNeighbor(
        images=valid, size=original_size, align_corners=True,
        half_pixel_centers=False)[..., 0]
  return restored
