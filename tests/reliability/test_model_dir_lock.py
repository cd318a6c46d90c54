"""One writer per model_dir: the chief's lock and stale-save clean-up."""

import json
import logging as py_logging
import os
import socket
import subprocess
import sys
import time

from absl import logging
import pytest

from deeplab2_kmax.trainer import run_lock
from deeplab2_kmax.trainer import train_lib

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "trainer"))
import trainer_test_utils as utils  # noqa: E402


def _write_lock(model_dir, **contents):
  with open(os.path.join(model_dir, run_lock.LOCK_FILE), "w") as f:
    json.dump(contents, f)


def _dead_pid():
  proc = subprocess.Popen([sys.executable, "-c", "pass"])
  proc.wait()
  return proc.pid  # Reaped: no process has it (reuse is unlikely at once).


@pytest.fixture
def warnings(caplog):
  # absl's handler may stop propagation; listen to its logger directly.
  logger = logging.get_absl_logger()
  logger.addHandler(caplog.handler)
  caplog.set_level(py_logging.INFO, logger=logger.name)
  yield caplog
  logger.removeHandler(caplog.handler)


def test_lock_records_holder_and_refuses_a_second_trainer(tmp_path):
  model_dir = str(tmp_path)
  lock = run_lock.acquire(model_dir)
  with open(os.path.join(model_dir, run_lock.LOCK_FILE)) as f:
    contents = json.load(f)
  assert contents["pid"] == os.getpid()
  assert contents["host"] == socket.gethostname()
  assert abs(contents["start_time"] - time.time()) < 60
  # A live holder on another host, started just now: refused, named.
  lock.release()
  assert not os.path.exists(os.path.join(model_dir, run_lock.LOCK_FILE))
  _write_lock(model_dir, pid=4242, host="other-host",
              start_time=time.time(), heartbeat=time.time())
  with pytest.raises(run_lock.LockHeldError,
                     match=r"pid 4242 on host other-host since \d{4}-"):
    run_lock.acquire(model_dir)
  # The same process cannot take its own held lock twice either.
  os.remove(os.path.join(model_dir, run_lock.LOCK_FILE))
  with run_lock.acquire(model_dir):
    with pytest.raises(run_lock.LockHeldError, match=f"pid {os.getpid()}"):
      run_lock.acquire(model_dir)


def test_dead_pid_lock_is_taken_over_with_a_warning(tmp_path, warnings):
  model_dir = str(tmp_path)
  pid = _dead_pid()
  _write_lock(model_dir, pid=pid, host=socket.gethostname(),
              start_time=time.time(), heartbeat=time.time())
  with run_lock.acquire(model_dir) as lock:
    assert lock.contents["pid"] == os.getpid()
  assert "Taking over the stale lock" in warnings.text
  assert f"pid {pid}" in warnings.text
  assert "no longer running" in warnings.text


def test_old_lock_is_taken_over_and_a_fresh_one_is_not(tmp_path, warnings):
  model_dir = str(tmp_path)
  beat = time.time() - 7200
  _write_lock(model_dir, pid=1, host="other-host", start_time=beat,
              heartbeat=beat)
  with pytest.raises(run_lock.LockHeldError, match="other-host"):
    run_lock.acquire(model_dir, max_age_s=3 * 3600)
  run_lock.acquire(model_dir, max_age_s=3600).release()
  assert "no heartbeat for 7" in warnings.text


def test_heartbeat_keeps_a_long_run_locked(tmp_path):
  model_dir = str(tmp_path)
  with run_lock.acquire(model_dir, max_age_s=0.4) as lock:
    started = lock.contents["heartbeat"]
    time.sleep(0.5)
    with open(os.path.join(model_dir, run_lock.LOCK_FILE)) as f:
      assert json.load(f)["heartbeat"] > started


class _Built(Exception):
  """Raised by a stand-in build_model: the run got as far as the model."""


def _build_model_raises(*unused_args, **unused_kwargs):
  raise _Built()


def test_released_on_exception_and_temp_folders_removed(tmp_path, warnings,
                                                        monkeypatch):
  data_dir = utils.tiny_data(str(tmp_path))
  model_dir = tmp_path / "model"
  for name in ("ckpt-6_temp", "ckpt-8_temp_0123abcdef", "keep_me"):
    (model_dir / name).mkdir(parents=True)
    (model_dir / name / "part-00000-of-00001.index").write_bytes(b"x")
  monkeypatch.setattr(train_lib.builders, "build_model", _build_model_raises)
  with pytest.raises(_Built):
    train_lib.run_experiment(utils.tiny_config(data_dir), str(model_dir),
                             "train")
  assert sorted(os.listdir(model_dir)) == ["keep_me"]
  assert "interrupted checkpoint save" in warnings.text
  # The lock was released: the next trainer starts without a warning.
  warnings.clear()
  run_lock.acquire(str(model_dir)).release()
  assert "stale" not in warnings.text


def test_run_experiment_refuses_a_held_lock_before_building(tmp_path,
                                                            monkeypatch):
  data_dir = utils.tiny_data(str(tmp_path))
  model_dir = str(tmp_path / "model")
  os.makedirs(model_dir)
  _write_lock(model_dir, pid=4242, host="other-host", start_time=time.time(),
              heartbeat=time.time())
  monkeypatch.setattr(train_lib.builders, "build_model", _build_model_raises)
  config = utils.tiny_config(data_dir)
  for mode in ("train", "train_and_eval"):
    with pytest.raises(train_lib.ExperimentError,
                       match="in use by another trainer.*pid 4242"):
      train_lib.run_experiment(config, model_dir, mode)
  # Evaluation does not take the lock: it gets as far as the model.
  with pytest.raises(_Built):
    train_lib.run_experiment(config, model_dir, "eval")


def test_train_cli_exits_non_zero_naming_the_holder(tmp_path):
  model_dir = str(tmp_path / "model")
  os.makedirs(model_dir)
  _write_lock(model_dir, pid=4242, host="other-host", start_time=time.time(),
              heartbeat=time.time())
  config = utils.DEMO_CONFIG
  result = subprocess.run(
      [sys.executable, "-m", "deeplab2_kmax.trainer.train",
       f"--config_file={config}", f"--model_dir={model_dir}", "--mode=train",
       f"--define=DATA_DIR={utils.tiny_data(str(tmp_path))}"],
      capture_output=True, text=True, timeout=300)
  assert result.returncode == 1, result.stderr[-2000:]
  assert "ERROR: model_dir" in result.stderr
  assert "pid 4242 on host other-host" in result.stderr
