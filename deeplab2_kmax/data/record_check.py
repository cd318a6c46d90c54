"""TFRecord integrity: find a corrupt shard by name, record and byte offset.

tf.data reports a truncated or overwritten TFRecord without its file name,
after the model is built. These checks name it up front:
- `scan_records`: a fast walk of every record header (length CRC-32C, the
  record fits in the file) plus the first record's data CRC.
- `validate_records`: reads and decodes every record (the full check).
- `find_corrupt_records`: the full check without raising, for
  `skip_corrupt_records`: per shard, the first record tf.data cannot read or
  decode and how many records are lost from there on.

A TFRecord file is a sequence of records framed as: 8-byte little-endian
length, 4-byte masked CRC-32C of the length, the data, 4-byte masked CRC-32C
of the data.
"""

import dataclasses
import os
import re
import struct
from typing import List
from typing import Sequence
from typing import Tuple
from typing import Union

from absl import logging
import tensorflow as tf
import tqdm

from deeplab2_kmax.data import tfrecord


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


@dataclasses.dataclass(frozen=True)
class _Walk:
  """The record offsets framed before the first broken header, if any."""
  offsets: List[int]
  size: int
  error: str = ""  # Why framing stopped at `error_offset`; "" if it did not.
  error_offset: int = 0


def _walk_headers(path: str) -> _Walk:
  """Follows the record headers of one file without reading the data."""
  offsets = []
  local = "://" not in path
  with (open(path, "rb") if local else tf.io.gfile.GFile(path, "rb")) as f:
    size = os.fstat(f.fileno()).st_size if local else f.size()
    offset = 0
    while offset < size:
      header = f.read(12)
      if len(header) < 12:
        return _Walk(offsets, size, f"truncated header ({size - offset} "
                     "bytes left)", offset)
      length, crc = struct.unpack("<QI", header)
      if _masked_crc32c(header[:8]) != crc:
        return _Walk(offsets, size, "header checksum mismatch (not a "
                     "TFRecord, or overwritten bytes)", offset)
      end = offset + 12 + length + 4
      if end > size:
        return _Walk(offsets, size, f"the record needs {length + 16} bytes, "
                     f"{size - offset} are left (truncated file)", offset)
      offsets.append(offset)
      offset = end
      f.seek(offset)
  return _Walk(offsets, size)


def scan_record_headers(path: str) -> List[int]:
  """Walks the record headers of one file; returns each record's offset.

  Checks every length's CRC and that each record fits in the file (what a
  truncated or overwritten shard breaks) without reading the data, then the
  first record's data CRC. Raises CorruptRecordError naming the file, the
  record and its byte offset.
  """
  walk = _walk_headers(path)
  if walk.error:
    raise CorruptRecordError(
        f"Corrupt TFRecord file {path}: record {len(walk.offsets)} at byte "
        f"offset {walk.error_offset}: {walk.error}")
  try:
    for _ in tf.data.TFRecordDataset(path).take(1):
      pass
  except tf.errors.DataLossError as e:
    raise CorruptRecordError(f"Corrupt TFRecord file {path}: record 0 at "
                             f"byte offset 0: {e.message}") from None
  return walk.offsets


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
    num_records, problems = _shard_problems(path)
    if problems:
      first = problems[0]
      raise CorruptRecordError(
          f"Corrupt TFRecord file {path}: record {first.record} at byte "
          f"offset {first.offset}: {first.reason}")
    total += num_records
  return total


@dataclasses.dataclass(frozen=True)
class CorruptRecord:
  """A record tf.data cannot use, and what `skip_corrupt_records` loses.

  A record that reads but does not decode is skipped alone. tf.data cannot
  read past a record whose bytes are damaged, so the rest of that shard is
  skipped: `records_lost` framed records (the bad one included) and, after
  a broken header, `unframed_bytes` that no longer parse as records.
  """
  path: str
  record: int
  offset: int
  reason: str
  records_lost: int
  unframed_bytes: int = 0

  def describe(self) -> str:
    tail = (f" and {self.unframed_bytes} unframed bytes"
            if self.unframed_bytes else "")
    return (f"{self.path}: record {self.record} at byte offset "
            f"{self.offset}: {self.reason}; skipping {self.records_lost} "
            f"record(s){tail}")


def _reason(error: tf.errors.OpError) -> str:
  """TensorFlow's message without its op and function names."""
  message = error.message.splitlines()[0]
  message = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", message)
  return re.sub(r"\s*\[Op:.*$", "", message)


def _shard_problems(path: str) -> Tuple[int, List[CorruptRecord]]:
  """(framed records, every record tf.data cannot read or decode) of a shard."""
  walk = _walk_headers(path)
  problems = []
  index = 0
  try:
    for record in tf.data.TFRecordDataset(path):
      try:
        tfrecord.decode_example(record)
      except tf.errors.InvalidArgumentError as e:
        problems.append(CorruptRecord(path, index, walk.offsets[index],
                                      _reason(e), 1))
      index += 1
  except tf.errors.DataLossError as e:
    # At a broken header the walk says more than tf.data does.
    reason = walk.error if index >= len(walk.offsets) else _reason(e)
  else:
    reason = walk.error
  if reason:
    offset = (walk.offsets[index] if index < len(walk.offsets)
              else walk.error_offset)
    problems.append(CorruptRecord(
        path, index, offset, reason, len(walk.offsets) - index,
        walk.size - walk.error_offset if walk.error else 0))
  return len(walk.offsets), problems


def find_corrupt_records(file_pattern: Union[str, Sequence[str]],
                         progress: bool = True) -> List[CorruptRecord]:
  """Reads and decodes every record; lists those tf.data cannot use."""
  found = []
  for path in tqdm.tqdm(list_files(file_pattern), desc="checking records",
                        unit="file", disable=not progress):
    for problem in _shard_problems(path)[1]:
      logging.warning("Corrupt TFRecord %s", problem.describe())
      found.append(problem)
  return found
