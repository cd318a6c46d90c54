"""Timing helpers shared by the benchmarks (never run by the test command).

Every figure is a median over repeats after warm-up, with its spread, so rows
measured in one run on one machine can be compared as ratios.
"""

import dataclasses
import statistics
import time
from typing import Callable
from typing import Dict
from typing import List
from typing import Optional


@dataclasses.dataclass
class Timing:
  median_s: float
  min_s: float
  max_s: float
  repeats: int

  @property
  def spread(self) -> str:
    return f"{self.min_s * 1e3:.1f}-{self.max_s * 1e3:.1f} ms"


def time_call(fn: Callable[[], object], warmup: int = 2, repeats: int = 5,
              sync: Optional[Callable[[object], object]] = None) -> Timing:
  """Times `fn()`; `sync(result)` forces the result (e.g. `.numpy()`)."""
  for _ in range(warmup):
    result = fn()
    if sync is not None:
      sync(result)
  durations = []
  for _ in range(repeats):
    start = time.perf_counter()
    result = fn()
    if sync is not None:
      sync(result)
    durations.append(time.perf_counter() - start)
  return Timing(statistics.median(durations), min(durations), max(durations),
                repeats)


def matmul_gflops(size: int = 4096, repeats: int = 3) -> float:
  """This machine's fp32 matrix-multiply rate (GFLOP/s), the roofline row."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  a = tf.random.normal([size, size])
  b = tf.random.normal([size, size])
  matmul = tf.function(tf.linalg.matmul)
  timing = time_call(lambda: matmul(a, b), warmup=1, repeats=repeats,
                     sync=lambda r: r.numpy())
  return 2 * size**3 / timing.median_s / 1e9


def print_table(rows: List[Dict[str, object]], columns: List[str]):
  """Prints rows (dicts) as a Markdown table with the given columns."""
  widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows))
            for c in columns}
  print("| " + " | ".join(c.ljust(widths[c]) for c in columns) + " |")
  print("|" + "|".join("-" * (widths[c] + 2) for c in columns) + "|")
  for row in rows:
    print("| " + " | ".join(str(row.get(c, "")).ljust(widths[c])
                            for c in columns) + " |")
