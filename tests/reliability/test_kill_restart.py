"""kill -9 at chosen points of a training run, restart, finish (issue 22).

One model_dir, one chain: the train CLI runs under `kill_points.py`, which
SIGKILLs the process at one point (in a step, after a step, at four points
of a checkpoint save, at two points of the restart itself), then the same
command restarts it; the last restart trains to the configured step. Points and steps come from a seeded generator
(`KILL_RESTART_SEED`, printed with the plan) so a failure reproduces.

A checkpoint is *committed* once the `checkpoint` state file names it: that
is the last write of a TF save, so a save killed earlier (even one whose
`ckpt-N.index/.data` are already in place) is not resumed from; training
redoes its steps. After every kill the checks are: the restart took over the
dead trainer's lock, removed the `*_temp` folders of the interrupted save and
resumed from the newest committed checkpoint (logged path and first step);
every checkpoint max_to_keep keeps is readable, finite and byte-identical to
what it was when committed. At the end: the final step, no `_temp` left, the
lock released.
"""

import functools
import glob
import hashlib
import os
import pathlib
import re
import signal
import subprocess
import sys

from google.protobuf import text_format
import numpy as np
import pytest
import tensorflow as tf

from deeplab2_kmax.trainer import run_lock

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "trainer"))
import trainer_test_utils as utils  # noqa: E402  pylint: disable=g-import-not-at-top

_KILLER = pathlib.Path(__file__).resolve().parent / "kill_points.py"
_STEP = "global_step/.ATTRIBUTES/VARIABLE_VALUE"
_KEEP = 2  # trainer_options.num_checkpoints_to_keep
# Where kill_points.py kills: in a step, at four points of a checkpoint save,
# in the restart (after the restore; while it removes a stale `_temp`).
_ALL_KINDS = ("mid_step", "loop_end", "shard", "merge", "state", "sweep",
              "restore")
# The default run: every launch that trains traces the step anew (about
# 30 s of CPU), so it kills at two save points, in a step and twice in the
# restart (cheap: no step traced). The slow test runs every point.
_FAST_KINDS = ("mid_step", "shard", "state", "restore")


def _plan(rng, kinds):
  """[(kind, step, byte fraction)] in a random order, and the final step.

  `cleanup` follows the first save that leaves a `_temp` folder.
  """
  plan, resume = [], 0
  for kind in rng.permutation(kinds):
    # At least one step saved first: each restart has a newer checkpoint.
    step = resume + int(rng.integers(2, 4))
    if kind == "sweep":  # max_to_keep must have something to delete.
      step = max(step, _KEEP + 1)
    plan.append((str(kind), step, round(float(rng.uniform(0.05, 0.95)), 3)))
    if kind == "restore":
      continue  # Nothing trained, nothing saved.
    # The save of `step` is committed only when the kill is in the sweep.
    resume = step if kind == "sweep" else step - 1
    if kind in ("shard", "merge") and not any(
        k == "cleanup" for k, _, _ in plan):
      plan.append(("cleanup", step, 0.0))
  return plan, resume + 2


def _config_file(tmp_path, data_dir, steps):
  """The tiny trainer config, smaller still: every launch traces it anew."""
  config = utils.lean_config(data_dir, steps=steps)
  trainer = config.trainer_options
  trainer.save_prediction_images_steps = 0
  trainer.steps_per_loop = 1  # A loop, a summary and a checkpoint per step.
  trainer.save_checkpoints_steps = 1
  trainer.save_summaries_steps = 1
  trainer.num_checkpoints_to_keep = _KEEP
  path = tmp_path / "tiny.textproto"
  path.write_text(text_format.MessageToString(config))
  return path


def _launch(kind, step, fraction, config_path, model_dir):
  command = [sys.executable, str(_KILLER), kind, str(step), str(fraction),
             "--", f"--config_file={config_path}", f"--model_dir={model_dir}",
             "--mode=train"]
  return subprocess.run(command, stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT, text=True, timeout=600)


def _md5(paths):
  digest = hashlib.md5()
  for path in sorted(paths):
    with open(path, "rb") as f:
      digest.update(f.read())
  return digest.hexdigest()


def _committed(model_dir):
  """{prefix: md5 of its files} of the checkpoints max_to_keep keeps."""
  state = tf.train.get_checkpoint_state(model_dir)
  if state is None:
    return {}
  listed = [os.path.join(model_dir, os.path.basename(p))
            for p in state.all_model_checkpoint_paths]
  # Listed beyond max_to_keep: one a killed sweep was deleting.
  kept = listed[-_KEEP:]
  assert os.path.join(model_dir, os.path.basename(
      state.model_checkpoint_path)) == kept[-1]
  return {prefix: _md5(glob.glob(prefix + ".*")) for prefix in kept}


def _step_of(prefix):
  return int(prefix.rsplit("-", 1)[1])


def _check_readable_and_finite(prefixes):
  for prefix in prefixes:
    reader = tf.train.load_checkpoint(prefix)
    assert reader.get_tensor(_STEP) == _step_of(prefix), prefix
    for name, dtype in reader.get_variable_to_dtype_map().items():
      if dtype.is_floating:
        assert np.isfinite(reader.get_tensor(name)).all(), (prefix, name)


def _check_nothing_lost(before, after):
  """Kept checkpoints are unchanged; a dropped one was max_to_keep's."""
  for prefix, digest in before.items():
    if prefix in after:
      assert after[prefix] == digest, f"{prefix} was rewritten"
    else:
      newer = [p for p in after if _step_of(p) > _step_of(prefix)]
      assert len(newer) >= _KEEP, f"{prefix} lost; kept {sorted(after)}"


def _check_restart(output, kind, before, temp_dirs, lock_left):
  """The restart took over, cleaned up and resumed from the newest commit."""
  if lock_left:
    assert "Taking over the stale lock" in output
    assert "its process is no longer running" in output
  for path in temp_dirs:
    assert re.search(f"Removing {re.escape(path)}.*interrupted checkpoint "
                     "save", output), path
  if kind == "cleanup":  # Died before restoring.
    return
  newest = max(before, key=_step_of) if before else None
  if newest is None:
    assert "restored model from" not in output
  else:
    assert f"restored model from {newest}." in output
  match = re.search(r"FIRST_STEP (\d+)", output)
  if kind != "restore":  # Trained: from the restored step.
    assert match and int(match.group(1)) == (
        _step_of(newest) if newest else 0), output[-3000:]


def _run_and_check(launch, model_dir, kind, step):
  """One launch; returns its output after the checks every launch passes."""
  before = _committed(model_dir)
  temp_dirs = sorted(glob.glob(os.path.join(model_dir, "*_temp*")))
  lock_left = os.path.exists(os.path.join(model_dir, run_lock.LOCK_FILE))
  result = launch()
  tail = result.stdout[-4000:]
  if kind == "none":
    assert result.returncode == 0, tail
  else:
    assert result.returncode == -signal.SIGKILL, tail
    assert f"KILL {kind} " in result.stdout, tail
  _check_restart(result.stdout, kind, before, temp_dirs, lock_left)
  after = _committed(model_dir)
  _check_readable_and_finite(after)
  _check_nothing_lost(before, after)
  if kind in ("shard", "merge"):
    assert glob.glob(os.path.join(model_dir, f"ckpt-{step}_temp*")), (
        "the killed save left no temporary folder")
  return result.stdout


def _kill_restart_chain(tmp_path, kinds):
  """Kills at every point of a seeded plan, restarts, checks the end."""
  seed = int(os.environ.get("KILL_RESTART_SEED", "22"))
  plan, total = _plan(np.random.default_rng(seed), kinds)
  print(f"KILL_RESTART_SEED={seed}: kills {plan}, final step {total}")
  config_path = _config_file(tmp_path, utils.tiny_data(str(tmp_path)), total)
  model_dir = str(tmp_path / "model")
  for kind, step, fraction in plan + [("none", total, 0.0)]:
    launch = functools.partial(_launch, kind, step, fraction, config_path,
                               model_dir)
    try:
      _run_and_check(launch, model_dir, kind, step)
    except AssertionError as e:
      pytest.fail(f"KILL_RESTART_SEED={seed}, at ({kind}, {step}, "
                  f"{fraction}) of {plan}: {e}")
  committed = _committed(model_dir)
  assert _step_of(max(committed, key=_step_of)) == total
  reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(model_dir))
  assert reader.get_tensor(_STEP) == total
  assert not glob.glob(os.path.join(model_dir, "*_temp*"))
  assert not os.path.exists(os.path.join(model_dir, run_lock.LOCK_FILE))
  return plan


def test_kill_9_in_a_step_a_save_and_a_restart_then_finish(tmp_path):
  plan = _kill_restart_chain(tmp_path, _FAST_KINDS)
  assert len(plan) == 5


@pytest.mark.slow
def test_kill_9_at_every_point_then_finish(tmp_path):
  plan = _kill_restart_chain(tmp_path, _ALL_KINDS)
  assert len(plan) == 8
