"""What a training run prints: each line once, one line per loop.

- Orbit's controller prints every message to stdout and logs it too, and
  logs the whole loop output (about 35 loss terms); `orbit_logs_once` keeps
  its messages in the log only, and moves the per-loop output and the
  checkpoint lines to verbosity 1 (the trainer logs its own line per loop;
  every loss term still goes to TensorBoard).
- `StepClock` estimates the time left from the steady-state time per step:
  the first loop of a process (graph tracing) and loops that ran an
  evaluation do not count.
- `init_devices` initialises TensorFlow's devices; on a machine without an
  NVIDIA driver it drops TensorFlow's CUDA start-up error line, which only
  says that there is no GPU.
"""

import contextlib
import logging as py_logging
import os
import re
import statistics
import sys
import tempfile
import time
from typing import Iterator
from typing import Optional

from absl import logging

# TensorFlow and Orbit are imported inside the functions: `init_devices`
# must run before anything imports TensorFlow.

# Orbit messages that the trainer's own loop line replaces.
_PER_LOOP = re.compile(r"^\s*train \| step:\s*\d+ \| steps/sec|^saved checkpoint")
# TensorFlow's lines on a machine without an NVIDIA driver.
_NO_GPU_LINES = re.compile(r"failed call to cuInit|Could not find cuda drivers"
                           r"|cuda_(driver|platform|executor)\.cc")
_NVIDIA_DRIVER = "/proc/driver/nvidia/version"


def _log_once(message: str) -> None:
  if _PER_LOOP.search(message):
    logging.vlog(1, "%s", message)
  else:
    logging.info("%s", message)


logging.ABSLLogger.register_frame_to_skip(__file__, _log_once.__name__)


@contextlib.contextmanager
def orbit_logs_once() -> Iterator[None]:
  """Within the block, Orbit's controller logs (never prints) its lines."""
  from orbit import controller as orbit_controller  # pylint: disable=g-import-not-at-top
  original = orbit_controller._log  # pylint: disable=protected-access
  orbit_controller._log = _log_once  # pylint: disable=protected-access
  try:
    yield
  finally:
    orbit_controller._log = original  # pylint: disable=protected-access


def _not_tensorflow_info(record: py_logging.LogRecord) -> bool:
  return (record.levelno >= py_logging.WARNING
          or f"{os.sep}tensorflow{os.sep}" not in record.pathname)


def quiet_library_logs() -> None:
  """TensorFlow's own Python INFO lines (saver timings, ...) are dropped.

  They come through TensorFlow's logger and through absl's (which TensorFlow
  modules also use); warnings and errors stay.
  """
  py_logging.getLogger("tensorflow").setLevel(py_logging.WARNING)
  absl_logger = py_logging.getLogger("absl")
  if _not_tensorflow_info not in absl_logger.filters:
    absl_logger.addFilter(_not_tensorflow_info)


class StepClock:
  """Seconds per step in the steady state, from loop end to loop end.

  Loop-to-loop time includes checkpointing and summaries (real costs of the
  run) but not the first loop of the process, which traces the graph. The
  median of the last `window` loops ignores loops that also evaluated.
  """

  def __init__(self, window: int = 10):
    self._window = window
    self._last_end: Optional[float] = None
    self._last_step: Optional[int] = None
    self._rates = []

  def loop_end(self, step: int, now: Optional[float] = None) -> None:
    now = time.time() if now is None else now
    if self._last_end is not None and step > self._last_step:
      self._rates.append((now - self._last_end) / (step - self._last_step))
      self._rates = self._rates[-self._window:]
    self._last_end, self._last_step = now, step

  def seconds_per_step(self) -> Optional[float]:
    # The first interval also holds one-time costs (the first checkpoint
    # save traces its functions); dropped once there are three.
    rates = self._rates[1:] if len(self._rates) >= 3 else self._rates
    return statistics.median(rates) if rates else None

  def eta(self, steps_left: int) -> str:
    """`"1m05s"`, or `"?"` before a steady-state loop was seen."""
    rate = self.seconds_per_step()
    if steps_left <= 0:
      return "0m00s"
    if rate is None:
      return "?"
    seconds = int(round(steps_left * rate))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
      return f"{hours}h{minutes:02d}m{seconds:02d}s"
    return f"{minutes}m{seconds:02d}s"


def _has_nvidia_driver() -> bool:
  return os.path.exists(_NVIDIA_DRIVER)


@contextlib.contextmanager
def _filtered_stderr(pattern: re.Pattern) -> Iterator[None]:
  """Captures file descriptor 2 (C++ logs too); re-emits non-matching lines."""
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as capture:
    os.dup2(capture.fileno(), 2)
    try:
      yield
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      capture.seek(0)
      kept = [line for line in capture.read().decode(errors="replace")
              .splitlines(keepends=True) if not pattern.search(line)]
      if kept:
        sys.stderr.write("".join(kept))
        sys.stderr.flush()


def init_devices() -> None:
  """Imports TensorFlow and lists its devices, quietly where there is no GPU.

  Call it before anything else imports TensorFlow.
  """
  if _has_nvidia_driver():
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    tf.config.list_physical_devices()
    return
  with _filtered_stderr(_NO_GPU_LINES):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    tf.config.list_physical_devices()
