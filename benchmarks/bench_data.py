r"""Training input-pipeline throughput (images/s), SPEC §5 / §10.

  python -m benchmarks.bench_data [--num_images=32] [--batches=8]

Rows: the COCO recipe (long side resized to 1281, random scale 0.3-1.7 step
0.1, 1281x1281 crop, simple-classification AutoAugment, panoptic copy-paste)
on synthetic images generated at 640 px (then upscaled by the resize), and
the demo recipe (128 px synthetic images, 128x128 crop). Not a test.
"""

import argparse
import os
import tempfile
import time

from benchmarks import harness
from deeplab2_kmax.data import build_synthetic_data
from deeplab2_kmax.data import dataset_registry
from deeplab2_kmax.data import input_pipeline

RECIPES = {
    "coco_1281": dict(image_size=640, batch_size=4, crop_size=(1281, 1281),
                      min_resize_value=1281, max_resize_value=1281,
                      min_scale_factor=0.3, max_scale_factor=1.7,
                      scale_factor_step=0.1),
    "demo_128": dict(image_size=128, batch_size=16, crop_size=(128, 128),
                     min_scale_factor=0.5, max_scale_factor=1.5,
                     scale_factor_step=0.25),
}


def measure(name: str, recipe: dict, num_images: int, batches: int,
            workdir: str) -> dict:
  recipe = dict(recipe)
  image_size = recipe.pop("image_size")
  out = os.path.join(workdir, name)
  build_synthetic_data.build(out, num_train=num_images, num_val=1, seed=0,
                             num_shards=2, image_size=image_size,
                             progress=False)
  ds = input_pipeline.build_dataset(
      dataset_registry.get("synthetic_panoptic"),
      os.path.join(out, "train-*"),
      input_pipeline.PipelineOptions(
          autoaugment_policy="simple_classification", copy_paste=True,
          **recipe),
      is_training=True, seed=0)
  iterator = iter(ds)
  for _ in range(2):  # Warm-up: tracing and the first shuffle buffer.
    next(iterator)
  durations = []
  for _ in range(batches):
    start = time.perf_counter()
    next(iterator)
    durations.append(time.perf_counter() - start)
  total = sum(durations)
  return {"recipe": name, "crop": "x".join(map(str, recipe["crop_size"])),
          "batch": recipe["batch_size"],
          "images/s": f"{recipe['batch_size'] * batches / total:.1f}",
          "ms/batch (median)": f"{1e3 * sorted(durations)[batches // 2]:.0f}",
          "cpus": os.cpu_count()}


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--num_images", type=int, default=32)
  parser.add_argument("--batches", type=int, default=8)
  parser.add_argument("--recipes", default=",".join(RECIPES))
  args = parser.parse_args()
  rows = []
  with tempfile.TemporaryDirectory() as workdir:
    for name in args.recipes.split(","):
      if name not in RECIPES:
        raise SystemExit(f"--recipes: unknown {name!r}; known: "
                         f"{', '.join(RECIPES)}")
      rows.append(measure(name, RECIPES[name], args.num_images, args.batches,
                          workdir))
  harness.print_table(rows, list(rows[0]))


if __name__ == "__main__":
  main()
