"""Wires model, data, loss, trainer, evaluator and checkpoints (Orbit).

Every run logs its `experiment_name`, writes the config it runs to
`model_dir/experiment.textproto` and the name and config to the TensorBoard
text summary `experiment` (of the train summaries, or the eval ones in the
evaluation modes).
"""

import os
from typing import Dict
from typing import Optional

from absl import logging
from google.protobuf import text_format
import orbit
import tensorflow as tf
import tf_keras

from deeplab2_kmax import builders
from deeplab2_kmax.data import input_pipeline
from deeplab2_kmax.data import record_check
from deeplab2_kmax.losses import max_deeplab_loss
from deeplab2_kmax.trainer import checkpoint_guard
from deeplab2_kmax.trainer import console
from deeplab2_kmax.trainer import evaluator as evaluator_lib
from deeplab2_kmax.trainer import initial_checkpoint
from deeplab2_kmax.trainer import run_lock
from deeplab2_kmax.trainer import trainer as trainer_lib

MODES = ("train", "eval", "train_and_eval", "continuous_eval")


class ExperimentError(ValueError):
  """A setup problem (paths, data, checkpoints); the message names it."""


def latest_checkpoint(model_dir: str) -> Optional[str]:
  return tf.train.latest_checkpoint(model_dir)


def _check_model_dir(model_dir: str):
  try:
    os.makedirs(model_dir, exist_ok=True)
  except OSError as e:
    raise ExperimentError(f"model_dir {model_dir}: cannot create it "
                          f"({e.strerror})") from None
  if not os.access(model_dir, os.W_OK):
    raise ExperimentError(f"model_dir {model_dir}: not writable")


def _check_data(options, field: str) -> Optional[int]:
  """Files exist and their records are sound; returns the records skipped.

  None when `skip_corrupt_records` is off (nothing is ever skipped then).
  A fast scan of the record headers, or with `skip_corrupt_records` a full
  read that logs each bad record (tf.data then skips them).
  """
  patterns = list(options.file_pattern)
  try:
    if not options.skip_corrupt_records:
      input_pipeline.scan_records(patterns)
      return None
    problems = record_check.find_corrupt_records(patterns)
  except (ValueError, OSError) as e:
    raise ExperimentError(f"{field}.file_pattern: {e}") from None
  skipped = sum(problem.records_lost for problem in problems)
  if problems:
    logging.warning("%s.skip_corrupt_records: skipping %d record(s) in %d "
                    "place(s)", field, skipped, len(problems))
  return skipped


def _set_precision(config, strategy):
  policy = config.trainer_options.mixed_precision
  if policy in ("", "float32"):
    return
  if policy == "auto":
    policy = ("mixed_bfloat16" if isinstance(strategy, tf.distribute.TPUStrategy)
              else "mixed_float16")
  tf_keras.mixed_precision.set_global_policy(policy)


def _restore_initial_checkpoint(config, model):
  """Loads `initial_checkpoint` (model weights) or backbone weights."""
  model_options = config.model_options
  path = model_options.initial_checkpoint
  if path:
    logging.info("Initialising the model from %s", path)
    try:
      initial_checkpoint.restore(
          model, path, model_options
          .restore_semantic_last_layer_from_initial_checkpoint)
    except initial_checkpoint.InitialCheckpointError as e:
      raise ExperimentError(str(e)) from None
    return
  weights = config.model_options.backbone.pretrained_weights
  if weights:
    logging.info("Initialising the backbone from %s", weights)
    status = tf.train.Checkpoint(encoder=model.encoder).read(weights)
    status.expect_partial()
    try:
      # Every encoder variable must come from the file: one of another
      # layout would otherwise leave them at their initial values, silently.
      status.assert_existing_objects_matched()
    except AssertionError as e:
      raise ExperimentError(
          f"model_options.backbone.pretrained_weights: {weights} does not "
          "hold this encoder's variables (write it as tf.train.Checkpoint("
          "encoder=...) of the same backbone, e.g. with trainer."
          f"pretrain_encoder): {str(e).splitlines()[0][:300]}") from None


EXPERIMENT_FILE = "experiment.textproto"
# Summary (in model_dir/train and /eval) of the records skip_corrupt_records
# skips.
CORRUPT_SUMMARY = "corrupt_records_skipped"


def record_experiment(config, model_dir: str, mode: str, step: int):
  """Logs the experiment and writes its config and text summary."""
  name = config.experiment_name or "(unnamed)"
  logging.info("Experiment %s: %s in %s from step %d", name, mode, model_dir,
               step)
  text = text_format.MessageToString(config)
  # A worker's own folder (worker_write_dir) may not exist yet.
  tf.io.gfile.makedirs(model_dir)
  with tf.io.gfile.GFile(os.path.join(model_dir, EXPERIMENT_FILE), "w") as f:
    f.write(f"# experiment_name: {name}\n# mode: {mode}\n{text}")
  summary_dir = os.path.join(model_dir, "eval" if mode in (
      "eval", "continuous_eval") else "train")
  writer = tf.summary.create_file_writer(summary_dir)
  with writer.as_default():
    # Markdown: the config as a code block (indented four spaces).
    config_block = "\n".join("    " + line for line in text.splitlines())
    tf.summary.text("experiment", f"**{name}** ({mode})\n\n{config_block}",
                    step=step)
  writer.close()


def worker_write_dir(strategy: tf.distribute.Strategy, model_dir: str) -> str:
  """Where this worker writes checkpoints and summaries.

  Under MultiWorkerMirroredStrategy every worker takes part in saving, but
  only the chief writes to `model_dir`; the others keep their own copy in
  `model_dir/worker_N` (so a restart of any worker finds its checkpoint).
  """
  resolver = getattr(strategy, "cluster_resolver", None)
  if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or (
      resolver is None or not resolver.task_type):
    return model_dir
  task_type, task_id = resolver.task_type, resolver.task_id or 0
  has_chief = "chief" in resolver.cluster_spec().as_dict()
  is_chief = task_type == "chief" or (
      task_type == "worker" and task_id == 0 and not has_chief)
  return model_dir if is_chief else os.path.join(model_dir,
                                                 f"{task_type}_{task_id}")


def run_experiment(config, model_dir: str, mode: str = "train_and_eval",
                   strategy: Optional[tf.distribute.Strategy] = None,
                   lock_max_age_s: float = run_lock.DEFAULT_MAX_AGE_S
                   ) -> Dict[str, float]:
  """Trains and/or evaluates; returns the last evaluation metrics (if any).

  In the training modes the chief holds model_dir's lock (`run_lock`) for the
  whole run, so a second trainer on the same model_dir refuses to start; a
  lock whose holder died, or silent for `lock_max_age_s`, is taken over. The
  chief also removes the `*_temp` folders of interrupted checkpoint saves.
  """
  if mode not in MODES:
    raise ExperimentError(f"--mode must be one of {MODES}, got {mode!r}")
  strategy = strategy or tf.distribute.get_strategy()
  _check_model_dir(model_dir)
  lock = None
  if mode in ("train", "train_and_eval") and (
      worker_write_dir(strategy, model_dir) == model_dir):
    try:
      lock = run_lock.acquire(model_dir, lock_max_age_s)
    except run_lock.LockHeldError as e:
      raise ExperimentError(str(e)) from None
    run_lock.remove_stale_temp_dirs(model_dir)
  policy = tf_keras.mixed_precision.global_policy()
  try:
    with console.orbit_logs_once():
      return _experiment(config, model_dir, mode, strategy)
  finally:
    # The run's mixed-precision policy does not outlive it.
    tf_keras.mixed_precision.set_global_policy(policy)
    if lock is not None:
      lock.release()


def _experiment(config, model_dir: str, mode: str,
                strategy: tf.distribute.Strategy) -> Dict[str, float]:
  """Checks the data, builds everything and runs `mode`."""
  model_dir = worker_write_dir(strategy, model_dir)
  training = mode in ("train", "train_and_eval")
  evaluating = mode != "train"
  skipped = {}
  if training:
    skipped["train"] = _check_data(config.train_dataset_options,
                                   "train_dataset_options")
  if evaluating:
    skipped["eval"] = _check_data(config.eval_dataset_options,
                                  "eval_dataset_options")
  _set_precision(config, strategy)
  # Seeds Python, NumPy and TensorFlow: tf_keras initialisers draw their
  # seeds from Python's `random`, so tf.random.set_seed alone would leave the
  # initial weights different from run to run.
  tf_keras.utils.set_random_seed(config.random_seed)
  info = builders.dataset_info(config)
  trainer_options = config.trainer_options
  crop = tuple(config.train_dataset_options.crop_size if training
               else config.eval_dataset_options.crop_size)

  with strategy.scope():
    model = builders.build_model(config, crop_size=crop)
    global_step = tf.Variable(0, dtype=tf.int64, trainable=False,
                              name="global_step")

  trainer = None
  checkpoint_items = {"model": model, "global_step": global_step}
  if training:
    trainer = _build_trainer(config, model, strategy, global_step, model_dir)
    checkpoint_items.update(optimizer=trainer.optimizer,
                            backbone_optimizer=trainer.backbone_optimizer)

  evaluator = None
  if evaluating:
    eval_dataset = strategy.experimental_distribute_dataset(
        builders.build_dataset(config, training=False))
    evaluator = evaluator_lib.KMaXEvaluator(
        config, model, builders.build_post_processor(config), eval_dataset,
        strategy, info, model_dir=model_dir, global_step=global_step)

  checkpoint = tf.train.Checkpoint(**checkpoint_items)
  # Refuses to save non-finite weights (the newest checkpoint stays good).
  manager = checkpoint_guard.GuardedCheckpointManager(
      checkpoint, model_dir, model=model,
      max_to_keep=trainer_options.num_checkpoints_to_keep,
      step_counter=global_step,
      checkpoint_interval=trainer_options.save_checkpoints_steps)
  if manager.latest_checkpoint is None and training:
    _restore_initial_checkpoint(config, model)

  controller = orbit.Controller(
      strategy=strategy, trainer=trainer, evaluator=evaluator,
      global_step=global_step,
      steps_per_loop=trainer_options.steps_per_loop,
      checkpoint_manager=manager,
      summary_interval=trainer_options.save_summaries_steps,
      summary_dir=os.path.join(model_dir, "train"),
      eval_summary_dir=os.path.join(model_dir, "eval"))
  record_experiment(config, model_dir, mode, int(global_step.numpy()))
  _write_skipped_records(model_dir, skipped, int(global_step.numpy()))
  try:
    return _run(controller, manager, config, model, model_dir, mode)
  except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as e:
    # A record that fails to read or to decode comes out of the input
    # iterator without its file's name; anything else is not about data.
    if not (isinstance(e, tf.errors.DataLossError)
            or "IteratorGetNext" in (e.message or "")):
      raise
    named = _name_corrupt_file(config, training, evaluating)
    if named is None:
      raise
    raise named from e


def _build_trainer(config, model, strategy, global_step, model_dir: str
                   ) -> trainer_lib.KMaXTrainer:
  """The trainer, its distributed dataset and its loss metrics."""
  # One global-batch pipeline split across replicas: the same global batch
  # whatever the number of devices (and so the same loss). With gradient
  # accumulation, micro-batches of batch_size / K.
  trainer_options = config.trainer_options
  micro_batch = config.train_dataset_options.batch_size // max(
      trainer_options.gradient_accumulation_steps, 1)
  dataset = strategy.experimental_distribute_dataset(
      builders.build_dataset(config, training=True, seed=config.random_seed,
                             batch_size=micro_batch))
  trainer = trainer_lib.KMaXTrainer(config, model, builders.build_loss(config),
                                    dataset, strategy, global_step, model_dir)
  trainer.create_metrics(max_deeplab_loss.term_names(
      model.num_kmax_layers,
      model.semantic_branch is not None and
      trainer_options.loss_options.HasField("semantic_loss")))
  return trainer


def _write_skipped_records(model_dir: str,
                           skipped: Dict[str, Optional[int]],
                           step: int) -> None:
  """`corrupt_records_skipped` summaries of the runs that skip records."""
  for split, count in skipped.items():
    if count is None:  # skip_corrupt_records is off.
      continue
    writer = tf.summary.create_file_writer(os.path.join(model_dir, split))
    with writer.as_default():
      tf.summary.scalar(CORRUPT_SUMMARY, count, step=step)
    writer.close()


def _name_corrupt_file(config, training: bool, evaluating: bool
                       ) -> Optional[ExperimentError]:
  """The file behind a tf.data DataLossError (which omits it), if found."""
  fields = (["train_dataset_options"] if training else []) + (
      ["eval_dataset_options"] if evaluating else [])
  for field in fields:
    logging.error("A record failed to read: checking every record of %s to "
                  "name the file", field)
    try:
      input_pipeline.validate_records(
          list(getattr(config, field).file_pattern))
    except input_pipeline.CorruptRecordError as e:
      return ExperimentError(f"{field}.file_pattern: {e}")
  return None


def _run(controller, manager, config, model, model_dir: str, mode: str
         ) -> Dict[str, float]:
  """Runs `mode` with the controller; returns the last metrics (if any)."""
  total_steps = config.trainer_options.solver_options.training_number_of_steps
  eval_steps = config.evaluator_options.eval_steps
  eval_steps = None if eval_steps is None or eval_steps < 0 else eval_steps
  if mode == "train":
    controller.train(total_steps)
    return {}
  if mode == "train_and_eval":
    interval = config.evaluator_options.eval_interval or total_steps
    output = controller.train_and_evaluate(
        total_steps, eval_steps=eval_steps or -1,
        eval_interval=min(interval, total_steps))
    if output is None:  # Already trained: evaluate the final checkpoint.
      output = controller.evaluate(steps=eval_steps or -1)
    return {k: float(v) for k, v in output.items()}
  if mode == "eval":
    if manager.latest_checkpoint is None and not (
        config.model_options.initial_checkpoint):
      raise ExperimentError(f"model_dir {model_dir}: no checkpoint to "
                            "evaluate (and no initial_checkpoint)")
    if manager.latest_checkpoint is None:
      _restore_initial_checkpoint(config, model)
    return {k: float(v) for k, v in
            controller.evaluate(steps=eval_steps or -1).items()}
  timeout = config.evaluator_options.continuous_eval_timeout
  controller.evaluate_continuously(
      steps=eval_steps or -1, timeout=None if timeout < 0 else timeout)
  return {}
