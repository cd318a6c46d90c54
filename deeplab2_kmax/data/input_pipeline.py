"""tf.data input pipeline: TFRecords -> batched dicts of model inputs/targets.

The training augmentations of the paper (Sec. 4.1, "Training and testing",
after MaX-DeepLab / DeepLab2): samples go through `preprocessing.augment`
(resize, random scale, colour augmentation, crop/pad, flip), optionally
panoptic copy-paste with another sample of the stream, then
`preprocessing.panoptic_targets`.

Evaluation samples are only resized/padded to the crop and also carry the
unaugmented panoptic map at the original size (`GT_PANOPTIC_RAW`, padded per
batch with the void id), the original size (`GT_SIZE_RAW`) and the size after
resizing, before padding (`RESIZED_SIZE`): what the evaluator needs to map
predictions back to the original image. Keys are those of
`deeplab2_kmax.common`.

Every random draw is stateless, seeded by `(seed, sample index)`, so a run
with a seed is reproducible regardless of parallelism.
"""

import dataclasses
import random
from typing import Dict
from typing import Optional
from typing import Sequence
from typing import Tuple
from typing import Union

import tensorflow as tf

from deeplab2_kmax import common
from deeplab2_kmax.data import copy_paste as copy_paste_lib
from deeplab2_kmax.data import dataset_registry
from deeplab2_kmax.data import preprocessing
from deeplab2_kmax.data import record_check
from deeplab2_kmax.data import tfrecord

AUTOTUNE = tf.data.AUTOTUNE


# Record integrity lives in `record_check`; these names stay importable here.
list_files = record_check.list_files
CorruptRecordError = record_check.CorruptRecordError
scan_record_headers = record_check.scan_record_headers
scan_records = record_check.scan_records
validate_records = record_check.validate_records


def _records(files, shuffle: bool, repeat: bool, seed: int,
             shuffle_buffer: int, skip_corrupt: bool) -> tf.data.Dataset:
  ds = tf.data.Dataset.from_tensor_slices(list(files))
  if shuffle:
    ds = ds.shuffle(len(files), seed=seed)
  read = tf.data.TFRecordDataset
  if skip_corrupt:  # A shard ends at its first unreadable record.
    read = lambda path: tf.data.TFRecordDataset(path).ignore_errors()  # noqa: E731
  # Without shuffling, files are read one after another, in sorted order.
  ds = ds.interleave(read,
                     cycle_length=min(len(files), 8) if shuffle else 1,
                     num_parallel_calls=AUTOTUNE, deterministic=True)
  if repeat:
    ds = ds.repeat()
  if shuffle:
    ds = ds.shuffle(shuffle_buffer, seed=seed)
  return ds


@dataclasses.dataclass(frozen=True)
class PipelineOptions:
  """A dataset's batches: size, resizing, augmentation, targets, reading.

  The one home of the pipeline's defaults; `builders.dataset_options` fills
  it from a config's dataset options (DeepLab2's `DatasetOptions`, whose
  field names it follows). The augmentation fields only act on training
  datasets.

  Attributes:
    batch_size: Images per batch.
    crop_size: (height, width) of every output image.
    min_resize_value, max_resize_value: Resize-to-range bounds (short side /
      long-side cap); evaluation caps at the crop size by default.
    resize_factor: Resized sides become a multiple of it plus one.
    min_scale_factor, max_scale_factor, scale_factor_step: Random scale.
    autoaugment_policy: Colour augmentation policy name, or None.
    random_flip: Random horizontal flips.
    copy_paste: Panoptic copy-paste with another sample of the stream.
    copy_paste_scale: Multiplies the scale range of the pasted sample.
    copy_paste_thing_option, copy_paste_stuff_option, copy_paste_void_option:
      'all', 'random' or 'none' per group of source segments.
    max_thing_id: Length of the thing-id class list.
    small_instance_area, small_instance_weight: Semantic-loss up-weighting
      of thing instances below this many pixels (off by default).
    shuffle_buffer: Records in the shuffle buffer.
    skip_corrupt_records: Skip records that fail to decode, and the rest of
      a shard from a record that fails to read (`record_check`), instead of
      failing.
  """

  batch_size: int
  crop_size: Tuple[int, int]
  min_resize_value: preprocessing.Size = None
  max_resize_value: preprocessing.Size = None
  resize_factor: Optional[int] = None
  min_scale_factor: float = 1.0
  max_scale_factor: float = 1.0
  scale_factor_step: float = 0.0
  autoaugment_policy: Optional[str] = None
  random_flip: bool = True
  copy_paste: bool = False
  copy_paste_scale: float = 0.5
  copy_paste_thing_option: str = "all"
  copy_paste_stuff_option: str = "random"
  copy_paste_void_option: str = "none"
  max_thing_id: int = 128
  small_instance_area: int = 0
  small_instance_weight: float = 1.0
  shuffle_buffer: int = 256
  skip_corrupt_records: bool = False

  def __post_init__(self):
    crop_size = tuple(int(c) for c in self.crop_size)
    if len(crop_size) != 2 or min(crop_size) < 1:
      raise ValueError(
          f"crop_size must be (height, width) > 0, got {crop_size}.")
    object.__setattr__(self, "crop_size", crop_size)


class _Samples:
  """Decodes one record into a training or an evaluation sample."""

  def __init__(self, info: dataset_registry.DatasetInfo,
               options: PipelineOptions, seed: int):
    self._options = options
    self._seed = seed
    divisor = info.panoptic_label_divisor
    self.void_id = info.ignore_label * divisor
    self._targets_kwargs = dict(
        num_classes=info.num_classes, ignore_label=info.ignore_label,
        label_divisor=divisor, class_has_instances=info.class_has_instances,
        max_thing_id=options.max_thing_id,
        small_instance_area=options.small_instance_area,
        small_instance_weight=options.small_instance_weight)
    self._resize_kwargs = dict(
        crop_size=options.crop_size,
        min_resize_value=options.min_resize_value,
        max_resize_value=options.max_resize_value,
        resize_factor=options.resize_factor)
    self._paste_kwargs = dict(
        label_divisor=divisor, ignore_label=info.ignore_label,
        thing_class_ids=info.thing_class_ids,
        stuff_class_ids=info.stuff_class_ids,
        thing_option=options.copy_paste_thing_option,
        stuff_option=options.copy_paste_stuff_option,
        void_option=options.copy_paste_void_option)

  def _augment(self, record, seed, label_pad_value: int, scale: float = 1.0):
    """Decodes and augments one record; `scale` scales the scale range."""
    options = self._options
    example = tfrecord.decode_example(record)
    return preprocessing.augment(
        tf.cast(example["image"], tf.float32), example["label"][..., None],
        seed, label_pad_value=label_pad_value,
        min_scale_factor=options.min_scale_factor * scale,
        max_scale_factor=options.max_scale_factor * scale,
        scale_factor_step=options.scale_factor_step,
        autoaugment_policy=options.autoaugment_policy,
        random_flip=options.random_flip, **self._resize_kwargs)

  def train(self, index, record, source_record=None) -> Dict[str, tf.Tensor]:
    """An augmented sample, with `source_record` pasted onto it if given."""
    seeds = tf.random.experimental.stateless_split(
        tf.stack([tf.constant(self._seed, tf.int64), index]), 3)
    image, label = self._augment(record, seeds[0], self.void_id)
    if source_record is not None:
      padding_id = self.void_id + 1  # Tells padding from void in the source.
      source_image, source_label = self._augment(
          source_record, seeds[1], padding_id,
          scale=self._options.copy_paste_scale)
      image, label = copy_paste_lib.paste(
          image, label, source_image, source_label, seeds[2],
          padding_id=padding_id, **self._paste_kwargs)
    sample = preprocessing.panoptic_targets(label[..., 0],
                                            **self._targets_kwargs)
    sample[common.IMAGE] = image
    return sample

  def eval(self, record) -> Dict[str, tf.Tensor]:
    """The resized, padded crop + the original label and sizes."""
    example = tfrecord.decode_example(record)
    image, label = preprocessing.eval_resize_and_pad(
        tf.cast(example["image"], tf.float32), example["label"][..., None],
        label_pad_value=self.void_id, **self._resize_kwargs)
    sample = preprocessing.panoptic_targets(label[..., 0],
                                            **self._targets_kwargs)
    sample[common.IMAGE] = image
    sample[common.IMAGE_NAME] = example["name"]
    sample[common.GT_PANOPTIC_RAW] = example["label"]
    original_size = tf.stack([example["height"], example["width"]])
    sample[common.GT_SIZE_RAW] = original_size
    sample[common.RESIZED_SIZE] = preprocessing.eval_resized_size(
        original_size, **self._resize_kwargs)
    return sample


def build_dataset(
    dataset_info: dataset_registry.DatasetInfo,
    file_pattern: Union[str, Sequence[str]],
    options: PipelineOptions,
    *,
    is_training: bool,
    seed: Optional[int] = None,
    shuffle: Optional[bool] = None,
    repeat: Optional[bool] = None,
    drop_remainder: Optional[bool] = None,
    prefetch: bool = True,
) -> tf.data.Dataset:
  """Builds the batched dataset of dicts keyed by `deeplab2_kmax.common`.

  Args:
    dataset_info: The dataset's `DatasetInfo` (classes, ignore, divisor).
    file_pattern: Glob(s) of TFRecord files in the `tfrecord` format.
    options: Batch size, crop, resizing, augmentation, targets, reading.
    is_training: Augment and produce training samples, or evaluation ones.
    seed: Makes the pipeline deterministic; random when None.
    shuffle, repeat, drop_remainder: Default to `is_training`.
    prefetch: Whether to prefetch (AUTOTUNE).

  Returns:
    A `tf.data.Dataset` of dicts of batched tensors.
  """
  files = list_files(file_pattern)
  shuffle = is_training if shuffle is None else shuffle
  repeat = is_training if repeat is None else repeat
  drop_remainder = is_training if drop_remainder is None else drop_remainder
  seed = random.randrange(2**31) if seed is None else int(seed)
  samples = _Samples(dataset_info, options, seed)
  skip = options.skip_corrupt_records
  ds = _records(files, shuffle, repeat, seed, options.shuffle_buffer, skip)
  if is_training:
    if options.copy_paste:
      sources = _records(files, True, repeat, seed + 1,
                         options.shuffle_buffer, skip)
      ds = tf.data.Dataset.zip((ds, sources))
      ds = ds.enumerate().map(lambda i, rs: samples.train(i, rs[0], rs[1]),
                              num_parallel_calls=AUTOTUNE, deterministic=True)
    else:
      ds = ds.enumerate().map(samples.train, num_parallel_calls=AUTOTUNE,
                              deterministic=True)
    if skip:
      ds = ds.ignore_errors()
    ds = ds.batch(options.batch_size, drop_remainder=drop_remainder)
  else:
    ds = ds.map(samples.eval, num_parallel_calls=AUTOTUNE, deterministic=True)
    if skip:
      ds = ds.ignore_errors()
    ds = ds.padded_batch(
        options.batch_size, drop_remainder=drop_remainder,
        padding_values=_eval_padding_values(samples.void_id))
  return ds.prefetch(AUTOTUNE) if prefetch else ds


def _eval_padding_values(void_id: int) -> Dict[str, tf.Tensor]:
  """Only the raw panoptic map varies in size; it is padded with void."""
  return {
      common.GT_SEMANTIC_KEY: 0, common.GT_PANOPTIC_KEY: 0,
      common.GT_THING_ID_MASK_KEY: 0, common.GT_THING_ID_CLASS_KEY: 0,
      common.SEMANTIC_LOSS_WEIGHT_KEY: 0.0, common.IMAGE: 0.0,
      common.IMAGE_NAME: "", common.GT_PANOPTIC_RAW: void_id,
      common.GT_SIZE_RAW: 0, common.RESIZED_SIZE: 0,
  }
