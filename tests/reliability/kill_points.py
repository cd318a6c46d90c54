r"""Runs the train CLI and SIGKILLs itself at one chosen point (a test helper).

  python kill_points.py KIND STEP BYTE_FRACTION -- <train.py flags>

KIND is where the process dies, STEP the global step it concerns (the step
being computed, or the number of the checkpoint being saved):

  mid_step   inside step STEP, in the host Hungarian matcher: the forward
             pass ran, no update applied (needs steps_per_loop 1);
  loop_end   after step STEP's update, before Orbit saves its checkpoint;
  shard      checkpoint STEP's data file cut at BYTE_FRACTION of its size,
             no index yet (as a kill in the middle of the data write leaves
             it), inside `ckpt-STEP_temp/`;
  merge      checkpoint STEP's temporary shard complete, before it is
             merged and renamed into place;
  state      `ckpt-STEP.index/.data` in place, before the `checkpoint` state
             file names them;
  sweep      checkpoint STEP recorded, max_to_keep deleting an old one: its
             index deleted, its data not yet;
  cleanup    at start-up, while the restart removes a stale `*_temp` folder:
             one file of it deleted (STEP unused);
  restore    at start-up, once the newest checkpoint is restored (or the
             model initialised), before the first step (STEP unused);
  none       no kill: a plain run.

Before dying it prints `KILL <kind> <step>` to stderr; the first training
loop prints `FIRST_STEP <global step>` (the step the run resumed from).

Grappler (TensorFlow's graph optimiser) is off: every launch traces and
optimises the training step anew, and the optimisation, which changes
nothing that is saved, costs a sixth of a launch's CPU time.
"""

import os
import runpy
import signal
import sys

_current = {"step": None, "save": None}


def _die(kind, step):
  print(f"KILL {kind} {step}", file=sys.stderr, flush=True)
  os.kill(os.getpid(), signal.SIGKILL)


def _patch_steps(kind, step):
  """Tracks the step being computed; kills in or after step `step`."""
  import orbit  # pylint: disable=g-import-not-at-top

  from deeplab2_kmax.losses import matching  # pylint: disable=g-import-not-at-top

  train_n_steps = orbit.Controller._train_n_steps  # pylint: disable=protected-access

  def patched_train_n_steps(self, num_steps):
    start = int(self.global_step.numpy())
    if _current["step"] is None:
      print(f"FIRST_STEP {start}", file=sys.stderr, flush=True)
    _current["step"] = start + 1
    output = train_n_steps(self, num_steps)
    if kind == "loop_end" and int(self.global_step.numpy()) == step:
      _die(kind, step)
    return output

  orbit.Controller._train_n_steps = patched_train_n_steps  # pylint: disable=protected-access
  restore_checkpoint = orbit.Controller.restore_checkpoint

  def patched_restore_checkpoint(self, *args, **kwargs):
    path = restore_checkpoint(self, *args, **kwargs)
    if kind == "restore":
      _die(kind, path)
    return path

  orbit.Controller.restore_checkpoint = patched_restore_checkpoint
  scipy_batch = matching._scipy_batch  # pylint: disable=protected-access

  def patched_scipy_batch(cost, valid):
    if kind == "mid_step" and _current["step"] == step:
      _die(kind, step)
    return scipy_batch(cost, valid)

  matching._scipy_batch = patched_scipy_batch  # pylint: disable=protected-access


def _patch_saves(kind, step, fraction):
  """Kills at one point of checkpoint `step`'s save."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tensorflow.python.checkpoint import checkpoint_management  # pylint: disable=g-import-not-at-top
  from tensorflow.python.ops import gen_io_ops  # pylint: disable=g-import-not-at-top
  from tensorflow.python.ops import io_ops  # pylint: disable=g-import-not-at-top

  manager_save = tf.train.CheckpointManager.save

  def save(self, checkpoint_number=None, *args, **kwargs):
    _current["save"] = (None if checkpoint_number is None
                        else int(checkpoint_number))
    return manager_save(self, checkpoint_number, *args, **kwargs)

  tf.train.CheckpointManager.save = save
  hit = lambda: _current["save"] == step

  save_v2 = io_ops.save_v2

  def cut_shard(prefix, *args, **kwargs):
    output = save_v2(prefix, *args, **kwargs)
    if kind == "shard" and hit():
      prefix = prefix.numpy().decode()
      data = prefix + ".data-00000-of-00001"
      os.truncate(data, int(os.path.getsize(data) * fraction))
      os.remove(prefix + ".index")
      _die(kind, step)
    return output

  io_ops.save_v2 = cut_shard
  merge = gen_io_ops.merge_v2_checkpoints

  def before_merge(*args, **kwargs):
    if kind == "merge" and hit():
      _die(kind, step)
    return merge(*args, **kwargs)

  gen_io_ops.merge_v2_checkpoints = before_merge
  update_state = checkpoint_management.update_checkpoint_state_internal

  def before_state(*args, **kwargs):
    if kind == "state" and hit():
      _die(kind, step)
    return update_state(*args, **kwargs)

  checkpoint_management.update_checkpoint_state_internal = before_state
  delete = checkpoint_management._delete_file_if_exists  # pylint: disable=protected-access

  def half_deleted(filespec):
    delete(filespec)
    if kind == "sweep" and hit() and filespec.endswith(".index"):
      _die(kind, step)

  checkpoint_management._delete_file_if_exists = half_deleted  # pylint: disable=protected-access


def _patch_cleanup():
  """Kills while a stale `*_temp` folder is half removed."""
  import shutil  # pylint: disable=g-import-not-at-top

  def half_removed(path, *unused_args, **unused_kwargs):
    names = sorted(os.listdir(path))
    if names:
      os.remove(os.path.join(path, names[0]))
    _die("cleanup", path)

  shutil.rmtree = half_removed


def main():
  kind, step, fraction = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
  assert sys.argv[4] == "--", sys.argv
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.optimizer.set_experimental_options(
      {"disable_meta_optimizer": True})
  if kind == "cleanup":
    _patch_cleanup()
  elif kind != "none":
    _patch_saves(kind, step, fraction)
  _patch_steps(kind, step)
  sys.argv = ["train"] + sys.argv[5:]
  runpy.run_module("deeplab2_kmax.trainer.train", run_name="__main__",
                   alter_sys=True)


if __name__ == "__main__":
  main()
