r"""Side by side with DeepLab2, the authors' code (issues 18 and 19).

  python -m benchmarks.compare_deeplab2 --deeplab2_root=DIR \
      [--suite=inference] [--sizes=641x641,801x1201] [--repeats=5] \
      [--weights=fixture|random]
  python -m benchmarks.compare_deeplab2 --deeplab2_root=DIR --suite=train \
      [--crops=257,385] [--batch_size=2] [--steps=3] [--warmup=2]

DIR is DeepLab2 laid out by ../shared/tools/deeplab2_reference.sh; it is
imported from there only, at run time (never part of the tests, none of its
code is in the project). Both sides run the COCO kMaX R50 model: DeepLab2
from its own config (--deeplab2_config), ours from --config_file.

inference: batch 1, float32. DeepLab2's weights (the stage-wise parity
fixture's rule with --weights=fixture, else its random initialisation) are
written as a DeepLab2 checkpoint, which DeepLab2 restores and our converter
(tools/convert_deeplab2_checkpoint.py) turns into ours. Forward, and forward
+ each side's own post-processing, are timed in turn in one process.

train: one subprocess per measurement (clean peak memory): DeepLab2's own
trainer (its model, loss and AdamW with the backbone multiplier) on a
synthetic batch, and ours (KMaXTrainer) plain, mixed_bfloat16, gradient
accumulation 2, both, recompute of every block and recompute + bfloat16. A step is one Orbit `train(1)` call.
"""

import argparse
import importlib.util
import json
import os
import pathlib
import sys
import tempfile
import time

# DeepLab2 reads tf.keras, which must be Keras 2 (tf_keras, as ours uses);
# set before TensorFlow is first imported.
os.environ["TF_USE_LEGACY_KERAS"] = "1"

from google.protobuf import text_format  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402

from benchmarks import export_formats  # noqa: E402
from benchmarks import harness  # noqa: E402
from benchmarks import run as run_lib  # noqa: E402
from deeplab2_kmax import builders  # noqa: E402
from deeplab2_kmax.losses import max_deeplab_loss  # noqa: E402
from deeplab2_kmax.model.layers import rewrites  # noqa: E402
from deeplab2_kmax.tools import convert_deeplab2_checkpoint as convert  # noqa: E402
from deeplab2_kmax.trainer import trainer as our_trainer  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
OUR_CASES = {  # Case: (mixed_precision, gradient_accumulation_steps, recompute).
    "ours": ("", 1, "none"), "ours bf16": ("mixed_bfloat16", 1, "none"),
    "ours accum 2": ("", 2, "none"),
    "ours bf16 + accum 2": ("mixed_bfloat16", 2, "none"),
    "ours recompute": ("", 1, "blocks"),
    "ours recompute + bf16": ("mixed_bfloat16", 1, "blocks")}


def _import_deeplab2(root):
  """Puts DeepLab2 (laid out under `root`) on the path."""
  if not (pathlib.Path(root) / "deeplab2" / "config_pb2.py").exists():
    raise SystemExit(f"--deeplab2_root={root}: no deeplab2/config_pb2.py; lay "
                     "it out with ../shared/tools/deeplab2_reference.sh")
  sys.path.insert(0, str(root))


def _configs(args, crop, overrides=None):
  """(DeepLab2's config, ours) at `crop`, with the evaluator `overrides`
  (fields of evaluator_options or of its maskwise_postprocessing)."""
  from deeplab2 import config_pb2  # pylint: disable=g-import-not-at-top
  path = pathlib.Path(args.deeplab2_root) / "deeplab2" / args.deeplab2_config
  theirs = text_format.Parse(path.read_text(), config_pb2.ExperimentOptions())
  for options in (theirs.train_dataset_options, theirs.eval_dataset_options):
    options.ClearField("crop_size")
    options.crop_size.extend(crop)
  ours = run_lib._load(args.config_file, crop)  # pylint: disable=protected-access
  for config in (theirs, ours):
    for name, value in (overrides or {}).items():
      target = config.evaluator_options
      if name not in target.DESCRIPTOR.fields_by_name:
        target = target.maskwise_postprocessing
      setattr(target, name, value)
  return theirs, ours


def _deeplab2_model(config):
  from deeplab2.data import dataset  # pylint: disable=g-import-not-at-top
  from deeplab2.model import kmax_deeplab  # pylint: disable=g-import-not-at-top
  from deeplab2.trainer import train_lib  # pylint: disable=g-import-not-at-top
  info = dataset.MAP_NAME_TO_DATASET_INFO[config.train_dataset_options.dataset]
  model = kmax_deeplab.KMaXDeepLab(config, info)
  train_lib.build_deeplab_model(model, config.train_dataset_options.crop_size)
  return model, info


def _sidecar(args):
  return json.loads((pathlib.Path(args.reference_dir) /
                     "parity_kmax_r50_coco_stagewise.json").read_text())


def _fixture_values(reader, args):
  """The parity fixture's rule weights for every key the fixture lists."""
  spec = importlib.util.spec_from_file_location(
      "parity_utils", REPO / "tests" / "model" / "parity_utils.py")
  parity_utils = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(parity_utils)
  reference_dir, sidecar = pathlib.Path(args.reference_dir), _sidecar(args)
  keys = parity_utils.read_key_list(sidecar["checkpoint_keys"], reference_dir)
  missing = sorted(set(keys) - set(reader.get_variable_to_shape_map()))
  if missing:
    raise SystemExit(f"DeepLab2's checkpoint lacks fixture keys: {missing[:5]}")
  with np.load(reference_dir / sidecar["npz"]) as npz:
    bn = {k: npz[k] for k in npz.files if k.startswith("bn/")}
  return {key: parity_utils.fill_value(key, shape, bn,
                                       sidecar["class_kernel_scale"])
          for key, shape in keys.items()}


def _shared_checkpoint(model, args, workdir):
  """Writes DeepLab2's weights (its initialisation, or the fixture's rule)
  as a DeepLab2 checkpoint, restores it into `model`; returns its prefix."""
  checkpoint = tf.train.Checkpoint(**model.checkpoint_items)
  path = checkpoint.write(os.path.join(workdir, "deeplab2_init"))
  if args.weights == "random":
    return path
  reader = tf.train.load_checkpoint(path)
  values = _fixture_values(reader, args)
  names = sorted(reader.get_variable_to_shape_map())
  tensors = [values[n] if n in values else reader.get_tensor(n) for n in names]
  path = os.path.join(workdir, "deeplab2_fixture")
  tf.raw_ops.SaveV2(prefix=path, tensor_names=names,
                    shape_and_slices=[""] * len(names), tensors=tensors)
  checkpoint.read(path).assert_consumed()
  return path


def _our_model(config, checkpoint, crop, workdir):
  """Our model holding the converted DeepLab2 checkpoint."""
  converted = os.path.join(workdir, f"ours_{crop[0]}x{crop[1]}")
  convert.convert_checkpoint(config, checkpoint, converted, crop)
  model = builders.build_model(config, crop_size=crop)
  tf.train.Checkpoint(model=model).read(converted).assert_consumed()
  return model


def _segments(panoptic, label_divisor=256):
  return int(np.sum(np.unique(panoptic) // label_divisor != 0))


def _inference_size(args, crop, workdir):
  """Rows and notes for one size: the four calls timed in turn."""
  overrides = (_sidecar(args)["evaluator_overrides"]
               if args.weights == "fixture" else {})
  theirs_config, ours_config = _configs(args, crop, overrides)
  theirs, _ = _deeplab2_model(theirs_config)
  checkpoint = _shared_checkpoint(theirs, args, workdir)
  ours = _our_model(ours_config, checkpoint, crop, workdir)
  post_processor = builders.build_post_processor(ours_config)
  image = tf.constant(np.random.default_rng(args.image_seed).integers(
      0, 256, (1, *crop, 3)).astype(np.float32))
  calls = {
      "DeepLab2 forward": lambda x: theirs(x, training=False,
                                           post_processing=False),
      "ours forward": lambda x: ours(x, training=False),
      "ours forward + semantic head": lambda x: ours(
          x, training=False, return_semantic=True),
      "DeepLab2 forward + post-processing": lambda x: theirs(x,
                                                             training=False),
      "ours forward + post-processing": lambda x: post_processor(
          ours(x, training=False), crop),
  }
  compiled = {name: tf.function(fn) for name, fn in calls.items()}
  key = "pixel_space_mask_logits"
  timings = harness.time_alternating(
      {name: (lambda fn=fn: fn(image)) for name, fn in compiled.items()},
      warmup=args.warmup, repeats=args.repeats,
      sync=lambda r: r["panoptic_pred" if "panoptic_pred" in r else key].numpy())
  sides = ("DeepLab2", "ours")
  maps = [compiled[f"{side} forward + post-processing"](image)
          ["panoptic_pred"].numpy() for side in sides]
  # The fixture's rule weights give logits up to ~1e4, which amplify
  # rounding: DeepLab2 run op by op (eagerly) against its own tf.function
  # shows how far rounding alone (kernel fusions) moves the map.
  # Both run eagerly, ours without its inference rewrites, execute the same
  # operations in the same order: there the maps should agree.
  eager = calls["DeepLab2 forward + post-processing"](image)[
      "panoptic_pred"].numpy()
  with rewrites.deeplab2_order_of_operations():
    ours_eager = calls["ours forward + post-processing"](image)[
        "panoptic_pred"].numpy()
  theirs_keys = sorted(compiled["DeepLab2 forward"](image))
  note = (f"{crop[0]}x{crop[1]}: segments DeepLab2 {_segments(maps[0])}, ours "
          f"{_segments(maps[1])}; panoptic maps agree on "
          f"{100 * np.mean(maps[0] == maps[1]):.2f}% of pixels (DeepLab2 "
          f"eager vs its tf.function: {100 * np.mean(eager == maps[0]):.2f}%; "
          f"both eager, ours in DeepLab2's order of operations: "
          f"{100 * np.mean(eager == ours_eager):.2f}%); "
          f"DeepLab2's forward returns {', '.join(theirs_keys)}")
  return _inference_rows(crop, timings), note


def _ms(t):
  return f"{t.median_s * 1e3:.0f} ms ({t.min_s * 1e3:.0f}-{t.max_s * 1e3:.0f})"


def _inference_rows(crop, timings):
  size = f"{crop[0]}x{crop[1]}"
  pairs = [("forward", "DeepLab2 forward", "ours forward"),
           ("forward, ours with semantic head (as DeepLab2)",
            "DeepLab2 forward", "ours forward + semantic head"),
           ("forward + post-processing",
            "DeepLab2 forward + post-processing",
            "ours forward + post-processing")]
  rows = []
  for case, theirs, ours in pairs:
    rows.append({"size": size, "case": case,
                 "DeepLab2": _ms(timings[theirs]), "ours": _ms(timings[ours]),
                 "ours/DeepLab2": f"{timings[ours].median_s / timings[theirs].median_s:.2f}"})
  post = {side: timings[f"{side} forward + post-processing"].median_s
          - timings[f"{side} forward"].median_s for side in ("DeepLab2", "ours")}
  rows.append({"size": size, "case": "post-processing (difference of medians)",
               "DeepLab2": f"{post['DeepLab2'] * 1e3:.0f} ms",
               "ours": f"{post['ours'] * 1e3:.0f} ms",
               "ours/DeepLab2": f"{post['ours'] / post['DeepLab2']:.2f}"
               if post["DeepLab2"] > 0 else ""})
  return rows


def inference_suite(args):
  rows, notes = [], []
  with tempfile.TemporaryDirectory() as workdir:
    for size in args.sizes.split(","):
      crop = tuple(int(v) for v in size.lower().split("x"))
      size_rows, note = _inference_size(args, crop, workdir)
      rows += size_rows
      notes.append(note)
      print("done:", note, flush=True)
  return rows, ["size", "case", "DeepLab2", "ours", "ours/DeepLab2"], notes


def _synthetic_dataset(batch, micro_batch):
  """Random valid batches (run.py's blocky targets), `micro_batch` each."""
  return tf.data.Dataset.from_tensor_slices(batch).batch(
      micro_batch, drop_remainder=True).repeat()


def _deeplab2_trainer(args, crop, batch):
  """DeepLab2's Trainer as its train_lib builds it, reading `batch`."""
  from deeplab2.model.loss import loss_builder  # pylint: disable=g-import-not-at-top
  from deeplab2.trainer import runner_utils  # pylint: disable=g-import-not-at-top
  from deeplab2.trainer import trainer as trainer_lib  # pylint: disable=g-import-not-at-top
  import orbit  # pylint: disable=g-import-not-at-top

  config, _ = _configs(args, crop)
  config.train_dataset_options.batch_size = args.batch_size
  model, info = _deeplab2_model(config)
  loss = loss_builder.DeepLabFamilyLoss(
      loss_options=config.trainer_options.loss_options,
      deeplab_options=config.model_options, num_classes=info.num_classes,
      ignore_label=info.ignore_label, ignore_depth=info.ignore_depth,
      thing_class_ids=info.class_has_instances_list,
      auxiliary_output_number=model.auxiliary_output_number)
  # Its Trainer reads TFRecords through this function; give it ours.
  runner_utils.create_dataset = lambda *a, **k: _synthetic_dataset(
      batch, args.batch_size)
  return trainer_lib.Trainer(config, model, loss,
                             orbit.utils.create_global_step())


def _our_trainer(args, crop, batch, case, workdir):
  """KMaXTrainer built as trainer/train_lib.py builds it."""
  policy, accumulation, recompute = OUR_CASES[case]
  _, config = _configs(args, crop)
  config.trainer_options.recompute = recompute
  config.train_dataset_options.batch_size = args.batch_size
  config.trainer_options.mixed_precision = policy
  config.trainer_options.gradient_accumulation_steps = accumulation
  if policy:
    tf_keras.mixed_precision.set_global_policy(policy)
  tf_keras.utils.set_random_seed(config.random_seed)
  strategy = tf.distribute.get_strategy()
  model = builders.build_model(config, crop_size=crop)
  global_step = tf.Variable(0, dtype=tf.int64, trainable=False)
  dataset = strategy.experimental_distribute_dataset(_synthetic_dataset(
      batch, args.batch_size // accumulation))
  trainer = our_trainer.KMaXTrainer(config, model, builders.build_loss(config),
                                    dataset, strategy, global_step, workdir)
  trainer.create_metrics(max_deeplab_loss.term_names(
      model.num_kmax_layers, model.semantic_branch is not None))
  return trainer


def train_child(args):
  """One measurement (in its own process); prints its result line."""
  crop = tuple(int(v) for v in args.child_crop.split(","))
  _, config = _configs(args, crop)
  batch = run_lib._random_batch(  # pylint: disable=protected-access
      args.batch_size, crop, builders.dataset_info(config),
      config.train_dataset_options.max_thing_id)
  with tempfile.TemporaryDirectory() as workdir:
    if args.child == "DeepLab2":
      trainer = _deeplab2_trainer(args, crop, batch)
    else:
      trainer = _our_trainer(args, crop, batch, args.child, workdir)
    built_rss = harness.peak_rss_mib()
    one = tf.constant(1)
    losses = []

    def step():
      result = tf.nest.map_structure(np.asarray, trainer.train(one))
      losses.append(float(next(v for k, v in result.items()
                               if k.endswith("total_loss"))))
      return result

    timing = harness.time_call(step, warmup=args.warmup, repeats=args.steps)
  result = {"median_s": timing.median_s, "min_s": timing.min_s,
            "max_s": timing.max_s, "built_rss_mib": built_rss,
            "peak_rss_mib": harness.peak_rss_mib(), "first_loss": losses[0]}
  if tf.config.list_physical_devices("GPU"):
    result["gpu_peak_mib"] = tf.config.experimental.get_memory_info(
        "GPU:0")["peak"] / 2**20
  harness.print_child_result(result)


def _run_child(args, case, crop):
  command = [sys.executable, "-m", "benchmarks.compare_deeplab2",
             f"--child={case}", f"--child_crop={crop[0]},{crop[1]}"] + [
                 f"--{name}={getattr(args, name)}" for name in (
                     "deeplab2_root", "deeplab2_config", "config_file",
                     "batch_size", "steps", "warmup")]
  return harness.run_child(command, str(REPO), args.case_timeout)


def train_suite(args):
  rows = []
  for size in args.crops.split(","):
    crop = (int(size), int(size))
    results = {case: _run_child(args, case, crop) for case in (
        "DeepLab2", *OUR_CASES)}
    reference = results["DeepLab2"]
    for case, result in results.items():
      row = {"crop": f"{size}x{size} b{args.batch_size}", "case": case}
      if result is None:
        rows.append({**row, "step": "failed (see log above)"})
        continue
      row.update({
          "step": f"{result['median_s']:.2f} s ({result['min_s']:.2f}-"
                  f"{result['max_s']:.2f})",
          "img/s": f"{args.batch_size / result['median_s']:.2f}",
          "peak RSS": f"{result['peak_rss_mib']:.0f} MiB",
          "RSS before steps": f"{result['built_rss_mib']:.0f} MiB",
          "first loss": f"{result['first_loss']:.3f}"})
      if "gpu_peak_mib" in result:
        row["GPU peak"] = f"{result['gpu_peak_mib']:.0f} MiB"
      if reference is not None:
        row["time vs DeepLab2"] = (
            f"{result['median_s'] / reference['median_s']:.2f}")
        row["peak RSS vs DeepLab2"] = (
            f"{result['peak_rss_mib'] / reference['peak_rss_mib']:.2f}")
      rows.append(row)
      print("done:", row, flush=True)
  columns = ["crop", "case", "step", "img/s", "time vs DeepLab2", "peak RSS",
             "peak RSS vs DeepLab2", "RSS before steps", "first loss"]
  if any("GPU peak" in row for row in rows):
    columns.append("GPU peak")
  return rows, columns, []


def _parse_args():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--deeplab2_root", required=True)
  parser.add_argument("--suite", default="inference",
                      choices=("inference", "train"))
  parser.add_argument("--deeplab2_config",
                      default="configs/coco/kmax_deeplab/"
                      "kmax_meta_r50_os32.textproto",
                      help="Relative to DIR/deeplab2.")
  parser.add_argument("--config_file",
                      default="configs/coco/kmax_r50_os32.textproto")
  parser.add_argument("--sizes", default="641x641,801x1201",
                      help="inference: HxW sizes.")
  parser.add_argument("--weights", default="fixture",
                      choices=("fixture", "random"))
  parser.add_argument("--reference_dir",
                      default=str(REPO.parent / "shared" / "reference"))
  parser.add_argument("--crops", default="257,385", help="train: square crops.")
  for name, default in (("image_seed", 0), ("repeats", 5), ("batch_size", 2),
                        ("steps", 3), ("warmup", 2), ("case_timeout", 3600)):
    parser.add_argument(f"--{name}", type=int, default=default)
  parser.add_argument("--child", help=argparse.SUPPRESS)
  parser.add_argument("--child_crop", help=argparse.SUPPRESS)
  return parser.parse_args()


def main():
  args = _parse_args()
  _import_deeplab2(args.deeplab2_root)
  if args.child:
    train_child(args)
    return
  start = time.time()
  suite = inference_suite if args.suite == "inference" else train_suite
  rows, columns, notes = suite(args)
  print("\n```bash\npython -m benchmarks.compare_deeplab2 "
        + " ".join(sys.argv[1:]) + "\n```\n")
  print(f"Machine: {export_formats.cpu_description()}; matmul 4096^3 "
        f"fp32 {harness.matmul_gflops():.0f} GFLOP/s, bf16 "
        f"{harness.matmul_gflops(dtype='bfloat16'):.0f} GFLOP/s. "
        f"{time.strftime('%Y-%m-%d')}, {time.time() - start:.0f} s.\n")
  harness.print_table(rows, columns)
  for note in notes:
    print(f"- {note}")


if __name__ == "__main__":
  main()
