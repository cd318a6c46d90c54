"""Corrupt data is named: file, record and byte offset, before the model."""

import os
import sys

from google.protobuf import text_format
import pytest
import tensorflow as tf

from deeplab2_kmax import config_loader
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
