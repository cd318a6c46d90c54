"""COCO-style panoptic annotations (JSON + RGB PNG) -> library TFRecords.

Shared by the COCO, Cityscapes and ADE20K builders, with their split loop
(`build_splits`) and command line (`define_flags`, `run_cli`); a registry
dataset in this layout is a split reader in a `Converter`. Writing goes
through `dataset_builder`, as for every builder. A panoptic PNG stores a
segment id per pixel as `R + 256 G + 256^2 B`; the JSON's `segments_info`
gives each id its category and crowd flag. The label written to the TFRecord
is `class * divisor + instance`, as DeepLab2 builds it: instances numbered
from 1 per class in `segments_info` order, unlabelled pixels void, crowd
segments either void (`treat_crowd_as_ignore`, DeepLab2's default) or kept
as their class with instance 0.
"""

import dataclasses
import io
import json
import os
from typing import Callable
from typing import Dict
from typing import Iterable
from typing import List
from typing import Mapping
from typing import Optional
from typing import Sequence
from typing import Tuple

from absl import flags
import numpy as np
from PIL import Image

from deeplab2_kmax.data import dataset_builder
from deeplab2_kmax.data import dataset_registry
from deeplab2_kmax.data import tfrecord

# The flags defined here belong to the builder that runs, and its --help.
flags.disclaim_key_flags()

@dataclasses.dataclass(frozen=True)
class Item:
  """One image to convert."""
  name: str  # Stored as the image name (file prefix).
  image_path: str
  label_path: str
  segments: Sequence[Mapping]


def load_json(path: str) -> Dict:
  if not os.path.isfile(path):
    raise FileNotFoundError(f"Annotation file not found: {path}")
  try:
    with open(path) as f:
      data = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"Corrupt annotation file {path}: {e}") from e
  for key in ("annotations", "categories"):
    if key not in data:
      raise ValueError(f"Annotation file {path} has no {key!r} field.")
  return data


def read_image(path: str, mode: Optional[str] = None):
  """Returns (file bytes, PIL format, decoded image); errors name the file."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"Image file not found: {path}")
  with open(path, "rb") as f:
    data = f.read()
  try:
    image = Image.open(io.BytesIO(data))
    image.load()
  except (OSError, SyntaxError, ValueError) as e:
    raise ValueError(f"Corrupt or unreadable image file {path}: {e}") from e
  if mode is not None and image.mode != mode:
    raise ValueError(f"Expected a {mode} image in {path}, got {image.mode}.")
  return data, image.format, image


def rgb_to_id(rgb: np.ndarray) -> np.ndarray:
  rgb = rgb.astype(np.int64)
  return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


def panoptic_label(segment_ids: np.ndarray, segments: Sequence[Mapping],
                   class_map: Mapping[int, int],
                   info: dataset_registry.DatasetInfo,
                   treat_crowd_as_ignore: bool, source: str) -> np.ndarray:
  """Builds the int32 `class * divisor + instance` map of one image."""
  divisor = info.panoptic_label_divisor
  semantic = np.full(segment_ids.shape, info.ignore_label, np.int64)
  instance = np.zeros(segment_ids.shape, np.int64)
  counts = {}
  for segment in segments:
    pixels = segment_ids == segment["id"]
    area = int(pixels.sum())
    if "area" in segment and area != segment["area"]:
      raise ValueError(f"{source}: segment {segment['id']} has {area} pixels, "
                       f"the JSON says {segment['area']}.")
    if segment["category_id"] not in class_map:
      raise ValueError(f"{source}: unknown category_id "
                       f"{segment['category_id']}.")
    class_id = class_map[segment["category_id"]]
    semantic[pixels] = class_id
    crowd = bool(segment.get("iscrowd", 0))
    if not info.class_has_instances[class_id]:
      if crowd:
        raise ValueError(f"{source}: stuff segment {segment['id']} is crowd.")
      continue
    if crowd:
      if treat_crowd_as_ignore:
        semantic[pixels] = info.ignore_label
      continue
    counts[class_id] = counts.get(class_id, 0) + 1
    if counts[class_id] >= divisor:
      raise ValueError(f"{source}: more than {divisor - 1} instances of "
                       f"class {class_id}.")
    instance[pixels] = counts[class_id]
  return (semantic * divisor + instance).astype(np.int32)


def convert(items: Sequence[Item], output_dir: str, split: str,
            num_shards: int, class_map: Mapping[int, int],
            info: dataset_registry.DatasetInfo,
            treat_crowd_as_ignore: bool = True, overwrite: bool = False,
            progress: bool = True) -> List[str]:
  """Writes the items as `{split}-*-of-*.tfrecord`; returns the shard paths."""
  if not items:
    raise ValueError(f"No annotated images found for split {split!r}.")
  dataset_builder.refuse_existing(
      tfrecord.existing_shards(output_dir, split), overwrite)

  def records() -> Iterable[bytes]:
    for item in items:
      image_bytes, image_format, image = read_image(item.image_path)
      _, _, label_image = read_image(item.label_path, mode="RGB")
      if label_image.size != image.size:
        raise ValueError(f"{item.label_path} is {label_image.size}, its image "
                         f"{item.image_path} is {image.size}.")
      label = panoptic_label(rgb_to_id(np.asarray(label_image)),
                             item.segments, class_map, info,
                             treat_crowd_as_ignore, item.label_path)
      yield tfrecord.encode_example(
          image_bytes, image_format.lower(), item.name, image.size[1],
          image.size[0], label)

  return dataset_builder.write_split(records(), len(items), output_dir, split,
                                    num_shards, progress)


# (dataset root, split) -> (items, source category id -> class id).
SplitReader = Callable[[str, str], Tuple[List[Item], Dict[int, int]]]


def build_splits(read_split: SplitReader, root: str, root_flag: str,
                 info: dataset_registry.DatasetInfo, output_dir: str,
                 splits: Sequence[str], num_shards: int,
                 treat_crowd_as_ignore: bool = True, overwrite: bool = False,
                 progress: bool = True) -> Dict[str, List[str]]:
  """Converts each split read by `read_split`; returns its TFRecord paths."""
  if not os.path.isdir(root):
    raise FileNotFoundError(f"--{root_flag} {root!r} is not a folder.")
  outputs = {}
  for split in splits:
    items, class_map = read_split(root, split)
    outputs[split] = convert(items, output_dir, split, num_shards, class_map,
                             info, treat_crowd_as_ignore, overwrite, progress)
  return outputs


def define_flags(root_flag: str, root_help: str, num_shards: int) -> None:
  """A converter's flags (`dataset_builder.define_output_flags` and the
  dataset root, splits and crowd handling), defined only when run."""
  flags.DEFINE_string(root_flag, None, root_help)
  flags.DEFINE_list("splits", ["train", "val"], "Splits to convert.")
  flags.DEFINE_boolean(
      "treat_crowd_as_ignore", True,
      "Label crowd pixels void (else: their class with instance 0).")
  dataset_builder.define_output_flags(num_shards)
  flags.mark_flag_as_required(root_flag)


def run_cli(build: Callable[..., Dict[str, List[str]]],
            root_flag: str) -> None:
  """Runs `build(root, output_dir, splits, num_shards, crowd, overwrite)`
  from the flags of `define_flags` (`dataset_builder.run_cli`)."""
  f = flags.FLAGS
  dataset_builder.run_cli(lambda: build(
      f[root_flag].value, f.output_dir, f.splits, f.num_shards,
      f.treat_crowd_as_ignore, f.overwrite))


@dataclasses.dataclass(frozen=True)
class Converter:
  """A registry dataset in the COCO panoptic layout, and its command line.

  Attributes:
    read_split: (root, split) -> (items, source category id -> class id).
    dataset: Registry name of the dataset the records belong to.
    root_flag: Name of the dataset-root flag, e.g. "cityscapes_root".
    root_help: Its help text.
    num_shards: Default number of shards per split.
  """

  read_split: SplitReader
  dataset: str
  root_flag: str
  root_help: str
  num_shards: int

  def build(self, root: str, output_dir: str,
            splits: Sequence[str] = ("train", "val"),
            num_shards: Optional[int] = None,
            treat_crowd_as_ignore: bool = True, overwrite: bool = False,
            progress: bool = True) -> Dict[str, List[str]]:
    """Converts each split; returns its TFRecord paths."""
    return build_splits(
        self.read_split, root, self.root_flag,
        dataset_registry.get(self.dataset), output_dir, splits,
        self.num_shards if num_shards is None else num_shards,
        treat_crowd_as_ignore, overwrite, progress)

  def main(self) -> None:
    """Runs the converter as a program."""
    define_flags(self.root_flag, self.root_help, self.num_shards)
    run_cli(self.build, self.root_flag)
