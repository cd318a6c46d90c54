r"""Where inference time goes, op by op (not a test).

  python -m benchmarks.profile_ops [--config_file=F] [--crop_size=H,W] \
      [--post_processing] [--precision=float32|bfloat16] [--top=25]

Runs one traced forward pass (batch 1, random weights, float32 or bfloat16
as the evaluator builds it: `precision.build_model`) in a
TensorFlow session with full tracing and sums each executed op's time by op
type, by model part (encoder, pixel decoder, transformer decoder, head,
post-processing) and by node. The graph is the `tf.function` graph with the
variables frozen to constants and constant folding switched off (so the
folded batch norms stay runtime ops, as in the library's own graph);
TensorFlow's other graph rewrites (oneDNN fusions) apply as usual. Op times
add up to more than the wall time: the two CPUs run independent ops side
by side.
"""

import argparse
import collections
import time

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import rewriter_config_pb2
from tensorflow.python.framework import convert_to_constants

from benchmarks import export_formats
from benchmarks import harness
from benchmarks import run as run_lib
from deeplab2_kmax import builders
from deeplab2_kmax import precision


def _traced_run(function, image):
  """(wall seconds of an untraced run, RunMetadata of a traced run)."""
  frozen = convert_to_constants.convert_variables_to_constants_v2(
      function.get_concrete_function(image))
  graph = tf.Graph()
  with graph.as_default():
    tf.import_graph_def(frozen.graph.as_graph_def(), name="")
  config = tf.compat.v1.ConfigProto()
  config.graph_options.rewrite_options.constant_folding = (
      rewriter_config_pb2.RewriterConfig.OFF)
  fetches = [t.name for t in frozen.outputs]
  feed = {frozen.inputs[0].name: image.numpy()}
  with tf.compat.v1.Session(graph=graph, config=config) as session:
    for _ in range(2):
      session.run(fetches, feed)
    walls = []
    for _ in range(3):
      start = time.perf_counter()
      session.run(fetches, feed)
      walls.append(time.perf_counter() - start)
    metadata = tf.compat.v1.RunMetadata()
    session.run(fetches, feed, run_metadata=metadata,
                options=tf.compat.v1.RunOptions(
                    trace_level=tf.compat.v1.RunOptions.FULL_TRACE))
  return float(np.median(walls)), metadata


def _part(node_name: str) -> str:
  parts = node_name.split("/")
  if parts[0] == "kmax_deeplab" and len(parts) > 1:
    return {"encoder": "pixel encoder", "pixel_decoder": "pixel decoder",
            "transformer_decoder": "transformer decoder",
            "max_deeplab_head": "prediction head"}.get(parts[1], "other")
  return "post-processing"


def _table(title, counter, total, top):
  lines = [f"| {title} | op ms | share |", "|---|---|---|"]
  for key, micros in counter.most_common(top):
    lines.append(f"| {key} | {micros / 1e3:.1f} | {micros / total:.0%} |")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--config_file",
                      default="configs/coco/kmax_r50_os32.textproto")
  parser.add_argument("--crop_size", default="641,641")
  parser.add_argument("--post_processing", action="store_true")
  parser.add_argument("--precision", default=precision.FLOAT32,
                      choices=precision.PRECISIONS)
  parser.add_argument("--top", type=int, default=25)
  args = parser.parse_args()
  crop = tuple(int(v) for v in args.crop_size.split(","))
  config = run_lib._load(args.config_file, crop)  # pylint: disable=protected-access
  ran = precision.resolve(args.precision, "--precision")
  model = precision.build_model(config, crop, ran)
  post_processor = builders.build_post_processor(config)

  @tf.function
  def forward(x):
    outputs = precision.outputs_to_float32(model(x, training=False))
    return post_processor(outputs, crop) if args.post_processing else outputs

  image = tf.constant(np.random.RandomState(0).uniform(
      0, 255, [1, *crop, 3]).astype(np.float32))
  wall, metadata = _traced_run(forward, image)
  by_type, by_part, by_node = (collections.Counter() for _ in range(3))
  for device in metadata.step_stats.dev_stats:
    for stats in device.node_stats:
      label = stats.timeline_label
      if " = " not in label:
        continue
      op = label.split(" = ")[1].split("(")[0]
      micros = stats.op_end_rel_micros
      by_type[op] += micros
      by_part[_part(stats.node_name)] += micros
      by_node[f"{stats.node_name} ({op})"] += micros
  total = sum(by_type.values())
  print(f"{export_formats.cpu_description()}; fp32 matmul "
        f"{harness.matmul_gflops():.0f} GFLOP/s; {crop[0]}x{crop[1]}, "
        f"{'forward + post-processing' if args.post_processing else 'forward'}"
        f", {ran}: {wall * 1e3:.0f} ms wall (median of 3), {total / 1e3:.0f} ms of "
        "op time in the traced run\n")
  print(_table("part", by_part, total, args.top) + "\n")
  print(_table("op type", by_type, total, args.top) + "\n")
  print(_table("node", by_node, total, args.top))


if __name__ == "__main__":
  main()
