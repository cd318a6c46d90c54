"""Two-worker MultiWorkerMirroredStrategy on loopback; kill -9 and resume.

Both start real processes (the train CLI, or a small driver per worker).
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time

from google.protobuf import text_format
import pytest
import tensorflow as tf
import trainer_test_utils as utils

from deeplab2_kmax.data import build_synthetic_data

_WORKER = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[3])
    import trainer_test_utils as utils
    from deeplab2_kmax.trainer import distribution
    from deeplab2_kmax.trainer import train_lib
    config = utils.lean_config(sys.argv[1], steps=2)
    config.trainer_options.solver_options.use_sync_batchnorm = True
    strategy = distribution.get_strategy()
    assert strategy.num_replicas_in_sync == 2, strategy
    train_lib.run_experiment(config, sys.argv[2], "train", strategy)
    print("DONE", strategy.cluster_resolver.task_id)
""")


def _free_ports(count):
  sockets = [socket.socket() for _ in range(count)]
  for s in sockets:
    s.bind(("localhost", 0))
  ports = [s.getsockname()[1] for s in sockets]
  for s in sockets:
    s.close()
  return ports


def test_two_workers_on_loopback_train(tmp_path):
  # Two shards, so each worker reads its own file.
  data_dir = str(tmp_path / "data")
  build_synthetic_data.build(data_dir, num_train=8, num_val=2, seed=0,
                             num_shards=2, image_size=64, progress=False)
  model_dir = str(tmp_path / "model")
  workers = [f"localhost:{port}" for port in _free_ports(2)]
  procs = []
  for task_id in range(2):
    env = dict(os.environ, TF_CONFIG=json.dumps({
        "cluster": {"worker": workers},
        "task": {"type": "worker", "index": task_id}}))
    procs.append(subprocess.Popen(
        [sys.executable, "-c", _WORKER, data_dir, model_dir,
         str(utils.REPO / "tests" / "trainer")],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
  outputs = [p.communicate(timeout=900) for p in procs]
  report = "\n".join(f"worker {task_id} (exit {p.returncode}):\n{err[-3000:]}"
                     for task_id, (p, (_, err)) in enumerate(zip(procs, outputs)))
  for task_id, (p, (out, err)) in enumerate(zip(procs, outputs)):
    assert p.returncode == 0, report
    assert f"DONE {task_id}" in out
  # The chief writes to model_dir; the other worker to its own folder.
  chief = tf.train.load_checkpoint(tf.train.latest_checkpoint(model_dir))
  assert chief.get_tensor("global_step/.ATTRIBUTES/VARIABLE_VALUE") == 2
  other = os.path.join(model_dir, "worker_1")
  assert tf.train.latest_checkpoint(other) is not None


def _train_command(config_path, model_dir):
  return [sys.executable, "-m", "deeplab2_kmax.trainer.train",
          f"--config_file={config_path}", f"--model_dir={model_dir}",
          "--mode=train"]


# About 160 s of CPU: out of the default run to hold it under 20 minutes on
# 2 cores (1239 s with it, 2026-12-03); the default run keeps a kill-and-
# restart check in tests/reliability/test_kill_restart.py. `pytest -m slow`
# runs it.
@pytest.mark.slow
def test_kill_9_then_restart_resumes_and_finishes(tmp_path):
  data_dir = utils.tiny_data(str(tmp_path))
  config = utils.tiny_config(data_dir, steps=16)
  config.trainer_options.steps_per_loop = 2
  config.trainer_options.save_checkpoints_steps = 2
  config_path = tmp_path / "tiny.textproto"
  config_path.write_text(text_format.MessageToString(config))
  model_dir = str(tmp_path / "model")

  proc = subprocess.Popen(_train_command(config_path, model_dir),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          start_new_session=True)
  deadline = time.time() + 600
  while time.time() < deadline and proc.poll() is None:
    latest = tf.train.latest_checkpoint(model_dir)
    if latest and int(latest.rsplit("-", 1)[1]) >= 2:
      break
    time.sleep(0.2)
  assert proc.poll() is None, "training ended before it could be killed"
  os.killpg(proc.pid, signal.SIGKILL)
  proc.wait()
  killed_at = int(tf.train.latest_checkpoint(model_dir).rsplit("-", 1)[1])
  assert 2 <= killed_at < 16

  restart = subprocess.run(_train_command(config_path, model_dir),
                           capture_output=True, text=True, timeout=900)
  assert restart.returncode == 0, restart.stderr[-3000:]
  # It restored the killed run's checkpoint rather than starting again.
  assert f"ckpt-{killed_at}" in restart.stderr
  reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(model_dir))
  assert reader.get_tensor("global_step/.ATTRIBUTES/VARIABLE_VALUE") == 16
  _check_console(restart, range(killed_at + 2, 17, 2))


def _check_console(run, steps):
  """Each line once, one per loop, loss terms not on the console."""
  assert run.stdout == ""  # Nothing printed beside the log (on stderr).
  lines = run.stderr.splitlines()
  loop_lines = [line for line in lines if re.search(r"\] step \d+/", line)]
  assert [int(re.search(r"step (\d+)/", line).group(1))
          for line in loop_lines] == list(steps)
  assert "ETA ?" in loop_lines[0]  # No steady-state time after one loop.
  assert all(re.search(r"ETA \d+m\d\ds$", line) for line in loop_lines[1:])
  assert "mask_id_cross_entropy" not in run.stderr
  assert "Sharding callback" not in run.stderr
  if not os.path.exists("/proc/driver/nvidia/version"):
    assert "cuInit" not in run.stderr
