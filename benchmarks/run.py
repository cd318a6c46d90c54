r"""One benchmark table for this machine (SPEC §10). Never run by the tests.

  python -m benchmarks.run [--suite=inference,train,matching,eval,data] \
      [--config_file=configs/coco/kmax_r50_os32.textproto] [--crop_size=641,641]

The first row is this machine's fp32 matmul rate measured in the same run, so
every other row reads as a fraction of the machine's limit. Each row is the
median over repeats after warm-up, with its spread.
"""

import argparse
import os
import tempfile
import time

from benchmarks import harness

_SUITES = ("inference", "train", "matching", "eval", "data")
_COLUMNS = ["suite", "case", "median", "spread", "throughput", "GFLOP/s",
            "of matmul"]


def _row(suite, case, timing=None, throughput="", flops=None, roof=None):
  row = {"suite": suite, "case": case, "throughput": throughput}
  if timing is not None:
    row["median"] = f"{timing.median_s * 1e3:.1f} ms"
    row["spread"] = timing.spread
    if flops:
      rate = flops / timing.median_s / 1e9
      row["GFLOP/s"] = f"{rate:.1f}"
      if roof:
        row["of matmul"] = f"{100 * rate / roof:.0f}%"
  return row


def _load(config_file, crop_size, overrides=None):
  from deeplab2_kmax import config_loader  # pylint: disable=g-import-not-at-top

  config = config_loader.load_config(config_file, overrides or {},
                                     validate_config=False)
  if crop_size:
    for options in (config.train_dataset_options, config.eval_dataset_options,
                    config.export_options):
      del options.crop_size[:]
      options.crop_size.extend(crop_size)
  return config


def inference_suite(args, roof):
  """Forward + post-processing, batch 1, fp32: tf.function, XLA, SavedModel."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  from deeplab2_kmax import builders  # pylint: disable=g-import-not-at-top
  from deeplab2_kmax.tools import model_summary  # pylint: disable=g-import-not-at-top
  from deeplab2_kmax.trainer import export_lib  # pylint: disable=g-import-not-at-top

  config = _load(args.config_file, args.crop_size)
  height, width = args.crop_size
  model = builders.build_model(config)
  post_processor = builders.build_post_processor(config)
  flops = 2 * model_summary.count_multiply_adds(model, (height, width))
  image = tf.constant(np.random.RandomState(0).uniform(
      0, 255, [1, height, width, 3]).astype(np.float32))

  def forward(images):
    return post_processor(model(images, training=False))

  rows, panoptic = [], {}
  for name, fn in (("tf.function", tf.function(forward)),
                   ("tf.function + XLA", tf.function(forward,
                                                     jit_compile=True))):
    timing = harness.time_call(lambda fn=fn: fn(image), warmup=2,
                               repeats=args.repeats,
                               sync=lambda r: r["panoptic_pred"].numpy())
    panoptic[name] = fn(image)["panoptic_pred"].numpy()
    rows.append(_row("inference", f"{name} {height}x{width}", timing,
                     f"{1 / timing.median_s:.2f} img/s", flops, roof))
  agree = np.mean(panoptic["tf.function"] == panoptic["tf.function + XLA"])
  rows[-1]["case"] += f" (panoptic agrees on {100 * agree:.2f}% px)"
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "saved_model")
    export_lib.export_from_model(model, config, path)
    serve = tf.saved_model.load(path).signatures["serving_default"]
    uint8 = tf.cast(image[0], tf.uint8)
    timing = harness.time_call(lambda: serve(image=uint8), warmup=2,
                               repeats=args.repeats,
                               sync=lambda r: r["panoptic_pred"].numpy())
    rows.append(_row("inference", f"SavedModel {height}x{width}", timing,
                     f"{1 / timing.median_s:.2f} img/s", flops, roof))
  return rows


def train_suite(args, roof):
  """Training-step images/s with and without XLA (same loss)."""
  del roof
  from deeplab2_kmax.trainer import benchmark_step  # pylint: disable=g-import-not-at-top

  rows = []
  cases = [("synthetic demo 128x128 b8", args.demo_config, None, 8),
           ("R50 257x257 b2", args.config_file, (257, 257), 2)]
  for name, config_file, crop, batch in cases:
    config = _load(config_file, crop, {"DATA_DIR": "/nonexistent"})
    losses = {}
    for jit in (False, True):
      timing, loss = benchmark_step.time_train_step(
          config, batch_size=batch, jit_compile=jit, repeats=args.repeats)
      losses[jit] = loss
      rows.append(_row("train", f"{name}{' XLA' if jit else ''}", timing,
                       f"{batch / timing.median_s:.2f} img/s"))
    rows[-1]["case"] += f" (loss {losses[False]:.4f} vs {losses[True]:.4f})"
  return rows


def matching_suite(args, roof):
  del roof
  from benchmarks import bench_matching  # pylint: disable=g-import-not-at-top

  return [_row("matching", name, timing, f"{8 / timing.median_s:.0f} img/s")
          for name, timing in bench_matching.measure(repeats=args.repeats)]


def eval_suite(args, roof):
  del roof
  from benchmarks import bench_eval  # pylint: disable=g-import-not-at-top

  return [_row("eval", name, timing, extra)
          for name, timing, extra in bench_eval.measure(num_images=args.eval_images)]


def data_suite(args, roof):
  del roof, args
  from benchmarks import bench_data  # pylint: disable=g-import-not-at-top

  rows = []
  with tempfile.TemporaryDirectory() as workdir:
    for name, recipe in bench_data.RECIPES.items():
      result = bench_data.measure(name, recipe, 32, 8, workdir)
      rows.append({"suite": "data", "case": f"{name} b{result['batch']}",
                   "median": f"{result['ms/batch (median)']} ms/batch",
                   "throughput": f"{result['images/s']} img/s"})
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--suite", default=",".join(_SUITES))
  parser.add_argument("--config_file",
                      default="configs/coco/kmax_r50_os32.textproto")
  parser.add_argument("--demo_config",
                      default="configs/synthetic/kmax_tiny_r50_os32.textproto")
  parser.add_argument("--crop_size", default="641,641")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--eval_images", type=int, default=500)
  args = parser.parse_args()
  args.crop_size = tuple(int(v) for v in args.crop_size.split(","))
  suites = args.suite.split(",")
  for suite in suites:
    if suite not in _SUITES:
      raise SystemExit(f"--suite: unknown {suite!r}; known: {_SUITES}")

  start = time.time()
  roof = harness.matmul_gflops()
  rows = [{"suite": "machine", "case": "fp32 matmul 4096^3 (the roof)",
           "GFLOP/s": f"{roof:.1f}", "of matmul": "100%",
           "throughput": f"{os.cpu_count()} CPUs"}]
  for suite in suites:
    rows.extend(globals()[f"{suite}_suite"](args, roof))
  harness.print_table(rows, _COLUMNS)
  print(f"\n{len(rows)} rows in {time.time() - start:.0f} s.")


if __name__ == "__main__":
  main()
