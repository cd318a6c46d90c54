r"""Where inference time goes, part by part (not a test).

  python -m benchmarks.profile_inference [--config_file=F] [--crop_size=H,W] \
      [--repeats=5] [--jit_compile] [--precision=float32|bfloat16]

Times growing prefixes of the forward pass at batch 1 (pixel encoder;
+ pixel decoder; + kMaX transformer decoder and head; + mask-wise
post-processing), each as its own `tf.function`, and prints each part's time
as the difference of consecutive prefixes, next to its FLOPs from the
profiler. This is the profile docs/performance.md refers to. With
--precision=bfloat16 the model is built under mixed_bfloat16 as the
evaluator builds it (`precision.build_model`; float32 where bfloat16 is not
native), its outputs cast to float32 before the merging.
"""

import argparse

import numpy as np
import tensorflow as tf

from benchmarks import harness
from benchmarks import run as run_lib
from deeplab2_kmax import builders
from deeplab2_kmax import precision
from deeplab2_kmax.tools import model_summary


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--config_file",
                      default="configs/coco/kmax_r50_os32.textproto")
  parser.add_argument("--crop_size", default="641,641")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--jit_compile", action="store_true")
  parser.add_argument("--precision", default="float32",
                      choices=precision.PRECISIONS)
  args = parser.parse_args()
  crop = tuple(int(v) for v in args.crop_size.split(","))
  config = run_lib._load(args.config_file, crop)  # pylint: disable=protected-access
  ran = precision.resolve(args.precision, "--precision")
  model = precision.build_model(config, crop, ran)
  post_processor = builders.build_post_processor(config)
  image = tf.constant(np.random.RandomState(0).uniform(
      0, 255, [1, *crop, 3]).astype(np.float32))

  def encoder(x):
    return model.encoder(tf.cast(x, tf.float32) / 127.5 - 1.0, training=False)

  def pixel_decoder(x):
    return model.pixel_decoder(encoder(x), training=False)

  def full_model(x):
    return model(x, training=False)

  def with_post_processing(x):
    return post_processor(
        precision.outputs_to_float32(model(x, training=False)), crop)

  prefixes = [("pixel encoder", encoder), ("pixel decoder", pixel_decoder),
              ("transformer decoder + head", full_model),
              ("post-processing", with_post_processing)]
  rows, previous_ms, previous_flops = [], 0.0, 0
  total_ms = None
  for name, fn in prefixes:
    compiled = tf.function(fn, jit_compile=args.jit_compile)
    timing = harness.time_call(
        lambda compiled=compiled: compiled(image), warmup=2,
        repeats=args.repeats,
        sync=lambda r: [t.numpy() for t in tf.nest.flatten(r)])
    flops = model_summary.count_function_float_ops(fn, image.shape)
    ms = timing.median_s * 1e3
    rows.append({"part": name, "ms": f"{ms - previous_ms:.1f}",
                 "GFLOP": f"{(flops - previous_flops) / 1e9:.2f}",
                 "prefix ms": f"{ms:.1f}", "prefix spread": timing.spread})
    previous_ms, previous_flops, total_ms = ms, flops, ms
  for row in rows:
    row["share"] = f"{100 * float(row['ms']) / total_ms:.0f}%"
  print(f"{args.config_file} at {crop[0]}x{crop[1]}, batch 1, "
        f"{'XLA' if args.jit_compile else 'tf.function'}, {ran}; model "
        "multiply-adds "
        f"{model_summary.count_multiply_adds(model, crop) / 1e9:.2f} G")
  harness.print_table(rows, ["part", "ms", "share", "GFLOP", "prefix ms",
                             "prefix spread"])


if __name__ == "__main__":
  main()
