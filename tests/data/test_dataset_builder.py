"""The builders' shared core: shards, stale layouts, refusing to overwrite."""

import os

import pytest
import tensorflow as tf

from deeplab2_kmax.data import dataset_builder


def _read(paths):
  return [[bytes(r) for r in tf.data.TFRecordDataset(p).as_numpy_iterator()]
          for p in paths]


def test_records_fill_the_shards_in_order(tmp_path):
  records = [f"record {i}".encode() for i in range(5)]
  paths = dataset_builder.write_split(iter(records), len(records),
                                      str(tmp_path / "out"), "val",
                                      num_shards=2, progress=False)
  assert [os.path.basename(p) for p in paths] == [
      "val-00000-of-00002.tfrecord", "val-00001-of-00002.tfrecord"]
  assert _read(paths) == [records[:3], records[3:]]
  assert sorted(os.listdir(tmp_path / "out")) == sorted(
      os.path.basename(p) for p in paths)


def test_no_more_shards_than_records(tmp_path):
  paths = dataset_builder.write_split(iter([b"a", b"b"]), 2, str(tmp_path),
                                      "train", num_shards=8, progress=False)
  assert _read(paths) == [[b"a"], [b"b"]]


def test_shards_of_another_layout_are_replaced(tmp_path):
  out = str(tmp_path)
  dataset_builder.write_split(iter([b"a", b"b", b"c"]), 3, out, "val", 3,
                              progress=False)
  dataset_builder.write_split(iter([b"x"]), 1, out, "train", 1,
                              progress=False)
  paths = dataset_builder.write_split(iter([b"d", b"e"]), 2, out, "val", 1,
                                      progress=False)
  assert _read(paths) == [[b"d", b"e"]]
  assert sorted(os.listdir(out)) == ["train-00000-of-00001.tfrecord",
                                     "val-00000-of-00001.tfrecord"]


def test_a_failed_build_leaves_no_shard(tmp_path):
  def records():
    yield b"a"
    raise ValueError("broken.png: corrupt")

  with pytest.raises(ValueError, match="broken.png"):
    dataset_builder.write_split(records(), 2, str(tmp_path), "val", 2,
                                progress=False)
  assert os.listdir(tmp_path) == []


def test_refusing_to_overwrite_names_the_first_output():
  dataset_builder.refuse_existing([], overwrite=False)
  dataset_builder.refuse_existing(["a.tfrecord"], overwrite=True)
  with pytest.raises(FileExistsError,
                     match=r"^a.tfrecord already exists; pass --overwrite"):
    dataset_builder.refuse_existing(["a.tfrecord"], overwrite=False)
  with pytest.raises(FileExistsError,
                     match=r"^a.tfrecord already exists \(and 2 more"):
    dataset_builder.refuse_existing(["a.tfrecord", "b", "c"],
                                    overwrite=False)
