"""MirroredStrategy over 2 logical CPUs equals one device (SPEC §1, §6)."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import trainer_test_utils as utils

_SCRIPT = textwrap.dedent("""
    import json, sys
    import tensorflow as tf
    replicas = int(sys.argv[1])
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    sys.path.insert(0, sys.argv[4])
    import trainer_test_utils as utils
    from deeplab2_kmax.trainer import train_lib
    config = utils.lean_config(sys.argv[2], steps=1)
    config.trainer_options.steps_per_loop = 1
    config.trainer_options.solver_options.warmup_steps = 0
    config.trainer_options.solver_options.use_sync_batchnorm = True
    # Unsampled losses: the Gumbel sampling would differ per replica.
    config.model_options.max_deeplab.instance_discrimination_sample_k = 0
    config.model_options.max_deeplab.semantic_sample_k = 0
    # The ASPP's dropout draws its mask per replica; switch it off so the
    # runs see the same network.
    import tf_keras
    dropout_init = tf_keras.layers.Dropout.__init__
    tf_keras.layers.Dropout.__init__ = (
        lambda self, rate, *a, **k: dropout_init(self, 0.0, *a, **k))
    strategy = (tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
                if replicas == 2 else tf.distribute.get_strategy())
    train_lib.run_experiment(config, sys.argv[3], "train", strategy)
    reader = tf.train.load_checkpoint(train_lib.latest_checkpoint(sys.argv[3]))
    # Adam's first moment after one step is (1 - beta_1) x the gradient, and
    # moving statistics come from the forward pass: both must agree.
    names = sorted(
        k for k in reader.get_variable_to_shape_map()
        if k.split("/")[0] in ("optimizer", "backbone_optimizer") and
        "_variables" in k or ("moving_mean" in k and k.startswith("model/")))
    print(json.dumps({k: reader.get_tensor(k).ravel()[:8].tolist()
                      for k in names}))
""")


def test_two_replicas_match_one_device(tmp_path):
  data_dir = utils.tiny_data(str(tmp_path))
  # Both runs at once: most of their time is single-threaded tracing.
  runs = [subprocess.Popen(
      [sys.executable, "-c", _SCRIPT, str(replicas), data_dir,
       str(tmp_path / f"model{replicas}"), str(utils.REPO / "tests" /
                                               "trainer")],
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
          for replicas in (1, 2)]
  weights = []
  for run in runs:
    stdout, stderr = run.communicate(timeout=900)
    assert run.returncode == 0, stderr[-3000:]
    weights.append(json.loads(stdout.strip().splitlines()[-1]))
  assert weights[0].keys() == weights[1].keys()
  assert any(name.startswith("optimizer/_variables") for name in weights[0])
  # Tensors that are structurally ~0 (the gradient of a bias before a batch
  # norm, the moving mean of a zero-mean input) hold float noise of 1e-9;
  # they are compared only against the largest value of their group.
  groups = {}
  for name, values in weights[0].items():
    group = name.split("/")[0] if "optimizer" in name else "moving_mean"
    groups[group] = max(groups.get(group, 0.0), np.abs(values).max())
  compared = 0
  for name in weights[0]:
    group = name.split("/")[0] if "optimizer" in name else "moving_mean"
    scale = np.abs(weights[0][name]).max()
    np.testing.assert_allclose(
        weights[0][name], weights[1][name], rtol=1e-3,
        atol=1e-3 * scale + 1e-5 * groups[group], err_msg=name)
    compared += scale > 1e-3 * groups[group]
  # Most tensors are compared at their own scale, not only at the floor.
  assert compared > len(weights[0]) // 3, (compared, len(weights[0]))
