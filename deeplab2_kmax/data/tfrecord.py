"""TFRecord encoding shared by every dataset builder and the input pipeline.

One `tf.train.Example` per image, in the DeepLab2 layout: the image
as encoded bytes (PNG or JPEG) and the panoptic label as raw little-endian
int32 bytes (`semantic * label_divisor + instance`, format "raw").
"""

import glob
import os
from typing import Dict
from typing import Iterable
from typing import List
from typing import Optional
from typing import Sequence

import numpy as np
import tensorflow as tf

from deeplab2_kmax import common

LABEL_FORMAT_RAW = "raw"


def _bytes(value: bytes) -> tf.train.Feature:
  return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int64(value: int) -> tf.train.Feature:
  return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))


def encode_example(image_bytes: bytes, image_format: str, image_name: str,
                   height: int, width: int,
                   panoptic: Optional[np.ndarray]) -> bytes:
  """Serialises one image (+ optional [H, W] int32 panoptic map)."""
  feature = {
      common.KEY_ENCODED_IMAGE: _bytes(image_bytes),
      common.KEY_IMAGE_FILENAME: _bytes(image_name.encode("utf-8")),
      common.KEY_IMAGE_FORMAT: _bytes(image_format.encode("utf-8")),
      common.KEY_IMAGE_HEIGHT: _int64(height),
      common.KEY_IMAGE_WIDTH: _int64(width),
      common.KEY_IMAGE_CHANNELS: _int64(3),
  }
  if panoptic is not None:
    if panoptic.shape != (height, width):
      raise ValueError(f"Label of {image_name!r} has shape {panoptic.shape}, "
                       f"image is {(height, width)}.")
    feature[common.KEY_ENCODED_LABEL] = _bytes(
        np.ascontiguousarray(panoptic, dtype="<i4").tobytes())
    feature[common.KEY_LABEL_FORMAT] = _bytes(LABEL_FORMAT_RAW.encode())
  example = tf.train.Example(features=tf.train.Features(feature=feature))
  return example.SerializeToString()


def encode_png(array: np.ndarray) -> bytes:
  """PNG bytes of a uint8 [H, W, 3] array."""
  return tf.io.encode_png(tf.convert_to_tensor(array, tf.uint8)).numpy()


_FEATURES = {
    common.KEY_ENCODED_IMAGE: tf.io.FixedLenFeature((), tf.string),
    common.KEY_IMAGE_FILENAME: tf.io.FixedLenFeature((), tf.string, ""),
    common.KEY_IMAGE_HEIGHT: tf.io.FixedLenFeature((), tf.int64),
    common.KEY_IMAGE_WIDTH: tf.io.FixedLenFeature((), tf.int64),
    common.KEY_ENCODED_LABEL: tf.io.FixedLenFeature((), tf.string, ""),
}


def decode_example(serialized: tf.Tensor) -> Dict[str, tf.Tensor]:
  """Parses one record into image [H, W, 3] uint8, label [H, W] int32, name.

  An example without a label gets a label of -1 everywhere.
  """
  parsed = tf.io.parse_single_example(serialized, _FEATURES)
  height = tf.cast(parsed[common.KEY_IMAGE_HEIGHT], tf.int32)
  width = tf.cast(parsed[common.KEY_IMAGE_WIDTH], tf.int32)
  image = tf.io.decode_image(parsed[common.KEY_ENCODED_IMAGE], channels=3,
                             expand_animations=False)
  image = tf.reshape(image, [height, width, 3])
  raw_label = parsed[common.KEY_ENCODED_LABEL]
  label = tf.cond(
      tf.strings.length(raw_label) > 0,
      lambda: tf.io.decode_raw(raw_label, tf.int32, little_endian=True),
      lambda: -tf.ones([height * width], tf.int32))
  return {
      "image": image,
      "label": tf.reshape(label, [height, width]),
      "name": parsed[common.KEY_IMAGE_FILENAME],
      "height": height,
      "width": width,
  }


def shard_paths(output_dir: str, split: str, num_shards: int) -> Sequence[str]:
  """`{split}-00000-of-0000K.tfrecord` paths, DeepLab2 naming."""
  return [
      os.path.join(output_dir, f"{split}-{i:05d}-of-{num_shards:05d}.tfrecord")
      for i in range(num_shards)
  ]


def existing_shards(output_dir: str, split: str) -> List[str]:
  """Shards of `split` already in `output_dir`, whatever their count."""
  return sorted(glob.glob(os.path.join(glob.escape(output_dir),
                                       f"{split}-*-of-*.tfrecord")))


def write_sharded(records: Iterable[bytes], paths: Sequence[str],
                  num_records: int) -> None:
  """Writes `num_records` serialised examples into contiguous shards.

  Shards are written under temporary names and renamed only once every
  record was written, so a failed build leaves no partial output.
  """
  per_shard = max(-(-num_records // len(paths)), 1)
  temps = [p + ".incomplete" for p in paths]
  writers = [tf.io.TFRecordWriter(t) for t in temps]
  try:
    for i, record in enumerate(records):
      writers[min(i // per_shard, len(paths) - 1)].write(record)
    for writer in writers:
      writer.close()
    for temp, path in zip(temps, paths):
      os.replace(temp, path)
  finally:
    for writer, temp in zip(writers, temps):
      writer.close()
      if os.path.exists(temp):
        os.remove(temp)
