r"""One benchmark table for this machine (SPEC §10). Never run by the tests.

  python -m benchmarks.run [--suite=inference,train,matching,eval,data] \
      [--config_file=configs/coco/kmax_r50_os32.textproto] [--crop_size=641,641]

`--suite=precision` times float32 against bfloat16 inference (the R50 model
at --crop_size and the synthetic demo model at its eval crop) and adds the
machine's bf16 matmul rate and CPU flags.

The first row is this machine's fp32 matmul rate measured in the same run, so
every other row reads as a fraction of the machine's limit. Each row is the
median over repeats after warm-up, with its spread.
"""

import argparse
import os
import tempfile
import time

from benchmarks import harness

_SUITES = ("inference", "train", "matching", "eval", "data", "precision")
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
    return post_processor(model(images, training=False), (height, width))

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


def precision_suite(args, roof):
  """Forward + post-processing, batch 1: float32 against bfloat16.

  The bfloat16 model is built as the evaluator and the export build it
  (`precision.build_model`, outputs cast to float32 before the merging),
  with the float32 model's weights; the two are timed alternately. The
  weights are random, so the agreement printed says the two paths run the
  same merging, not how well a trained model agrees (the tests check that).
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  from deeplab2_kmax import builders  # pylint: disable=g-import-not-at-top
  from deeplab2_kmax import precision  # pylint: disable=g-import-not-at-top

  flags = sorted(precision.cpu_flags() & {
      "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_vnni"})
  bf16 = harness.matmul_gflops(dtype="bfloat16")
  rows = [{"suite": "machine", "case": "bf16 matmul 4096^3",
           "GFLOP/s": f"{bf16:.1f}", "of matmul": f"{100 * bf16 / roof:.0f}%",
           "throughput": " ".join(flags) or "no bf16 flags"}]
  ran = precision.resolve("bfloat16", "--suite=precision")
  cases = [("R50 COCO", args.config_file, args.crop_size),
           ("synthetic demo", args.demo_config, None)]
  for name, config_file, crop in cases:
    config = _load(config_file, crop, {"DATA_DIR": "/nonexistent"})
    crop = tuple(config.eval_dataset_options.crop_size)
    post_processor = builders.build_post_processor(config)
    models = {p: precision.build_model(config, crop, p)
              for p in ("float32", ran)}
    for target, source in zip(models[ran].variables,
                              models["float32"].variables):
      target.assign(source)
    image = tf.constant(np.random.RandomState(0).uniform(
        0, 255, [1, *crop, 3]).astype(np.float32))
    fns = {p: tf.function(lambda x, m=m: post_processor(
        precision.outputs_to_float32(m(x, training=False)), crop))
           for p, m in models.items()}
    timings = harness.time_alternating(
        {p: (lambda fn=fn: fn(image)) for p, fn in fns.items()},
        warmup=2, repeats=args.repeats,
        sync=lambda r: r["panoptic_pred"].numpy())
    agree = np.mean(fns["float32"](image)["panoptic_pred"].numpy() ==
                    fns[ran](image)["panoptic_pred"].numpy())
    for p, timing in timings.items():
      case = f"{name} {crop[0]}x{crop[1]} {p}"
      if p != "float32":
        case += (f" ({timings['float32'].median_s / timing.median_s:.2f}x "
                 f"float32; random weights, {100 * agree:.1f}% px agree)")
      rows.append(_row("precision", case, timing,
                       f"{1 / timing.median_s:.2f} img/s"))
  return rows


def _random_batch(batch, crop, info, max_thing_id):
  """A training batch with random images and blocky panoptic targets."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  from deeplab2_kmax import common  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  height, width = crop
  semantic = np.full((batch, height, width), info.stuff_class_ids[0], np.int32)
  thing_id = -np.ones((batch, height, width), np.int32)
  thing_class = -np.ones((batch, max_thing_id), np.int32)
  for b in range(batch):
    for k in range(min(4, max_thing_id)):
      y, x = rng.integers(0, height - 16), rng.integers(0, width - 16)
      cls = int(rng.choice(info.thing_class_ids))
      semantic[b, y:y + 16, x:x + 16] = cls
      thing_id[b, y:y + 16, x:x + 16] = k
      thing_class[b, k] = cls
  return {
      common.IMAGE: tf.constant(rng.uniform(0, 255, (batch, height, width, 3)),
                                tf.float32),
      common.GT_SEMANTIC_KEY: tf.constant(semantic),
      common.GT_THING_ID_MASK_KEY: tf.constant(thing_id),
      common.GT_THING_ID_CLASS_KEY: tf.constant(thing_class),
      common.SEMANTIC_LOSS_WEIGHT_KEY: tf.ones((batch, height, width)),
  }


def train_suite(args, roof):
  """Training-step images/s (forward, loss, backward, AdamW update).

  With --train_xla each case is also run XLA-compiled; before any step, both
  modes evaluate the loss on the same weights and batch, and the row reports
  their difference. Stochastic depth and dropout are off in both modes so
  that the two compute the same function (their cost is negligible).
  """
  del roof
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tf_keras  # pylint: disable=g-import-not-at-top

  from deeplab2_kmax import builders  # pylint: disable=g-import-not-at-top
  from deeplab2_kmax.trainer import optimization  # pylint: disable=g-import-not-at-top

  rows = []
  cases = [("synthetic demo 128x128 b8", args.demo_config, (128, 128), 8),
           ("R50 COCO 257x257 b2", args.config_file, (257, 257), 2)]
  for name, config_file, crop, batch_size in cases:
    config = _load(config_file, crop, {"DATA_DIR": "/nonexistent"})
    max_deeplab = config.model_options.max_deeplab
    max_deeplab.transformer_decoder.drop_path_keep_prob = 1.0
    max_deeplab.transformer_decoder.use_drop_query = False
    config.model_options.backbone.drop_path_keep_prob = 1.0
    batch = _random_batch(batch_size, crop, builders.dataset_info(config),
                          config.train_dataset_options.max_thing_id)
    modes = (False, True) if args.train_xla else (False,)
    initial, first_loss, steps = None, {}, {}
    for jit in modes:
      # jit_compile also selects the Hungarian matching ('auto') and the
      # batch-norm kernel (builders.model_kwargs), so each mode gets its own
      # build; both start from the same weights.
      config.trainer_options.jit_compile = jit
      tf_keras.utils.set_random_seed(0)
      model = builders.build_model(config, crop_size=crop)
      for layer in model.submodules:
        if isinstance(layer, tf_keras.layers.Dropout):
          layer.rate = 0.0
      if initial is None:
        initial = [v.numpy() for v in model.variables]
      for variable, value in zip(model.variables, initial):
        variable.assign(value)
      rest, backbone = optimization.split_variables(model)
      loss = builders.build_loss(config, seed=tf.constant([0, 0]))

      def gradients(batch, loss=loss, model=model, rest=rest,
                    backbone=backbone):
        with tf.GradientTape() as tape:
          outputs = model(batch["image"], training=True)
          total = tf.reduce_mean(loss(batch, outputs)["total_loss"])
        return total, tape.gradient(total, rest + backbone)

      compute = tf.function(gradients, jit_compile=jit)
      first_loss[jit] = float(compute(batch)[0])
      for variable, value in zip(model.variables, initial):
        variable.assign(value)  # The first call updated no weights, but BN.
      optimizer, backbone_optimizer = optimization.build_optimizers(
          config.trainer_options.solver_options)

      @tf.function
      def step(batch, compute=compute, rest=rest, backbone=backbone,
               optimizer=optimizer, backbone_optimizer=backbone_optimizer):
        total, grads = compute(batch)
        optimizer.apply_gradients(zip(grads[:len(rest)], rest))
        backbone_optimizer.apply_gradients(zip(grads[len(rest):], backbone))
        return total

      steps[jit] = step
    for jit in modes:
      step = steps[jit]
      timing = harness.time_call(lambda step=step: step(batch), warmup=2,
                                 repeats=args.repeats,
                                 sync=lambda r: r.numpy())
      case = f"{name}{' XLA' if jit else ''}, first loss {first_loss[jit]:.5f}"
      if jit:
        case += f" (|d| {abs(first_loss[jit] - first_loss[False]):.1e})"
      rows.append(_row("train", case, timing,
                       f"{batch_size / timing.median_s:.2f} img/s"))
      print("done:", rows[-1], flush=True)  # XLA cases take minutes each.
  return rows


def matching_suite(args, roof):
  del roof
  from benchmarks import bench_matching  # pylint: disable=g-import-not-at-top

  return [_row("matching", name, timing, f"{8 / timing.median_s:.0f} img/s")
          for name, timing in bench_matching.measure(repeats=args.repeats)]


def eval_suite(args, roof):
  del roof
  from benchmarks import bench_eval  # pylint: disable=g-import-not-at-top

  theirs, ours, pq_theirs, pq_ours = bench_eval.measure(args.eval_images)
  note = f"{args.eval_images} pairs 640x480, |dPQ| {abs(pq_theirs - pq_ours):.1e}"
  return [{"suite": "eval", "case": f"panopticapi pq_compute ({note})",
           "median": f"{theirs:.1f} s"},
          {"suite": "eval", "case": "deeplab2_kmax PanopticQuality",
           "median": f"{ours:.1f} s",
           "throughput": f"{theirs / ours:.1f}x faster"}]


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
  parser.add_argument("--train_xla", action="store_true",
                      help="Also time XLA-compiled training steps.")
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
