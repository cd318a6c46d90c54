"""Corrupt data is named: file, record and byte offset, before the model."""

import os
import sys

from google.protobuf import text_format
import numpy as np
import pytest
import tensorflow as tf

from deeplab2_kmax import config_loader
from deeplab2_kmax.data import dataset_registry
from deeplab2_kmax.data import input_pipeline
from deeplab2_kmax.tools import check_config
from deeplab2_kmax.trainer import train_lib

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "trainer"))
import trainer_test_utils as utils  # noqa: E402


@pytest.fixture(scope="module")
def records(tmp_path_factory):
  """Serialized examples of the tiny synthetic training set."""
  data_dir = utils.tiny_data(str(tmp_path_factory.mktemp("synthetic")),
                             num_train=4, num_val=2)
  files = input_pipeline.list_files(os.path.join(data_dir, "train-*"))
  return [r.numpy() for r in tf.data.TFRecordDataset(list(files))]


def _shard(path, records):
  """Writes a real shard; returns each record's byte offset."""
  with tf.io.TFRecordWriter(str(path)) as writer:
    for record in records:
      writer.write(record)
  # Framing: 8-byte length, 4-byte length CRC, data, 4-byte data CRC.
  offsets, offset = [], 0
  for record in records:
    offsets.append(offset)
    offset += 8 + 4 + len(record) + 4
  assert os.path.getsize(path) == offset
  return offsets


def _overwrite(path, offset, data):
  with open(path, "r+b") as f:
    f.seek(offset)
    f.write(data)


def test_truncated_shard_named_with_record_offset(tmp_path, records):
  path = tmp_path / "train-00000-of-00001.tfrecord"
  offsets = _shard(path, records)
  assert input_pipeline.scan_records(str(path)) == len(records)
  os.truncate(path, offsets[2] + 40)  # Inside record 2.
  with pytest.raises(input_pipeline.CorruptRecordError,
                     match=f"{path}: record 2 at byte offset {offsets[2]}: "
                     ".*truncated"):
    input_pipeline.scan_records(str(tmp_path / "train-*"))


def test_random_bytes_named_at_offset_zero(tmp_path):
  path = tmp_path / "noise.tfrecord"
  path.write_bytes(os.urandom(5000))
  with pytest.raises(input_pipeline.CorruptRecordError,
                     match=f"{path}: record 0 at byte offset 0: header"):
    input_pipeline.scan_records(str(path))


def test_bad_data_bytes_found_by_the_full_check(tmp_path, records):
  path = tmp_path / "train.tfrecord"
  offsets = _shard(path, records)
  # A byte inside record 1's data: headers stay sound, the data CRC fails.
  _overwrite(path, offsets[1] + 12 + 100, b"\xff\x00\xff")
  assert input_pipeline.scan_records(str(path)) == len(records)  # Fast scan.
  with pytest.raises(input_pipeline.CorruptRecordError,
                     match=f"{path}: record 1 at byte offset {offsets[1]}"):
    input_pipeline.validate_records(str(path))
  # check_config --check_data runs the full check and names the field.
  config = utils.tiny_config(str(tmp_path))
  del config.train_dataset_options.file_pattern[:]
  config.train_dataset_options.file_pattern.append(str(path))
  with pytest.raises(config_loader.ConfigError,
                     match=f"train_dataset_options.file_pattern: .*{path}: "
                     f"record 1 at byte offset {offsets[1]}"):
    check_config.check_data(config)


def test_check_config_cli_flag_reads_every_record(tmp_path, records, capsys):
  config = utils.tiny_config(str(tmp_path))
  for options, name in ((config.train_dataset_options, "train"),
                        (config.eval_dataset_options, "val")):
    _shard(tmp_path / f"{name}.tfrecord", records)
    del options.file_pattern[:]
    options.file_pattern.append(str(tmp_path / f"{name}.tfrecord"))
  config_path = tmp_path / "config.textproto"
  config_path.write_text(text_format.MessageToString(config))
  assert check_config.check_files([str(config_path)], {}, with_data=True) == []
  assert f"train_dataset_options={len(records)}" in capsys.readouterr().out


class _Built(Exception):
  """Raised by a stand-in build_model: the run got as far as the model."""


def _build_model_raises(*unused_args, **unused_kwargs):
  raise _Built()


def test_training_refuses_a_truncated_shard_before_the_model(
    tmp_path, records, monkeypatch):
  path = tmp_path / "train-00000-of-00001.tfrecord"
  offsets = _shard(path, records)
  os.truncate(path, offsets[-1] + 5)
  config = utils.tiny_config(str(tmp_path))
  monkeypatch.setattr(train_lib.builders, "build_model", _build_model_raises)
  with pytest.raises(train_lib.ExperimentError,
                     match=f"train_dataset_options.file_pattern: .*{path}: "
                     f"record {len(records) - 1} at byte offset "
                     f"{offsets[-1]}"):
    train_lib.run_experiment(config, str(tmp_path / "model"), "train")


def test_read_error_during_training_names_the_file(tmp_path, records,
                                                   monkeypatch):
  # Record 1's data is corrupt: the fast scan passes, tf.data fails later.
  path = tmp_path / "train-00000-of-00001.tfrecord"
  offsets = _shard(path, records)
  _overwrite(path, offsets[1] + 12 + 100, b"\xff\x00\xff")
  config = utils.tiny_config(str(tmp_path))

  def read_everything(*unused_args):
    for _ in tf.data.TFRecordDataset(str(path)):
      pass

  monkeypatch.setattr(train_lib, "_run", read_everything)
  with pytest.raises(train_lib.ExperimentError,
                     match=f"{path}: record 1 at byte offset {offsets[1]}"):
    train_lib.run_experiment(config, str(tmp_path / "model"), "train")


def _damaged_shards(tmp_path, records):
  """Shard A: record 1 is not an Example, record 3's bytes are damaged.

  Shard B is truncated inside its record 2. Returns the shards' paths, the
  expected problems (path, record, offset, records lost, unframed bytes)
  and the records tf.data can still use, in order.
  """
  a, b = tmp_path / "train-a.tfrecord", tmp_path / "train-b.tfrecord"
  rows = [records[0], b"not an Example", records[1], records[2], records[3]]
  offsets_a = _shard(a, rows)
  _overwrite(a, offsets_a[3] + 12 + 100, b"\xff\x00\xff")
  offsets_b = _shard(b, records[:3])
  os.truncate(b, offsets_b[2] + 40)
  expected = [(str(a), 1, offsets_a[1], 1, 0),
              (str(a), 3, offsets_a[3], 2, 0),
              (str(b), 2, offsets_b[2], 0, 40)]
  return [str(a), str(b)], expected, [records[0], records[1], records[0],
                                      records[1]]


def test_every_unusable_record_is_found_with_what_skipping_loses(
    tmp_path, records):
  paths, expected, _ = _damaged_shards(tmp_path, records)
  found = input_pipeline.record_check.find_corrupt_records(paths,
                                                          progress=False)
  assert [(p.path, p.record, p.offset, p.records_lost, p.unframed_bytes)
          for p in found] == expected
  assert "Could not parse example" in found[0].describe()
  assert "function_node" not in found[0].describe() + found[1].describe()
  assert f"{paths[1]}: record 2 at byte offset" in found[2].describe()


def _eval_images(paths, config, skip):
  options = config.eval_dataset_options
  info = dataset_registry.get(options.dataset)
  ds = input_pipeline.build_dataset(
      info, paths,
      input_pipeline.PipelineOptions(batch_size=1,
                                     crop_size=options.crop_size,
                                     skip_corrupt_records=skip),
      is_training=False, prefetch=False)
  return [batch["image"].numpy() for batch in ds]


def test_the_pipeline_skips_exactly_what_the_check_reported(tmp_path,
                                                            records):
  paths, _, usable = _damaged_shards(tmp_path, records)
  config = utils.tiny_config(str(tmp_path))
  clean = tmp_path / "clean.tfrecord"
  _shard(clean, usable)
  got = _eval_images(paths, config, skip=True)
  want = _eval_images([str(clean)], config, skip=False)
  assert len(got) == len(want) == 4
  for g, w in zip(got, want):
    np.testing.assert_array_equal(g, w)
  with pytest.raises(tf.errors.OpError):
    _eval_images(paths, config, skip=False)


def test_training_with_skip_counts_the_skipped_records(tmp_path, records,
                                                       monkeypatch):
  paths, expected, _ = _damaged_shards(tmp_path, records)
  config = utils.tiny_config(str(tmp_path))
  options = config.train_dataset_options
  del options.file_pattern[:]
  options.file_pattern.extend(paths)
  options.skip_corrupt_records = True
  monkeypatch.setattr(train_lib, "_run", lambda *unused: {})
  model_dir = tmp_path / "model"
  train_lib.run_experiment(config, str(model_dir), "train")
  values = [
      tf.make_ndarray(value.tensor)
      for event_file in tf.io.gfile.glob(str(model_dir / "train" / "events*"))
      for event in tf.compat.v1.train.summary_iterator(event_file)
      for value in event.summary.value
      if value.tag == train_lib.CORRUPT_SUMMARY]
  assert values == [sum(problem[3] for problem in expected)]


def test_a_record_that_does_not_decode_during_training_is_named(
    tmp_path, records, monkeypatch):
  path = tmp_path / "train-00000-of-00001.tfrecord"
  offsets = _shard(path, [records[0], b"not an Example"])
  config = utils.tiny_config(str(tmp_path))
  del config.train_dataset_options.file_pattern[:]
  config.train_dataset_options.file_pattern.append(str(path))

  def take_batches(unused_controller, unused_manager, config, *unused):
    dataset = train_lib.builders.build_dataset(config, training=True)
    iterator = iter(dataset)
    tf.function(lambda: next(iterator))()

  monkeypatch.setattr(train_lib, "_run", take_batches)
  with pytest.raises(train_lib.ExperimentError,
                     match=f"{path}: record 1 at byte offset {offsets[1]}"):
    train_lib.run_experiment(config, str(tmp_path / "model"), "train")
