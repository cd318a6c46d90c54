r"""bfloat16 against float32 inference on the trained demo model (not a test).

  python -m benchmarks.bfloat16_demo [--num_images=200] [--batch_size=10]

Loads the shipped demo checkpoint (`configs/synthetic/checkpoint/kmax_demo`)
into a float32 model and a bfloat16 one (`precision.build_model`, as the
evaluator builds it), runs both on the demo's held-out images (seed 0, the
split the demo evaluates on) with the demo config's post-processing, and
prints PQ / PQ^Th / PQ^St of each, the share of pixels whose panoptic label
agrees and the share in the same segment up to instance-id renaming
(`evaluation.map_agreement`), and the time per batch (the two precisions
alternated, median over batches after one warm-up batch each). On a CPU
without native bfloat16 it says so and stops.
"""

import argparse
import time

import numpy as np
import tensorflow as tf

from benchmarks import export_formats
from benchmarks import harness
from deeplab2_kmax import builders
from deeplab2_kmax import common
from deeplab2_kmax import precision
from deeplab2_kmax.data import synthetic
from deeplab2_kmax.evaluation import map_agreement
from deeplab2_kmax.evaluation import panoptic_quality
from deeplab2_kmax.tools import demo

_KEYS = ("PQ", "PQ_Th", "PQ_St")


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--num_images", type=int, default=200)
  parser.add_argument("--batch_size", type=int, default=10)
  args = parser.parse_args()
  if precision.resolve(precision.BFLOAT16, "bfloat16_demo") != (
      precision.BFLOAT16):
    raise SystemExit("bfloat16_demo: this CPU has no native bfloat16 "
                     "(amx_bf16 or avx512_bf16); nothing to compare.")
  config = demo.load_demo_config(demo.DEFAULT_CONFIG, "unused",
                                 initial_checkpoint=demo.DEFAULT_CHECKPOINT)
  info = builders.dataset_info(config)
  crop = tuple(config.eval_dataset_options.crop_size)
  post_processor = builders.build_post_processor(config)
  predict, metrics, seconds = {}, {}, {}
  for name in (precision.FLOAT32, precision.BFLOAT16):
    model = precision.build_model(config, crop, name)
    tf.train.Checkpoint(model=model).read(
        demo.DEFAULT_CHECKPOINT).assert_existing_objects_matched()
    predict[name] = tf.function(
        lambda images, model=model: post_processor(
            precision.outputs_to_float32(model(images, training=False)),
            crop)[common.PRED_PANOPTIC_KEY])
    metrics[name] = panoptic_quality.PanopticQuality(
        info.num_classes, info.ignore_label, info.panoptic_label_divisor,
        list(info.thing_class_ids))
    seconds[name] = []

  agree = map_agreement.Agreement(0, 0, 0)
  for start in range(0, args.num_images, args.batch_size):
    samples = [synthetic.generate(0, "val", i) for i in
               range(start, min(start + args.batch_size, args.num_images))]
    images = tf.constant(np.stack([s.image for s in samples]), tf.float32)
    maps = {}
    for name, fn in predict.items():
      begin = time.perf_counter()
      maps[name] = fn(images).numpy()
      if start:  # The first batch traces.
        seconds[name].append(time.perf_counter() - begin)
      for sample, predicted in zip(samples, maps[name]):
        metrics[name].update(sample.panoptic, predicted)
    for first, second in zip(maps[precision.FLOAT32],
                             maps[precision.BFLOAT16]):
      agree += map_agreement.agreement(first, second,
                                       info.panoptic_label_divisor)

  print(f"{export_formats.cpu_description()}; matmul 4096^3 fp32 "
        f"{harness.matmul_gflops():.0f} GFLOP/s, bf16 "
        f"{harness.matmul_gflops(dtype='bfloat16'):.0f} GFLOP/s\n")
  print(f"Demo checkpoint, first {args.num_images} held-out images, batch "
        f"{args.batch_size}. Panoptic maps: same label on "
        f"{100 * agree.same_label / agree.total:.2f}% of pixels, same "
        f"segment (up to instance-id renaming) on "
        f"{100 * agree.same_segment / agree.total:.2f}%.\n")
  print("| precision | PQ | PQ^Th | PQ^St | ms per batch (median) |")
  print("|---|---|---|---|---|")
  for name, metric in metrics.items():
    result = metric.result()
    figures = " | ".join(f"{100 * float(result[k]):.2f}" for k in _KEYS)
    print(f"| {name} | {figures} | "
          f"{1e3 * float(np.median(seconds[name])):.1f} |")


if __name__ == "__main__":
  main()
