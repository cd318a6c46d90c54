"""COCO-style panoptic annotations (JSON + RGB PNG) -> library TFRecords.

Shared by the COCO, Cityscapes and ADE20K builders (SPEC §5), with their
split loop (`build_splits`) and command line (`define_flags`, `run_cli`). A panoptic PNG stores a
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

from absl import app
from absl import flags
import numpy as np
from PIL import Image
import tqdm

from deeplab2_kmax.data import dataset_registry
from deeplab2_kmax.data import tfrecord


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
  paths = tfrecord.shard_paths(output_dir, split,
                               max(1, min(num_shards, len(items))))
  existing = tfrecord.existing_shards(output_dir, split)
  if existing and not overwrite:
    raise FileExistsError(f"{existing[0]} already exists; pass --overwrite "
                          "to replace it.")
  os.makedirs(output_dir, exist_ok=True)

  def records() -> Iterable[bytes]:
    for item in tqdm.tqdm(items, desc=split, disable=not progress):
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

  tfrecord.write_sharded(records(), paths, len(items))
  for stale in set(existing) - set(paths):  # Shards of an older layout.
    os.remove(stale)
  return list(paths)


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
  """A builder's flags; defined only when run as a program (they share
  names across builders)."""
  flags.DEFINE_string(root_flag, None, root_help)
  flags.DEFINE_string("output_dir", None, "Output folder.")
  flags.DEFINE_list("splits", ["train", "val"], "Splits to convert.")
  flags.DEFINE_integer("num_shards", num_shards, "Shards per split.")
  flags.DEFINE_boolean(
      "treat_crowd_as_ignore", True,
      "Label crowd pixels void (else: their class with instance 0).")
  flags.DEFINE_boolean("overwrite", False, "Replace existing outputs.")
  flags.mark_flags_as_required([root_flag, "output_dir"])


def run_cli(build: Callable[..., Dict[str, List[str]]],
            root_flag: str) -> None:
  """Runs `build(root, output_dir, splits, num_shards, crowd, overwrite)`
  from the flags of `define_flags`; input errors become usage errors."""

  def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
      raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    f = flags.FLAGS
    try:
      build(f[root_flag].value, f.output_dir, f.splits, f.num_shards,
            f.treat_crowd_as_ignore, f.overwrite)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
      raise app.UsageError(str(e)) from e

  app.run(main)
