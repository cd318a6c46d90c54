"""Tests for what a training run prints (trainer/console.py)."""

import logging as py_logging
import os

from absl import logging
from orbit import controller as orbit_controller
import pytest

from deeplab2_kmax.trainer import console


def test_eta_waits_for_a_steady_loop_and_ignores_tracing_and_evaluation():
  clock = console.StepClock()
  assert clock.eta(100) == "?"
  clock.loop_end(10, now=100.0)  # First loop: 100 s of tracing.
  assert clock.eta(100) == "?"
  clock.loop_end(20, now=130.0)  # 3 s/step: the first save traces too.
  assert clock.seconds_per_step() == pytest.approx(3.0)
  clock.loop_end(30, now=140.0)  # 1 s/step.
  clock.loop_end(40, now=200.0)  # 6 s/step: an evaluation ran.
  clock.loop_end(50, now=210.0)  # 1 s/step.
  # Intervals [3, 1, 6, 1]; the first dropped, median of [1, 6, 1].
  assert clock.seconds_per_step() == pytest.approx(1.0)
  assert clock.eta(50) == "0m50s"
  assert clock.eta(4000) == "1h06m40s"
  assert clock.eta(0) == "0m00s"


def test_orbit_lines_are_logged_once_and_the_loop_output_only_verbosely(
    capsys, caplog):
  with caplog.at_level(py_logging.INFO, logger="absl"):
    with console.orbit_logs_once():
      orbit_controller._log("restored from checkpoint: /m/ckpt-4")  # pylint: disable=protected-access
      orbit_controller._log("train | step:      6 | steps/sec:    4.2 | "  # pylint: disable=protected-access
                            "output: {'total_loss': 1.0}")
      orbit_controller._log("saved checkpoint to /m/ckpt-6.")  # pylint: disable=protected-access
  assert capsys.readouterr().out == ""
  messages = [record.getMessage() for record in caplog.records]
  assert messages == ["restored from checkpoint: /m/ckpt-4"]
  # Restored: outside the block Orbit prints again.
  orbit_controller._log("outside")  # pylint: disable=protected-access
  assert capsys.readouterr().out == "outside\n"


def test_tensorflow_info_lines_are_dropped_but_not_warnings(caplog):
  console.quiet_library_logs()
  absl_logger = py_logging.getLogger("absl")
  tf_file = os.path.join(os.sep, "x", "tensorflow", "python", "saver.py")
  records = [
      absl_logger.makeRecord("absl", level, tf_file, 1, message, (), None)
      for level, message in ((py_logging.INFO, "timing"),
                             (py_logging.WARNING, "careful"))]
  ours = absl_logger.makeRecord("absl", py_logging.INFO, __file__, 1,
                                "ours", (), None)
  assert [absl_logger.filter(r) for r in records + [ours]] == [
      False, True, True]
  with caplog.at_level(py_logging.INFO, logger="absl"):
    logging.info("still logged")  # The filter does not drop our own lines.
  assert "still logged" in caplog.text


def test_filtered_stderr_drops_only_the_no_gpu_lines(capfd):
  with console._filtered_stderr(console._NO_GPU_LINES):  # pylint: disable=protected-access
    os.write(2, b"E cuda_platform.cc:51] failed call to cuInit: 303\n"
                b"W something else\n"
                b"I cudart_stub.cc:31] Could not find cuda drivers\n")
  assert capfd.readouterr().err == "W something else\n"
