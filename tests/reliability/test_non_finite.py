"""Fault injection: NaN/Inf in training never reaches a checkpoint (issue 22).

Divergence is made deterministic: a NaN loss at chosen steps (the built
loss wrapped) or a NaN matching cost (the host matcher's input wrapped). Each run checks the named error (step and
quantity), that every checkpoint written holds finite weights, and which
checkpoint is the latest.
"""

import glob
import os
import pathlib
import sys

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from deeplab2_kmax import builders
from deeplab2_kmax.losses import matching
from deeplab2_kmax.losses import max_deeplab_loss
from deeplab2_kmax.trainer import checkpoint_guard
from deeplab2_kmax.trainer import train_lib
from deeplab2_kmax.trainer import trainer as trainer_lib

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "trainer"))
import trainer_test_utils as utils  # noqa: E402  pylint: disable=g-import-not-at-top

_STEP = "global_step/.ATTRIBUTES/VARIABLE_VALUE"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return utils.tiny_data(str(tmp_path_factory.mktemp("synthetic")))


def _config(data_dir, steps, max_skipped=0):
  """Tiny config; a loop, a checkpoint and summaries every step."""
  config = utils.tiny_config(data_dir, steps=steps)
  trainer = config.trainer_options
  trainer.steps_per_loop = 1
  trainer.save_checkpoints_steps = 1
  trainer.save_summaries_steps = 1
  trainer.max_skipped_non_finite_steps = max_skipped
  return config


def _checkpoints(model_dir):
  """{step: reader} of every checkpoint left in model_dir; all finite."""
  readers = {}
  for index in glob.glob(os.path.join(model_dir, "ckpt-*.index")):
    reader = tf.train.load_checkpoint(index[:-len(".index")])
    for name, dtype in reader.get_variable_to_dtype_map().items():
      if dtype.is_floating:
        assert np.isfinite(reader.get_tensor(name)).all(), (index, name)
    readers[int(reader.get_tensor(_STEP))] = reader
  return readers


def _nan_loss_at(monkeypatch, bad_steps):
  """The built loss's total is NaN on its `bad_steps`-th calls (1-based)."""
  build_loss = builders.build_loss

  def build(config):
    loss = build_loss(config)
    calls = tf.Variable(0, dtype=tf.int64, trainable=False)

    def poisoned(y_true, y_pred):
      losses = dict(loss(y_true, y_pred))
      calls.assign_add(1)
      bad = tf.reduce_any(tf.equal(calls, bad_steps))
      # A factor, not tf.where on the loss: NaN gradients on bad steps only.
      losses[max_deeplab_loss.TOTAL] *= tf.where(bad, np.nan, 1.0)
      return losses
    return poisoned

  monkeypatch.setattr(builders, "build_loss", build)


def test_matcher_rejects_non_finite_costs_of_valid_rows():
  cost = np.random.default_rng(0).normal(size=(2, 3, 4)).astype(np.float32)
  valid = np.ones((2, 3), bool)
  cost[1, 2, 0] = np.inf
  with pytest.raises(checkpoint_guard.NonFiniteLossError,
                     match=r"matching cost: 1 of 24 .*images \[1\]"):
    matching._scipy_batch(cost, valid)  # pylint: disable=protected-access
  valid[1, 2] = False  # A padded row's cost is never used.
  permutation = matching._scipy_batch(cost, valid)  # pylint: disable=protected-access
  assert permutation[1, 2].sum() == 0 and permutation[0].sum() == 3
  # In a graph the error reaches Python as a TF error carrying the marker.
  graph_match = tf.function(matching.scipy_matching)
  valid[1, 2] = True
  with pytest.raises(tf.errors.OpError, match=matching.NON_FINITE_COST):
    graph_match(tf.constant(cost), tf.constant(valid))


def test_guarded_manager_refuses_non_finite_weights(tmp_path):
  model = tf_keras.Sequential([tf_keras.layers.Dense(2, input_shape=(3,))])
  step = tf.Variable(1, dtype=tf.int64)
  checkpoint = tf.train.Checkpoint(model=model, global_step=step)
  manager = checkpoint_guard.GuardedCheckpointManager(
      checkpoint, str(tmp_path), model=model, max_to_keep=2,
      step_counter=step)
  first = manager.save()
  kernel = model.layers[0].kernel
  kernel.assign(tf.tensor_scatter_nd_update(kernel, [[0, 1]], [np.nan]))
  step.assign(2)
  with pytest.raises(checkpoint_guard.NonFiniteLossError,
                     match=r"step 2: non-finite weights in 1 .*kernel"):
    manager.save()
  assert manager.latest_checkpoint == first
  assert tf.train.latest_checkpoint(str(tmp_path)) == first


def test_skips_within_budget_then_stops_keeping_the_last_good_checkpoint(
    data_dir, tmp_path, monkeypatch):
  """Steps 1 and 2 NaN, one skip allowed: 1 skipped, 2 stops the run."""
  _nan_loss_at(monkeypatch, bad_steps=(1, 2))
  model_dir = str(tmp_path / "model")
  with pytest.raises(trainer_lib.NonFiniteLossError,
                     match=r"Non-finite loss and gradients at step 2; the "
                           r"step was not applied and nothing is saved \(1 "
                           r"earlier non-finite steps skipped"):
    train_lib.run_experiment(_config(data_dir, steps=3, max_skipped=1),
                             model_dir, "train")
  readers = _checkpoints(model_dir)  # Every one finite.
  assert sorted(readers) == [1]
  assert train_lib.latest_checkpoint(model_dir).endswith("ckpt-1")
  # The skipped step applied nothing: no optimiser update in ckpt-1.
  assert readers[1].get_tensor("optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE") == 0
  counts = {}
  for path in glob.glob(os.path.join(model_dir, "train", "events.*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        if value.tag == trainer_lib.SKIPPED_SUMMARY:
          counts[event.step] = float(tf.make_ndarray(value.tensor))
  assert counts == {1: 1.0}


def test_nan_matching_cost_in_a_run_is_the_named_error(
    data_dir, tmp_path, monkeypatch):
  """The host matcher's error inside the step becomes NonFiniteLossError."""
  scipy_matching = matching.scipy_matching
  monkeypatch.setattr(matching, "scipy_matching",
                      lambda cost, valid: scipy_matching(cost * np.nan, valid))
  model_dir = str(tmp_path / "model")
  with pytest.raises(trainer_lib.NonFiniteLossError,
                     match="Non-finite matching cost at step 1 "):
    train_lib.run_experiment(_config(data_dir, steps=2), model_dir, "train")
  assert not _checkpoints(model_dir)
  assert train_lib.latest_checkpoint(model_dir) is None
