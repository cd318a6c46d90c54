r"""Hungarian matching time per batch: host (SciPy) vs in-graph (SPEC §10).

  python -m benchmarks.bench_matching [--batch=8] [--slots=128] [--masks=100]

Cost matrices [batch, masks, slots] as the loss builds them (random here);
both implementations must reach the same total cost. Not a test.
"""

import argparse

import numpy as np
import tensorflow as tf

from benchmarks import harness
from deeplab2_kmax.losses import matching


def measure(batch=8, slots=128, masks=100, repeats=5):
  """Returns [(name, Timing)] and checks both give the same total cost."""
  rng = np.random.default_rng(0)
  cost = tf.constant(rng.standard_normal((batch, masks, slots)), tf.float32)
  valid = tf.ones([batch, masks], tf.bool)
  cases = [
      ("scipy (host, tf.numpy_function)", tf.function(matching.scipy_matching)),
      ("in-graph tf.function", tf.function(matching.tensorflow_matching)),
      ("in-graph XLA", tf.function(matching.tensorflow_matching,
                                   jit_compile=True)),
  ]
  rows, totals = [], []
  for name, fn in cases:
    timing = harness.time_call(lambda fn=fn: fn(cost, valid), warmup=2,
                               repeats=repeats, sync=lambda r: r.numpy())
    totals.append(float(tf.reduce_sum(fn(cost, valid) * cost)))
    rows.append((f"{name} b{batch} K={masks} N={slots}", timing))
  if max(totals) - min(totals) > 1e-3 * abs(totals[0]):
    raise AssertionError(f"implementations disagree: {totals}")
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--slots", type=int, default=128)
  parser.add_argument("--masks", type=int, default=100)
  args = parser.parse_args()
  rows = [{"implementation": name, "median": f"{t.median_s * 1e3:.1f} ms",
           "spread": t.spread}
          for name, t in measure(args.batch, args.slots, args.masks)]
  harness.print_table(rows, ["implementation", "median", "spread"])


if __name__ == "__main__":
  main()
