r"""k-means vs softmax cross-attention on the demo model, PQ over training steps.

  python -m benchmarks.ablation_cross_attention --output_dir=/tmp/ablation \
      [--seeds=0,1,2] [--training_steps=800] [--eval_interval=200] \
      [--eval_batches=13] [--pretrained_encoder=PREFIX | --pretrain_steps=2000] \
      [--config=configs/synthetic/kmax_tiny_plain_os8.textproto] \
      [--doc=docs/ablation_cross_attention.md]

The paper's claim for k-means cross-attention (Table 5a) is faster
convergence, so every run is evaluated on the held-out split every
`--eval_interval` steps, not only at the end. Both variants start from the
same pretrained encoder (pretrained once by `trainer.pretrain_encoder`, or
given), the same data, schedule and seeds; only
`transformer_decoder.cross_attention` changes. Each run is a fresh process,
so runs share no state; a finished run is read back, never redone.

Writes a Markdown report to `--doc`: PQ and PQ^Th (mean ± std over seeds) at
every evaluated step, the end point for every metric, and every run. Text
below the line `<!-- written by hand below -->` in an existing `--doc` is
kept. Not a test.
"""

import argparse
import glob
import json
import os
import platform
import statistics
import subprocess
import sys
import time

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CONFIG = os.path.join(_REPO, "configs", "synthetic",
                       "kmax_tiny_plain_os8.textproto")
_ATTENTIONS = ("kmeans", "softmax")
_METRICS = ("PQ", "PQ_Th", "PQ_St", "AP_Mask", "mIoU")
_HAND_MARKER = "<!-- written by hand below -->"


def read_eval_curve(model_dir: str):
  """{step: {metric: value}} from the eval summaries of `model_dir`."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  curve = {}
  for path in sorted(glob.glob(os.path.join(model_dir, "eval", "events.*"))):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        if value.tag in _METRICS:
          curve.setdefault(int(event.step), {})[value.tag] = float(
              tf.make_ndarray(value.tensor))
  return curve


def _run_one(output_dir, attention, seed, args, data_dir, encoder):
  """Trains and evaluates one (attention, seed) in a fresh process."""
  run_dir = os.path.join(output_dir, f"{attention}_seed{seed}")
  result_file = os.path.join(run_dir, "result.json")
  if os.path.exists(result_file):  # Finished earlier: keep, never redo.
    with open(result_file) as f:
      return json.load(f)
  os.makedirs(run_dir, exist_ok=True)
  model_dir = os.path.join(run_dir, "model")
  # A run interrupted after a checkpoint resumes; its time is not comparable.
  resumed = os.path.exists(os.path.join(model_dir, "checkpoint"))
  code = (
      "from absl import flags, logging\n"
      "flags.FLAGS(['ablation'])\n"
      "logging.set_verbosity(logging.INFO)  # The trainer's progress lines.\n"
      "from deeplab2_kmax.tools import demo\n"
      "from deeplab2_kmax.trainer import train_lib\n"
      f"config = demo.load_demo_config({args.config!r}, {data_dir!r}, "
      f"{args.training_steps!r}, {attention!r}, {seed!r}, None, "
      f"{encoder!r})\n"
      f"config.evaluator_options.eval_interval = {args.eval_interval!r}\n"
      f"config.evaluator_options.eval_steps = {args.eval_batches!r}\n"
      f"train_lib.run_experiment(config, {model_dir!r}, "
      "mode='train_and_eval')\n")
  start = time.time()
  subprocess.run([sys.executable, "-c", code], check=True)
  seconds = time.time() - start
  print(f"{attention} seed {seed}: {seconds:.0f} s", flush=True)
  result = {"curve": {str(k): v for k, v in
                      sorted(read_eval_curve(model_dir).items())},
            "seconds": seconds, "resumed": resumed}
  with open(result_file, "w") as f:
    json.dump(result, f, indent=1)
  return result


def _pretrained_encoder(args, output_dir, data_dir):
  if args.pretrained_encoder:
    return os.path.abspath(args.pretrained_encoder)
  from deeplab2_kmax.tools import demo  # pylint: disable=g-import-not-at-top
  return demo.pretrain_encoder_once(args.config, data_dir, output_dir,
                                    args.pretrain_steps)


def _mean_std(values):
  values = [100 * v for v in values]
  if len(values) < 2:
    return f"{values[0]:.1f}"
  return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def _report(results, seeds, command, encoder):
  """The Markdown report (tables over steps, end point, every run)."""
  steps = sorted({int(s) for r in results.values() for s in r["curve"]})
  lines = [
      "# k-means vs softmax cross-attention (synthetic demo)", "",
      "The demo model (`configs/synthetic/kmax_tiny_plain_os8.textproto`) "
      "trained from the same pretrained encoder with the same data, schedule "
      "and settings; only `transformer_decoder.cross_attention` and the seed "
      "change (paper Table 5a compares the same two on COCO). Evaluated on "
      "the held-out split during training.", "",
      f"Command: `{command}`  ",
      f"Pretrained encoder: `{encoder}`  ",
      f"Machine: {platform.processor() or platform.machine()}, "
      f"{os.cpu_count()} CPUs.", ""]
  for metric, label in (("PQ", "PQ"), ("PQ_Th", "PQ^Th")):
    lines += [f"{label} over training steps (mean ± std over "
              f"{len(seeds)} seeds):", "",
              "| cross-attention | " + " | ".join(
                  f"step {s}" for s in steps) + " |",
              "|---|" + "---|" * len(steps)]
    for attention in _ATTENTIONS:
      cells = []
      for step in steps:
        values = [results[(attention, seed)]["curve"].get(str(step), {})
                  .get(metric) for seed in seeds]
        values = [v for v in values if v is not None]
        cells.append(_mean_std(values) if values else "—")
      lines.append(f"| {attention} | " + " | ".join(cells) + " |")
    lines.append("")
  last = str(steps[-1])
  lines += [f"End point (step {last}):", "",
            "| cross-attention | " + " | ".join(_METRICS) + " | min/run |",
            "|---|" + "---|" * (len(_METRICS) + 1)]
  for attention in _ATTENTIONS:
    runs = [results[(attention, s)] for s in seeds]
    cells = [_mean_std([r["curve"][last][m] for r in runs])
             for m in _METRICS]
    fresh = [r["seconds"] for r in runs if not r.get("resumed")]
    minutes = f"{statistics.mean(fresh) / 60:.1f}" if fresh else "—"
    lines.append(f"| {attention} | " + " | ".join(cells) + f" | {minutes} |")
  lines += ["", "Every run (PQ at each evaluated step; min counts runs "
            "trained in one go):", "",
            "| cross-attention | seed | " + " | ".join(
                f"step {s}" for s in steps) + " | min |",
            "|---|---|" + "---|" * (len(steps) + 1)]
  for (attention, seed), r in sorted(results.items()):
    cells = [f"{100 * r['curve'][str(s)]['PQ']:.1f}"
             if str(s) in r["curve"] else "—" for s in steps]
    minutes = "resumed" if r.get("resumed") else f"{r['seconds'] / 60:.1f}"
    lines.append(f"| {attention} | {seed} | " + " | ".join(cells)
                 + f" | {minutes} |")
  return "\n".join(lines) + "\n"


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--output_dir", required=True)
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--config", default=_CONFIG)
  parser.add_argument("--training_steps", type=int, default=800)
  parser.add_argument("--eval_interval", type=int, default=200)
  parser.add_argument("--eval_batches", type=int, default=13,
                      help="Held-out batches of 8 per evaluation (-1: all).")
  parser.add_argument("--pretrained_encoder", default="",
                      help="Checkpoint prefix from trainer.pretrain_encoder; "
                      "default: pretrain one into OUTPUT/pretrained_encoder.")
  parser.add_argument("--pretrain_steps", type=int, default=2000)
  parser.add_argument("--doc", default="docs/ablation_cross_attention.md")
  args = parser.parse_args()
  if args.pretrained_encoder and not os.path.exists(
      args.pretrained_encoder + ".index"):
    parser.error(f"--pretrained_encoder: no checkpoint at "
                 f"{args.pretrained_encoder} (expected "
                 f"{args.pretrained_encoder}.index)")
  seeds = [int(s) for s in args.seeds.split(",")]
  output_dir = os.path.abspath(args.output_dir)
  data_dir = os.path.join(output_dir, "data")

  from deeplab2_kmax.tools import demo  # pylint: disable=g-import-not-at-top
  demo.prepare_data(data_dir, 2000, 200, 0)
  encoder = _pretrained_encoder(args, output_dir, data_dir)
  results = {}
  for seed in seeds:  # Alternate so a partial run still compares both.
    for attention in _ATTENTIONS:
      results[(attention, seed)] = _run_one(output_dir, attention, seed, args,
                                            data_dir, encoder)

  command = "python -m benchmarks.ablation_cross_attention " + " ".join(
      sys.argv[1:])
  text = _report(results, seeds, command, encoder)
  print(text)
  hand = ""
  if os.path.exists(args.doc):
    with open(args.doc) as f:
      previous = f.read()
    if _HAND_MARKER in previous:
      hand = previous[previous.index(_HAND_MARKER):]
  with open(args.doc, "w") as f:
    f.write(text + ("\n" + hand if hand else ""))


if __name__ == "__main__":
  main()
