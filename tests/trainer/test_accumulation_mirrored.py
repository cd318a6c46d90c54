"""Accumulation under MirroredStrategy equals one device without it.

One optimiser step over 2 replicas (2 logical CPUs), each accumulating 2
micro-batches of 1 image, against one step on one device with the same 4
images as a single batch. Batch norm is frozen and the losses' random pixel
sampling is off, so every image's loss depends on that image alone; each
replica divides its micro-batch losses by the global batch and the optimiser
sums the replicas' gradients, so the step must be the same up to float32
summation order.

The logical devices must be set before TensorFlow starts its runtime, which
the other tests of the session have done: both runs happen, one after the
other from the same seed and initial weights (checked), in a subprocess.
"""

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import trainer_test_utils as utils

# ~80 s of CPU (the step traced per replica and micro-batch): kept out of
# the default run to hold it under 20 minutes; `pytest -m slow` runs it.
pytestmark = pytest.mark.slow

_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    import tensorflow as tf
    # Grappler's rewrites of the large step graph take a fifth of the run;
    # they change speed and rounding, not what the step computes: off in
    # both runs.
    tf.config.optimizer.set_experimental_options(
        {"disable_meta_optimizer": True})
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    sys.path.insert(0, sys.argv[2])
    import tf_keras
    import trainer_test_utils as utils
    from deeplab2_kmax import builders
    from deeplab2_kmax.losses import max_deeplab_loss
    from deeplab2_kmax.trainer import trainer as trainer_lib

    # The semantic head's dropout draws its mask per call shape and replica;
    # switch it off so that both runs see the same network.
    dropout_init = tf_keras.layers.Dropout.__init__
    tf_keras.layers.Dropout.__init__ = (
        lambda self, rate, *a, **k: dropout_init(self, 0.0, *a, **k))

    config = utils.tiny_config(sys.argv[1])
    config.train_dataset_options.batch_size = 4
    config.model_options.max_deeplab.instance_discrimination_sample_k = 0
    config.model_options.max_deeplab.semantic_sample_k = 0
    # One kMaX layer: the step is traced once per replica and micro-batch.
    blocks = config.model_options.max_deeplab.transformer_decoder.num_blocks
    del blocks[:]
    blocks.extend([1, 0, 0])
    solver = config.trainer_options.solver_options
    solver.warmup_steps = 0  # A warm-up would make the first rate 0.
    # Clipping acts on each replica's share of the gradient before the
    # optimiser sums the shares (as DeepLab2's replica step): off here.
    solver.use_gradient_clipping = False
    batch = next(iter(builders.build_dataset(config, training=True, seed=0)))

    def one_step(strategy, accumulation):
      config.trainer_options.gradient_accumulation_steps = accumulation
      tf_keras.utils.set_random_seed(0)
      with strategy.scope():
        # With the crop, every variable (the semantic branch's too) exists
        # before the trainer lists what it optimises, as in train_lib.
        model = builders.build_model(config, crop_size=(64, 64))
        global_step = tf.Variable(0, dtype=tf.int64)
      for layer in model.submodules:
        if isinstance(layer, tf_keras.layers.BatchNormalization):
          layer.trainable = False  # Inference statistics: per-image losses.
      arrays = {"replicas": np.array(strategy.num_replicas_in_sync)}
      for i, variable in enumerate(model.trainable_variables):
        arrays[f"initial/{i}"] = variable.numpy()
      # Global micro-batches of 4 / K images, split over the replicas.
      dataset = tf.data.Dataset.from_tensor_slices(batch).batch(
          4 // accumulation, drop_remainder=True)
      if strategy.num_replicas_in_sync > 1:
        dataset = strategy.experimental_distribute_dataset(dataset)
      trainer = trainer_lib.KMaXTrainer(
          config, model, builders.build_loss(config), dataset, strategy,
          global_step, "/nonexistent")
      trainer.create_metrics(max_deeplab_loss.term_names(
          model.num_kmax_layers, model.semantic_branch is not None))
      results = trainer.train(tf.constant(1, dtype=tf.int32))
      arrays["global_step"] = global_step.numpy()
      for name, value in results.items():
        if name in trainer._loss_metrics:  # pylint: disable=protected-access
          arrays[f"loss/{name}"] = np.asarray(value)
      for i, variable in enumerate(model.trainable_variables):
        arrays[f"weight/{i}"] = variable.numpy()
      for which, optimizer in (("rest", trainer.optimizer),
                               ("backbone", trainer.backbone_optimizer)):
        arrays[f"iterations/{which}"] = optimizer.iterations.numpy()
        # AdamW's first moment after one step is (1 - beta_1) x gradient.
        for i, variable in enumerate(optimizer.variables):
          if variable.name.startswith("m/"):
            arrays[f"moment/{which}/{i}"] = variable.numpy()
      return arrays

    runs = {"one": one_step(tf.distribute.get_strategy(), 1),
            "mirrored": one_step(
                tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]), 2)}
    np.savez(sys.argv[3], learning_rate=solver.base_learning_rate,
             **{f"{run}/{key}": value for run, arrays in runs.items()
                for key, value in arrays.items()})
""")


def _relative_error(a, b):
  return np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  tmp_path = tmp_path_factory.mktemp("mirrored_accumulation")
  data_dir = utils.tiny_data(str(tmp_path))
  output = tmp_path / "runs.npz"
  process = subprocess.run(
      [sys.executable, "-c", _SCRIPT, data_dir,
       str(utils.REPO / "tests" / "trainer"), str(output)],
      capture_output=True, text=True, timeout=900, check=False)
  assert process.returncode == 0, process.stderr[-3000:]
  arrays = dict(np.load(output))
  runs = {run: {key[len(run) + 1:]: value for key, value in arrays.items()
                if key.startswith(run + "/")}
          for run in ("one", "mirrored")}
  runs["learning_rate"] = float(arrays["learning_rate"])
  return runs


def _group(run, prefix):
  return {k: v for k, v in run.items() if k.startswith(prefix)}


def test_two_replicas_and_one_start_from_the_same_weights(runs):
  assert int(runs["one"]["replicas"]) == 1
  assert int(runs["mirrored"]["replicas"]) == 2
  one, mirrored = (_group(runs[r], "initial/") for r in ("one", "mirrored"))
  assert one.keys() == mirrored.keys() and len(one) > 10
  for name in one:
    np.testing.assert_array_equal(mirrored[name], one[name], err_msg=name)


def test_one_optimiser_step(runs):
  for run in (runs["one"], runs["mirrored"]):
    assert int(run["global_step"]) == 1
    assert int(run["iterations/rest"]) == 1
    assert int(run["iterations/backbone"]) == 1


def test_same_losses(runs):
  one, mirrored = (_group(runs[r], "loss/") for r in ("one", "mirrored"))
  assert one.keys() == mirrored.keys() and len(one) > 1
  for name in one:
    np.testing.assert_allclose(mirrored[name], one[name], rtol=1e-5,
                               err_msg=name)


def test_same_gradients(runs):
  one, mirrored = (_group(runs[r], "moment/") for r in ("one", "mirrored"))
  assert one.keys() == mirrored.keys() and len(one) > 10
  for name in one:
    assert _relative_error(mirrored[name], one[name]) < 1e-5, name


def test_same_updated_weights(runs):
  one, mirrored = (_group(runs[r], "weight/") for r in ("one", "mirrored"))
  initial = _group(runs["one"], "initial/")
  assert one.keys() == mirrored.keys() and len(one) > 10
  moved = 0
  rate = runs["learning_rate"]
  for name in one:
    update = one[name] - initial["initial/" + name[len("weight/"):]]
    moved += np.max(np.abs(update)) > 0
    # AdamW moves an element by about rate x g / (|g| + epsilon): where a
    # gradient is near epsilon (1e-6 here), its float32 summation noise
    # (1e-5 of the tensor's largest gradient, test_same_gradients) is
    # amplified by up to 1 / epsilon. 1e-3 of the rate is 0.1 % of a step.
    np.testing.assert_allclose(mirrored[name], one[name], rtol=1e-5,
                               atol=1e-3 * rate, err_msg=name)
  # The step applied a non-zero rate (variables with a zero gradient and no
  # weight decay, such as biases a frozen path leaves unused, stay).
  assert moved > 0.8 * len(one), (moved, len(one))
