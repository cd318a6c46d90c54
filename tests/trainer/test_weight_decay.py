"""AdamW decays exactly the variables DeepLab2's trainer decays.

DeepLab2 (trainer/trainer.py) decays only variables whose name matches
`.*(kernel|weight):0$`. Each of our variables has a DeepLab2 checkpoint key
(`deeplab2_variable_map`); the rule is applied to that key's last part, i.e.
to DeepLab2's own name of the variable, and compared with what one real
optimizer step does: with zero gradients Adam moves nothing, so a variable
changes iff it was decayed.
"""

import re

import numpy as np
import pytest
import tensorflow as tf

from deeplab2_kmax.model import kmax_deeplab
from deeplab2_kmax.protos import trainer_pb2
from deeplab2_kmax.trainer import optimization

_TINY = dict(backbone_width_multiplier=0.125,
             backbone_blocks_per_stage=[1, 1, 1, 1],
             pixel_decoder_num_blocks=[1, 1, 1, 1],
             pixel_decoder_width_multiplier=0.125, num_mask_slots=4,
             transformer_num_blocks=(1, 1, 1), transformer_channels=16,
             transformer_ffn_channels=16, transformer_num_heads=2,
             pixel_head_channels=8, pixel_output_channels=8,
             semantic_head_channels=8, semantic_low_level_channels=(8, 8),
             aspp_channels=8, semantic_decoder_channels=8,
             use_sync_batch_norm=False)
# DeepLab2's variable names by kind, and whether its trainer decays them.
_DECAYED = {"kernel", "depthwise_kernel", "qkv_kernel"}
_NOT_DECAYED = {"gamma", "beta", "bias", "embeddings", "cluster_centers",
                "layer_scale"}


def _deeplab2_decays(key: str) -> bool:
  return re.search(r"(kernel|weight)$", key) is not None


def _solver():
  solver = trainer_pb2.SolverOptions()
  solver.base_learning_rate = 1.0
  solver.warmup_steps = 0
  solver.training_number_of_steps = 100
  solver.adamw_weight_decay = 0.05
  solver.backbone_learning_rate_multiplier = 0.5
  return solver


@pytest.mark.parametrize("backbone", ["resnet50", "axial_resnet50",
                                      "convnext_tiny"])
def test_decayed_variables_are_deeplab2s(backbone):
  model = kmax_deeplab.KMaXDeepLab(num_classes=3, backbone=backbone, **_TINY)
  model(tf.zeros([1, 65, 65, 3]), training=True)
  deeplab2_key = {v.ref(): key.split("/")[-1]
                  for key, v in model.deeplab2_variable_map().items()}
  rest, encoder = optimization.split_variables(model)
  assert {v.ref() for v in rest + encoder} <= set(deeplab2_key)
  for variable in rest + encoder:
    variable.assign(tf.ones_like(variable))
  optimizer, backbone_optimizer = optimization.build_optimizers(_solver())
  optimizer.apply_gradients([(tf.zeros_like(v), v) for v in rest])
  backbone_optimizer.apply_gradients([(tf.zeros_like(v), v) for v in encoder])
  kinds = {True: set(), False: set()}
  for variables, rate in ((rest, 1.0), (encoder, 0.5)):
    for variable in variables:
      key = deeplab2_key[variable.ref()]
      decayed = not np.all(variable.numpy() == 1.0)
      kinds[decayed].add(key)
      assert decayed == _deeplab2_decays(key), (variable.name, key)
      assert decayed == optimization.is_weight_decayed(variable.name)
      if decayed:  # Decoupled: the variable times lr x 0.05.
        np.testing.assert_allclose(variable.numpy(), 1.0 - rate * 0.05,
                                   rtol=1e-6)
  # Layer scales exist in ConvNeXt only.
  assert kinds == {True: _DECAYED, False: _NOT_DECAYED - (
      set() if backbone.startswith("convnext") else {"layer_scale"})}
