r"""SavedModel vs ONNX vs TFLite exports of a checkpoint: agreement and speed.

  python -m benchmarks.export_formats --checkpoint=/work/runs/base/ckpt-1500 \
      --data_dir=/work/runs/data [--config=configs/synthetic/...textproto] \
      [--num_images=50] [--num_threads=1]

Restores the checkpoint once, exports it in the three formats
(`export_model --format`), then runs each on the first `num_images` held-out
images (val-*.tfrecord) one at a time: the panoptic map of ONNX
(onnxruntime) and TFLite (LiteRT) against the SavedModel's (share of equal
pixels, all images; worst image), and the median per-image latency, end to
end (uint8 image in, maps at the image size out; ONNX / TFLite include the
host pre- and post-processing of `export_formats.ExportedModel`) and, for
ONNX / TFLite, of the exported graph alone. Every runtime gets
`num_threads` threads. Prints the CPU, its flags and the fp32 matmul rate
with the table. Not a test.
"""

import argparse
import os
import platform
import statistics
import tempfile
import time

import numpy as np

from benchmarks import harness

_DEMO_CONFIG = os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "configs", "synthetic",
                            "kmax_tiny_r50_os32.textproto")
_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni",
          "avx512_bf16", "amx_bf16", "amx_tile")


def cpu_description() -> str:
  """CPU model, logical CPUs and the vector flags that matter for fp32."""
  model, flags = platform.processor() or "unknown CPU", set()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        key, _, value = line.partition(":")
        if key.strip() == "model name":
          model = value.strip()
        elif key.strip() == "flags":
          flags = set(value.split())
  except OSError:
    pass
  present = [flag for flag in _FLAGS if flag in flags]
  return (f"{model}, {os.cpu_count()} logical CPUs, flags: "
          f"{' '.join(present) or 'unknown'}")


def _val_images(data_dir, count):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  from deeplab2_kmax.data import input_pipeline  # pylint: disable=g-import-not-at-top
  from deeplab2_kmax.data import tfrecord  # pylint: disable=g-import-not-at-top

  files = input_pipeline.list_files(os.path.join(data_dir, "val-*.tfrecord"))
  images = []
  for record in tf.data.TFRecordDataset(files).take(count):
    images.append(tfrecord.decode_example(record)["image"].numpy())
  if len(images) < count:
    raise ValueError(f"--data_dir {data_dir}: {len(images)} val images, "
                     f"--num_images asks for {count}")
  return images


def _timed(fn, *args):
  start = time.perf_counter()
  result = fn(*args)
  return result, time.perf_counter() - start


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--checkpoint", required=True)
  parser.add_argument("--data_dir", required=True)
  parser.add_argument("--config", default=_DEMO_CONFIG)
  parser.add_argument("--num_images", type=int, default=50)
  parser.add_argument("--num_threads", type=int, default=1)
  parser.add_argument("--output_dir", default=None,
                      help="Where the exports go (default: a temp folder).")
  args = parser.parse_args()

  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.threading.set_intra_op_parallelism_threads(args.num_threads)
  tf.config.threading.set_inter_op_parallelism_threads(args.num_threads)
  from deeplab2_kmax import config_loader  # pylint: disable=g-import-not-at-top
  from deeplab2_kmax.trainer import export_formats  # pylint: disable=g-import-not-at-top
  from deeplab2_kmax.trainer import export_lib  # pylint: disable=g-import-not-at-top

  config = config_loader.load_config(args.config, {"DATA_DIR": args.data_dir},
                                     validate_config=False)
  output_dir = args.output_dir or tempfile.mkdtemp(prefix="export_formats_")
  model = export_lib.restore_model(config, args.checkpoint)
  export_s, paths = {}, {}
  for fmt in export_formats.FORMATS:
    paths[fmt] = os.path.join(output_dir, fmt)
    _, export_s[fmt] = _timed(export_formats.export_from_model, model, config,
                              paths[fmt], fmt)
  images = _val_images(args.data_dir, args.num_images)

  serve = tf.saved_model.load(paths["saved_model"]).signatures[
      "serving_default"]
  runners = {"saved_model": lambda image: {
      k: v.numpy() for k, v in serve(image=tf.constant(image)).items()}}
  exported = {fmt: export_formats.ExportedModel(paths[fmt], args.num_threads)
              for fmt in ("onnx", "tflite")}
  runners.update(exported)
  for runner in runners.values():  # Warm-up (tracing, allocation).
    runner(images[0])

  panoptic, latency, graph_latency = {}, {}, {}
  for fmt, runner in runners.items():
    panoptic[fmt], latency[fmt] = [], []
    for image in images:
      maps, seconds = _timed(runner, image)
      panoptic[fmt].append(maps["panoptic_pred"])
      latency[fmt].append(seconds)
  for fmt, runner in exported.items():
    padded = np.full((1,) + tuple(runner.info["input"]["shape"][1:]), 127.5,
                     np.float32)
    graph_latency[fmt] = statistics.median(
        _timed(runner.network, padded)[1] for _ in images)

  rows = []
  for fmt in runners:
    equal = [np.mean(p == s) for p, s in zip(panoptic[fmt],
                                             panoptic["saved_model"])]
    pixels = sum(p.size for p in panoptic[fmt])
    agree = sum(e * p.size for e, p in zip(equal, panoptic[fmt])) / pixels
    segments = statistics.median(len(np.unique(p)) for p in panoptic[fmt])
    rows.append({
        "format": fmt,
        "input size": ("any" if fmt == "saved_model" else
                       "fixed {}x{} (host resizes any)".format(
                           *exported[fmt].info["crop_size"])),
        "export s": f"{export_s[fmt]:.1f}",
        "pixels = SavedModel": f"{100 * agree:.3f} %",
        "worst image": f"{100 * min(equal):.3f} %",
        "segments / image": f"{segments:g}",
        "ms / image": f"{1e3 * statistics.median(latency[fmt]):.1f}",
        "graph ms": (f"{1e3 * graph_latency[fmt]:.1f}"
                     if fmt in graph_latency else "-")})
  print(f"CPU: {cpu_description()}")
  print(f"fp32 matmul 4096^3 ({args.num_threads} thread(s)): "
        f"{harness.matmul_gflops():.0f} GFLOP/s")
  print(f"{len(images)} held-out images "
        f"{'x'.join(map(str, images[0].shape[:2]))}, {args.num_threads} "
        f"thread(s) per runtime, medians; checkpoint {args.checkpoint}")
  harness.print_table(rows, list(rows[0]))


if __name__ == "__main__":
  main()
