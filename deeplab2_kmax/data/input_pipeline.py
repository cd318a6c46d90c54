"""tf.data input pipeline: TFRecords -> batched dicts of model inputs/targets.

SPEC §5. Training samples go through `preprocessing.augment` (resize, random
scale, colour augmentation, crop/pad, flip), optionally panoptic copy-paste
with another sample of the stream, then `preprocessing.panoptic_targets`.
Evaluation samples are only resized/padded to the crop and also carry the
unaugmented panoptic map at the original size (`GT_PANOPTIC_RAW`, padded per
batch with the void id), the original size (`GT_SIZE_RAW`) and the size after
resizing, before padding (`RESIZED_SIZE`): what the evaluator needs to map
predictions back to the original image. Keys are those of
`deeplab2_kmax.common`.

Every random draw is stateless, seeded by `(seed, sample index)`, so a run
with a seed is reproducible regardless of parallelism.
"""

import os
import random
import struct
from typing import Dict
from typing import List
from typing import Optional
from typing import Sequence
from typing import Tuple
from typing import Union

import tensorflow as tf

from deeplab2_kmax import common
from deeplab2_kmax.data import copy_paste as copy_paste_lib
from deeplab2_kmax.data import dataset_registry
from deeplab2_kmax.data import preprocessing
from deeplab2_kmax.data import tfrecord

AUTOTUNE = tf.data.AUTOTUNE


def list_files(file_pattern: Union[str, Sequence[str]]) -> Tuple[str, ...]:
  """Sorted files matching the pattern(s); raises naming an empty pattern."""
  patterns = [file_pattern] if isinstance(file_pattern, str) else file_pattern
  files = []
  for pattern in patterns:
    matched = tf.io.gfile.glob(pattern)
    if not matched:
      raise FileNotFoundError(f"No file matches the pattern {pattern!r}.")
    files.extend(matched)
  return tuple(sorted(set(files)))


class CorruptRecordError(ValueError):
  """A TFRecord file that cannot be read; names the file and the offset."""


def _crc32c_table() -> Tuple[int, ...]:
  table = []
  for byte in range(256):
    crc = byte
    for _ in range(8):
      crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    table.append(crc)
  return tuple(table)


_CRC32C = _crc32c_table()


def _masked_crc32c(data: bytes) -> int:
  """TFRecord's masked CRC-32C (Castagnoli) of a few bytes."""
  crc = 0xFFFFFFFF
  for byte in data:
    crc = _CRC32C[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  crc ^= 0xFFFFFFFF
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def scan_record_headers(path: str) -> List[int]:
  """Walks the record headers of one file; returns each record's offset.

  Checks every length's CRC and that each record fits in the file (what a
  truncated or overwritten shard breaks) without reading the data, then the
  first record's data CRC. Raises CorruptRecordError naming the file, the
  record and its byte offset.
  """
  offsets = []
  local = "://" not in path
  with (open(path, "rb") if local else tf.io.gfile.GFile(path, "rb")) as f:
    size = os.fstat(f.fileno()).st_size if local else f.size()
    offset = 0
    while offset < size:
      where = f"{path}: record {len(offsets)} at byte offset {offset}"
      header = f.read(12)
      if len(header) < 12:
        raise CorruptRecordError(f"Corrupt TFRecord file {where}: truncated "
                                 f"header ({size - offset} bytes left)")
      length, crc = struct.unpack("<QI", header)
      if _masked_crc32c(header[:8]) != crc:
        raise CorruptRecordError(f"Corrupt TFRecord file {where}: header "
                                 "checksum mismatch (not a TFRecord, or "
                                 "overwritten bytes)")
      end = offset + 12 + length + 4
      if end > size:
        raise CorruptRecordError(
            f"Corrupt TFRecord file {where}: the record needs {length + 16} "
            f"bytes, {size - offset} are left (truncated file)")
      offsets.append(offset)
      offset = end
      f.seek(offset)
  try:
    for _ in tf.data.TFRecordDataset(path).take(1):
      pass
  except tf.errors.DataLossError as e:
    raise CorruptRecordError(f"Corrupt TFRecord file {path}: record 0 at "
                             f"byte offset 0: {e.message}") from None
  return offsets


def scan_records(file_pattern: Union[str, Sequence[str]]) -> int:
  """`scan_record_headers` of every matching file; returns the records."""
  return sum(len(scan_record_headers(path))
             for path in list_files(file_pattern))


def validate_records(file_pattern: Union[str, Sequence[str]]) -> int:
  """Reads and decodes every record of every file; returns their number.

  tf.data reports a truncated or corrupt TFRecord without its file name, so
  callers that want a clear error up front (evaluation, small datasets,
  `check_config --check_data`) call this first. Raises CorruptRecordError
  naming the first bad file, record and byte offset.
  """
  total = 0
  for path in list_files(file_pattern):
    offsets = scan_record_headers(path)
    index = 0  # Records read and decoded so far.
    try:
      for record in tf.data.TFRecordDataset(path):
        tfrecord.decode_example(record)
        index += 1
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as e:
      offset = offsets[index] if index < len(offsets) else "?"
      raise CorruptRecordError(
          f"Corrupt TFRecord file {path}: record {index} at byte offset "
          f"{offset}: {e.message}") from e
    total += len(offsets)
  return total


def _records(files, shuffle: bool, repeat: bool, seed: int,
             shuffle_buffer: int) -> tf.data.Dataset:
  ds = tf.data.Dataset.from_tensor_slices(list(files))
  if shuffle:
    ds = ds.shuffle(len(files), seed=seed)
  # Without shuffling, files are read one after another, in sorted order.
  ds = ds.interleave(tf.data.TFRecordDataset,
                     cycle_length=min(len(files), 8) if shuffle else 1,
                     num_parallel_calls=AUTOTUNE, deterministic=True)
  if repeat:
    ds = ds.repeat()
  if shuffle:
    ds = ds.shuffle(shuffle_buffer, seed=seed)
  return ds


def build_dataset(
    dataset_info: dataset_registry.DatasetInfo,
    file_pattern: Union[str, Sequence[str]],
    *,
    batch_size: int,
    crop_size: Sequence[int],
    is_training: bool,
    min_resize_value: preprocessing.Size = None,
    max_resize_value: preprocessing.Size = None,
    resize_factor: Optional[int] = None,
    min_scale_factor: float = 1.0,
    max_scale_factor: float = 1.0,
    scale_factor_step: float = 0.0,
    autoaugment_policy: Optional[str] = None,
    random_flip: bool = True,
    copy_paste: bool = False,
    copy_paste_scale: float = 0.5,
    copy_paste_thing_option: str = "all",
    copy_paste_stuff_option: str = "random",
    copy_paste_void_option: str = "none",
    max_thing_id: int = 128,
    small_instance_area: int = 0,
    small_instance_weight: float = 1.0,
    seed: Optional[int] = None,
    shuffle: Optional[bool] = None,
    repeat: Optional[bool] = None,
    drop_remainder: Optional[bool] = None,
    shuffle_buffer: int = 256,
    prefetch: bool = True,
) -> tf.data.Dataset:
  """Builds the batched dataset of dicts keyed by `deeplab2_kmax.common`.

  Args:
    dataset_info: The dataset's `DatasetInfo` (classes, ignore, divisor).
    file_pattern: Glob(s) of TFRecord files in the `tfrecord` format.
    batch_size: Images per batch.
    crop_size: (height, width) of every output image.
    is_training: Augment and produce training samples, or evaluation ones.
    min_resize_value, max_resize_value: Resize-to-range bounds (short side /
      long-side cap); evaluation caps at the crop size by default.
    resize_factor: Resized sides become a multiple of it plus one.
    min_scale_factor, max_scale_factor, scale_factor_step: Random scale.
    autoaugment_policy: Colour augmentation policy name (training), or None.
    random_flip: Random horizontal flips (training).
    copy_paste: Panoptic copy-paste with another sample (training).
    copy_paste_scale: Multiplies the scale range of the pasted sample.
    copy_paste_thing_option, copy_paste_stuff_option, copy_paste_void_option:
      'all', 'random' or 'none' per group of source segments.
    max_thing_id: Length of the thing-id class list.
    small_instance_area, small_instance_weight: Semantic-loss up-weighting
      of thing instances below this many pixels (off by default).
    seed: Makes the pipeline deterministic; random when None.
    shuffle, repeat, drop_remainder: Default to `is_training`.
    shuffle_buffer: Records in the shuffle buffer.
    prefetch: Whether to prefetch (AUTOTUNE).

  Returns:
    A `tf.data.Dataset` of dicts of batched tensors.
  """
  files = list_files(file_pattern)
  crop_size = tuple(int(c) for c in crop_size)
  if len(crop_size) != 2 or min(crop_size) < 1:
    raise ValueError(f"crop_size must be (height, width) > 0, got {crop_size}.")
  shuffle = is_training if shuffle is None else shuffle
  repeat = is_training if repeat is None else repeat
  drop_remainder = is_training if drop_remainder is None else drop_remainder
  seed = random.randrange(2**31) if seed is None else int(seed)
  divisor = dataset_info.panoptic_label_divisor
  void_id = dataset_info.ignore_label * divisor
  targets_kwargs = dict(
      num_classes=dataset_info.num_classes,
      ignore_label=dataset_info.ignore_label, label_divisor=divisor,
      class_has_instances=dataset_info.class_has_instances,
      max_thing_id=max_thing_id, small_instance_area=small_instance_area,
      small_instance_weight=small_instance_weight)
  augment_kwargs = dict(
      crop_size=crop_size, min_resize_value=min_resize_value,
      max_resize_value=max_resize_value, resize_factor=resize_factor,
      scale_factor_step=scale_factor_step,
      autoaugment_policy=autoaugment_policy, random_flip=random_flip)
  paste_kwargs = dict(
      label_divisor=divisor, ignore_label=dataset_info.ignore_label,
      thing_class_ids=dataset_info.thing_class_ids,
      stuff_class_ids=dataset_info.stuff_class_ids,
      thing_option=copy_paste_thing_option,
      stuff_option=copy_paste_stuff_option, void_option=copy_paste_void_option)

  def train_sample(index, record, source_record=None):
    seeds = tf.random.experimental.stateless_split(
        tf.stack([tf.constant(seed, tf.int64), index]), 3)
    example = tfrecord.decode_example(record)
    image, label = preprocessing.augment(
        tf.cast(example["image"], tf.float32), example["label"][..., None],
        seeds[0], label_pad_value=void_id, min_scale_factor=min_scale_factor,
        max_scale_factor=max_scale_factor, **augment_kwargs)
    if source_record is not None:
      padding_id = void_id + 1  # Tells padding from void in the source.
      source = tfrecord.decode_example(source_record)
      source_image, source_label = preprocessing.augment(
          tf.cast(source["image"], tf.float32), source["label"][..., None],
          seeds[1], label_pad_value=padding_id,
          min_scale_factor=min_scale_factor * copy_paste_scale,
          max_scale_factor=max_scale_factor * copy_paste_scale,
          **augment_kwargs)
      image, label = copy_paste_lib.paste(
          image, label, source_image, source_label, seeds[2],
          padding_id=padding_id, **paste_kwargs)
    sample = preprocessing.panoptic_targets(label[..., 0], **targets_kwargs)
    sample[common.IMAGE] = image
    return sample

  eval_kwargs = dict(
      void_id=void_id, targets_kwargs=targets_kwargs,
      resize_kwargs=dict(crop_size=crop_size,
                         min_resize_value=min_resize_value,
                         max_resize_value=max_resize_value,
                         resize_factor=resize_factor))

  ds = _records(files, shuffle, repeat, seed, shuffle_buffer)
  if is_training:
    if copy_paste:
      sources = _records(files, True, repeat, seed + 1, shuffle_buffer)
      ds = tf.data.Dataset.zip((ds, sources))
      ds = ds.enumerate().map(lambda i, rs: train_sample(i, rs[0], rs[1]),
                              num_parallel_calls=AUTOTUNE, deterministic=True)
    else:
      ds = ds.enumerate().map(train_sample, num_parallel_calls=AUTOTUNE,
                              deterministic=True)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
  else:
    ds = ds.map(lambda record: _eval_sample(record, **eval_kwargs),
                num_parallel_calls=AUTOTUNE, deterministic=True)
    ds = ds.padded_batch(
        batch_size, drop_remainder=drop_remainder,
        padding_values=_eval_padding_values(void_id))
  return ds.prefetch(AUTOTUNE) if prefetch else ds


def _eval_sample(record, *, void_id: int, targets_kwargs,
                 resize_kwargs) -> Dict[str, tf.Tensor]:
  """An evaluation sample: the resized, padded crop + the original label."""
  example = tfrecord.decode_example(record)
  image, label = preprocessing.eval_resize_and_pad(
      tf.cast(example["image"], tf.float32), example["label"][..., None],
      label_pad_value=void_id, **resize_kwargs)
  sample = preprocessing.panoptic_targets(label[..., 0], **targets_kwargs)
  sample[common.IMAGE] = image
  sample[common.IMAGE_NAME] = example["name"]
  sample[common.GT_PANOPTIC_RAW] = example["label"]
  original_size = tf.stack([example["height"], example["width"]])
  sample[common.GT_SIZE_RAW] = original_size
  sample[common.RESIZED_SIZE] = preprocessing.eval_resized_size(
      original_size, **resize_kwargs)
  return sample


def _eval_padding_values(void_id: int) -> Dict[str, tf.Tensor]:
  """Only the raw panoptic map varies in size; it is padded with void."""
  return {
      common.GT_SEMANTIC_KEY: 0, common.GT_PANOPTIC_KEY: 0,
      common.GT_THING_ID_MASK_KEY: 0, common.GT_THING_ID_CLASS_KEY: 0,
      common.SEMANTIC_LOSS_WEIGHT_KEY: 0.0, common.IMAGE: 0.0,
      common.IMAGE_NAME: "", common.GT_PANOPTIC_RAW: void_id,
      common.GT_SIZE_RAW: 0, common.RESIZED_SIZE: 0,
  }
