r"""k-means vs softmax cross-attention on the synthetic demo (paper Table 5a).

  python -m benchmarks.ablation_cross_attention --output_dir=/tmp/ablation \
      [--seeds=0,1,2] [--training_steps=N] [--doc=docs/ablation_cross_attention.md]

Trains the from-scratch ResNet-50 demo model
(configs/synthetic/kmax_tiny_r50_os32.textproto, no pretraining, no shipped
checkpoint) once per (cross-attention, seed) with the same data, budget and
everything else, evaluates PQ on the held-out
split, and writes a Markdown table (mean ± std over seeds, and every run) to
`--doc` with the command that produced it. Each run is a fresh process so
runs cannot share state. Not a test.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

_METRICS = ("PQ", "PQ_Th", "PQ_St", "AP_Mask", "mIoU")
_CONFIG = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
    "synthetic", "kmax_tiny_r50_os32.textproto")


def _run_one(output_dir: str, attention: str, seed: int, steps, data_dir):
  run_dir = os.path.join(output_dir, f"{attention}_seed{seed}")
  result_file = os.path.join(run_dir, "result.json")
  if os.path.exists(result_file):  # Finished earlier: keep, never redo.
    with open(result_file) as f:
      return json.load(f)
  os.makedirs(run_dir, exist_ok=True)
  # A run interrupted after a checkpoint resumes; its time is not comparable.
  resumed = os.path.exists(os.path.join(run_dir, "model", "checkpoint"))
  code = (
      "import json, sys\n"
      "from absl import flags\n"
      "flags.FLAGS(['demo'])\n"
      "from deeplab2_kmax.tools import demo\n"
      f"r = demo.run_demo({run_dir!r}, cross_attention={attention!r}, "
      f"random_seed={seed}, training_steps={steps!r}, skip_export=True, "
      f"data_dir={data_dir!r}, config_file={_CONFIG!r}, "
      "initial_checkpoint=None)\n"
      f"json.dump({{'metrics': {{k: float(v) for k, v in r['metrics'].items()}}, "
      f"'seconds': r['seconds'], 'resumed': {resumed!r}}}, "
      f"open({result_file!r}, 'w'))\n")
  start = time.time()
  subprocess.run([sys.executable, "-c", code], check=True)
  print(f"{attention} seed {seed}: {time.time() - start:.0f} s", flush=True)
  with open(result_file) as f:
    return json.load(f)


def _mean_std(values):
  if len(values) < 2:
    return f"{100 * values[0]:.1f}"
  return (f"{100 * statistics.mean(values):.1f} ± "
          f"{100 * statistics.stdev(values):.1f}")


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--output_dir", required=True)
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--training_steps", type=int, default=None)
  parser.add_argument("--doc", default="docs/ablation_cross_attention.md")
  args = parser.parse_args()
  seeds = [int(s) for s in args.seeds.split(",")]
  data_dir = os.path.join(os.path.abspath(args.output_dir), "data")

  results = {}
  for attention in ("kmeans", "softmax"):
    for seed in seeds:
      results[(attention, seed)] = _run_one(
          os.path.abspath(args.output_dir), attention, seed,
          args.training_steps, data_dir)

  command = "python -m benchmarks.ablation_cross_attention " + " ".join(
      sys.argv[1:])
  lines = [
      "# k-means vs softmax cross-attention (synthetic demo)", "",
      "The demo model of `configs/synthetic/kmax_tiny_r50_os32.textproto`, "
      "trained and evaluated with the same data, steps and settings; only "
      "`transformer_decoder.cross_attention` and the seed change "
      "(paper Table 5a compares the same two on COCO).", "",
      f"Command: `{command}`  ",
      f"Machine: {platform.processor() or platform.machine()}, "
      f"{os.cpu_count()} CPUs.", "",
      "| cross-attention | " + " | ".join(_METRICS) + " | min/run |",
      "|---|" + "---|" * (len(_METRICS) + 1)]
  for attention in ("kmeans", "softmax"):
    runs = [results[(attention, s)] for s in seeds]
    cells = [_mean_std([r["metrics"].get(m, float("nan")) for r in runs])
             for m in _METRICS]
    fresh = [r["seconds"] for r in runs if not r.get("resumed")]
    minutes = f"{statistics.mean(fresh) / 60:.1f}" if fresh else "—"
    lines.append(f"| {attention} (mean ± std, {len(seeds)} seeds) | "
                 + " | ".join(cells) + f" | {minutes} |")
  lines += ["", "Every run (min/run counts runs trained in one go, not those "
            "resumed from a checkpoint):", "",
            "| cross-attention | seed | PQ | PQ_Th | PQ_St | min |",
            "|---|---|---|---|---|---|"]
  for (attention, seed), r in sorted(results.items()):
    m = r["metrics"]
    minutes = "resumed" if r.get("resumed") else f"{r['seconds'] / 60:.1f}"
    lines.append(f"| {attention} | {seed} | {100 * m['PQ']:.1f} | "
                 f"{100 * m['PQ_Th']:.1f} | {100 * m['PQ_St']:.1f} | "
                 f"{minutes} |")
  text = "\n".join(lines) + "\n"
  print(text)
  with open(args.doc, "w") as f:
    f.write(text)


if __name__ == "__main__":
  main()
