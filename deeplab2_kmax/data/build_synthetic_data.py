r"""Writes the synthetic panoptic dataset as TFRecords + COCO GT.

  python -m deeplab2_kmax.data.build_synthetic_data --output_dir=DIR \
      --num_train=2000 --num_val=200 --seed=0

Output, per split: `{split}-0000i-of-0000K.tfrecord` (the library format,
same as COCO) and the ground truth in COCO panoptic format, so panopticapi's
`pq_compute` can evaluate against it: `panoptic_{split}.json` and the folder
`panoptic_{split}/` of RGB-encoded PNGs (id = R + 256 G + 256^2 B; the segment
id is the panoptic id `class * 256 + instance`, 0 is void).
"""

import json
import os
import shutil
from typing import Dict

from absl import flags
import numpy as np
from PIL import Image

from deeplab2_kmax.data import dataset_builder
from deeplab2_kmax.data import synthetic
from deeplab2_kmax.data import tfrecord


def coco_categories() -> list:
  """COCO-panoptic `categories` of the synthetic dataset (void excluded)."""
  info = synthetic.INFO
  return [{"id": i, "name": info.class_names[i],
           "supercategory": "thing" if info.class_has_instances[i] else "stuff",
           "isthing": int(info.class_has_instances[i]),
           "color": list(info.colormap[i])}
          for i in range(info.num_classes) if i != info.ignore_label]


def panoptic_to_rgb(ids: np.ndarray) -> np.ndarray:
  """COCO panoptic PNG encoding of segment ids [H, W] -> uint8 [H, W, 3]."""
  ids = ids.astype(np.int64)
  return np.stack([ids % 256, ids // 256 % 256, ids // 65536 % 256],
                  axis=-1).astype(np.uint8)


def segments_info(panoptic: np.ndarray) -> list:
  """COCO `segments_info` for a panoptic map (segment id = panoptic id)."""
  out = []
  for seg_id, class_id, area in synthetic.segments(panoptic):
    rows, cols = np.nonzero(panoptic == seg_id)
    bbox = [int(cols.min()), int(rows.min()),
            int(cols.max() - cols.min() + 1), int(rows.max() - rows.min() + 1)]
    out.append({"id": seg_id, "category_id": class_id, "area": area,
                "bbox": bbox, "iscrowd": 0})
  return out


def split_outputs(output_dir: str, split: str, num_shards: int) -> Dict:
  return {
      "shards": tfrecord.shard_paths(output_dir, split, num_shards),
      "json": os.path.join(output_dir, f"panoptic_{split}.json"),
      "png_dir": os.path.join(output_dir, f"panoptic_{split}"),
  }


def build_split(output_dir: str, split: str, num_images: int, seed: int,
                num_shards: int, image_size: int = synthetic.IMAGE_SIZE,
                progress: bool = True) -> Dict:
  """Generates and writes one split; returns its output paths."""
  outputs = split_outputs(output_dir, split, num_shards)
  os.makedirs(outputs["png_dir"], exist_ok=True)
  images, annotations = [], []

  def records():
    for index in range(num_images):
      sample = synthetic.generate(seed, split, index, image_size)
      name = f"{split}_{index:06d}"
      Image.fromarray(panoptic_to_rgb(sample.panoptic)).save(
          os.path.join(outputs["png_dir"], name + ".png"))
      images.append({"id": name, "file_name": name + ".png",
                     "height": image_size, "width": image_size})
      annotations.append({"image_id": name, "file_name": name + ".png",
                          "segments_info": segments_info(sample.panoptic)})
      yield tfrecord.encode_example(
          tfrecord.encode_png(sample.image), "png", name, image_size,
          image_size, sample.panoptic)

  outputs["shards"] = dataset_builder.write_split(
      records(), num_images, output_dir, split, num_shards, progress)
  with open(outputs["json"], "w") as f:
    json.dump({"images": images, "annotations": annotations,
               "categories": coco_categories()}, f)
  return outputs


def build(output_dir: str, num_train: int, num_val: int, seed: int,
          num_shards: int = 4, overwrite: bool = False,
          image_size: int = synthetic.IMAGE_SIZE,
          progress: bool = True) -> Dict[str, Dict]:
  """Builds both splits; refuses to overwrite existing outputs unless asked."""
  for name, value in (("num_train", num_train), ("num_val", num_val),
                      ("num_shards", num_shards), ("image_size", image_size)):
    if value < 1:
      raise ValueError(f"--{name} must be >= 1, got {value}.")
  plan = {"train": num_train, "val": num_val}
  existing = {s: tfrecord.existing_shards(output_dir, s) +
                 [p for p in (split_outputs(output_dir, s, 1)["json"],
                              split_outputs(output_dir, s, 1)["png_dir"])
                  if os.path.exists(p)] for s in plan}
  found = [p for paths in existing.values() for p in paths]
  dataset_builder.refuse_existing(found, overwrite)
  for path in found:
    if os.path.isdir(path):
      shutil.rmtree(path)
    else:
      os.remove(path)
  os.makedirs(output_dir, exist_ok=True)
  return {split: build_split(output_dir, split, n, seed, min(num_shards, n),
                             image_size, progress)
          for split, n in plan.items()}


def _define_flags() -> None:
  """CLI flags; defined only when run as a program (modules share names)."""
  dataset_builder.define_output_flags(num_shards=4)
  flags.DEFINE_integer("num_train", 2000, "Training images.")
  flags.DEFINE_integer("num_val", 200, "Validation images.")
  flags.DEFINE_integer("seed", 0, "Seed; train and val use distinct streams.")
  flags.DEFINE_integer("image_size", synthetic.IMAGE_SIZE,
                       "Image side in pixels.")


def _build_from_flags() -> Dict[str, Dict]:
  f = flags.FLAGS
  return build(f.output_dir, f.num_train, f.num_val, f.seed, f.num_shards,
               f.overwrite, f.image_size)


if __name__ == "__main__":
  _define_flags()
  dataset_builder.run_cli(_build_from_flags)
