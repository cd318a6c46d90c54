"""Timing helpers shared by the benchmarks (never run by the test command).

Every figure is a median over repeats after warm-up, with its spread, so rows
measured in one run on one machine can be compared as ratios.
"""

import dataclasses
import json
import resource
import statistics
import subprocess
import time
from typing import Callable
from typing import Dict
from typing import List
from typing import Mapping
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


def time_alternating(fns: Mapping[str, Callable[[], object]],
                     warmup: int = 2, repeats: int = 5,
                     sync: Optional[Callable[[object], object]] = None
                     ) -> Dict[str, Timing]:
  """Times several calls in turn (a, b, c, a, b, c, ...) in one process.

  Alternating spreads the machine's load changes (other processes on shared
  cores) over every call alike, so the ratios of the medians hold even when
  the absolute times drift.
  """
  for _ in range(warmup):
    for fn in fns.values():
      result = fn()
      if sync is not None:
        sync(result)
  durations = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      start = time.perf_counter()
      result = fn()
      if sync is not None:
        sync(result)
      durations[name].append(time.perf_counter() - start)
  return {name: Timing(statistics.median(d), min(d), max(d), repeats)
          for name, d in durations.items()}


def peak_rss_mib() -> float:
  """This process's peak resident memory so far (MiB; Linux ru_maxrss)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


_CHILD_RESULT = "CHILD_RESULT "


def print_child_result(result: Mapping[str, object]):
  """Prints a measurement for `run_child` (one JSON line on stdout)."""
  print(_CHILD_RESULT + json.dumps(result), flush=True)


def run_child(command: List[str], cwd: str, timeout_s: float
              ) -> Optional[Dict[str, object]]:
  """Runs one measurement in its own process (so its peak memory is its own)
  and returns what it passed to `print_child_result`; None, with the tail of
  its stderr printed, if it failed."""
  done = subprocess.run(command, cwd=cwd, capture_output=True, text=True,
                        timeout=timeout_s, check=False)
  lines = [line for line in done.stdout.splitlines()
           if line.startswith(_CHILD_RESULT)]
  if done.returncode or not lines:
    tail = "\n".join(done.stderr.splitlines()[-15:])
    print(f"FAILED (exit {done.returncode}): {' '.join(command)}\n{tail}",
          flush=True)
    return None
  return json.loads(lines[-1][len(_CHILD_RESULT):])


def matmul_gflops(size: int = 4096, repeats: int = 3,
                  dtype: str = "float32") -> float:
  """This machine's matrix-multiply rate (GFLOP/s) in `dtype` (default fp32,
  the roofline row; "bfloat16" for the rate mixed precision can reach)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  a = tf.cast(tf.random.normal([size, size]), dtype)
  b = tf.cast(tf.random.normal([size, size]), dtype)
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
