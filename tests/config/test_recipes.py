"""The paper configs train and evaluate with DeepLab2's recipes, field by field.

The expected values come from ../shared/reference/deeplab2_recipes.md (every
effective setting of DeepLab2's kMaX configs); ours are what the builders and
the trainer actually construct (`recipe_mapping`); every column, COCO,
Cityscapes and ADE20K, has its config.
"""

import json
import pathlib

import numpy as np
import pytest
import recipe_mapping
import tensorflow as tf
import tf_keras

from deeplab2_kmax import builders
from deeplab2_kmax import config_loader
from deeplab2_kmax.losses import max_deeplab_loss

REPO = pathlib.Path(__file__).resolve().parents[2]
TABLE = REPO.parent / "shared" / "reference" / "deeplab2_recipes.md"
pytestmark = pytest.mark.skipif(not TABLE.exists(),
                                reason=f"recipe table not found at {TABLE}")

_DATASETS = ("coco", "cityscapes", "ade20k")
# Ours beyond the table: the column it follows and its documented changes
# (256 cluster centres; drop query, checked below).
_VARIANTS = {
    "coco/kmax_convnext_large_os32_drop_query_256": (
        "coco/convnext_large_os32", {"(hard-coded) num_mask_slots": "256"}),
}


def _table():
  return recipe_mapping.read_table(TABLE) if TABLE.exists() else {}


def _cases():
  """(config stem, table column, overridden cells) for every paper config."""
  cases = [(recipe_mapping.config_name(column), column, {})
           for column in sorted(_table())
           if column.split("/")[0] in _DATASETS]
  cases += [(stem, column, overrides)
            for stem, (column, overrides) in sorted(_VARIANTS.items())]
  return cases or [("none", "none", {})]


def _load(stem):
  return config_loader.load_config(str(REPO / "configs" / f"{stem}.textproto"))


def _same(expected: str, ours) -> bool:
  if expected in ("True", "False"):
    return isinstance(ours, (bool, np.bool_)) and ours == (expected == "True")
  if expected.startswith("["):
    theirs = json.loads(expected)
    return (isinstance(ours, (list, tuple)) and len(ours) == len(theirs) and
            all(np.isclose(a, b, rtol=1e-6) for a, b in zip(ours, theirs)))
  try:
    number = float(expected)
  except ValueError:
    return ours == expected
  return (not isinstance(ours, (str, bool, type(None))) and
          np.isclose(float(ours), number, rtol=1e-6, atol=0.0))


def test_every_field_is_mapped_fixed_or_explained():
  fields = set().union(*(column.keys() for column in _table().values()))
  groups = [set(recipe_mapping.EFFECTIVE), set(recipe_mapping.FIXED),
            set(recipe_mapping.NOT_USED_BY_KMAX)]
  assert not (groups[0] & groups[1] or groups[0] & groups[2] or
              groups[1] & groups[2])
  assert fields - set().union(*groups) == set(), "fields without a mapping"
  assert set().union(*groups) - fields == set(), "mapped fields not in table"


def test_every_paper_column_has_a_config():
  for stem, _, _ in _cases():
    assert (REPO / "configs" / f"{stem}.textproto").exists(), stem
  # No dataset of the table is left out (16 columns: 6 COCO, 6 Cityscapes,
  # 4 ADE20K).
  datasets = sorted({column.split("/")[0] for column in _table()})
  assert datasets == sorted(_DATASETS)
  assert len(_cases()) == len(_table()) + len(_VARIANTS)


@pytest.mark.parametrize("stem,column,overrides", _cases(),
                         ids=[case[0] for case in _cases()])
def test_effective_values_are_deeplab2s(stem, column, overrides):
  expected = dict(_table()[column], **overrides)
  effective = recipe_mapping.Effective(_load(stem))
  wrong = []
  for field, read in sorted(recipe_mapping.EFFECTIVE.items()):
    ours = recipe_mapping.table_form(field, read(effective))
    if not _same(expected[field], ours):
      wrong.append(f"{field}: DeepLab2 {expected[field]!r}, ours {ours!r}")
  for field, (value, reason) in recipe_mapping.FIXED.items():
    if expected[field] != value:
      wrong.append(f"{field}: DeepLab2 {expected[field]!r}, ours fixed at "
                   f"{value!r} ({reason})")
  assert not wrong, f"{stem} vs DeepLab2's {column}:\n  " + "\n  ".join(wrong)


@pytest.mark.parametrize("stem,column,overrides", _cases(),
                         ids=[case[0] for case in _cases()])
def test_settings_beyond_the_table(stem, column, overrides):
  """DeepLab2 facts the table does not list (its code, not its configs)."""
  del column, overrides
  effective = recipe_mapping.Effective(_load(stem))
  model, train, evaluation = effective.model, effective.train, effective.eval
  # Every DeepLab2 kMaX config sets panoptic copy-paste; no eval augmentation.
  assert train["copy_paste"] and not evaluation["copy_paste"]
  assert train["random_flip"]  # DeepLab2 always flips training crops.
  assert model["mask_logits_gamma_init"] == pytest.approx(0.1)
  assert model["drop_query_keep_number"] == (
      128 if "drop_query" in stem else 0)
  assert model["cross_attention"] == "kmeans"
  assert model["transformer_num_blocks"] == (2, 2, 2)
  # Hard-coded in DeepLab2's loss: feature temperature 0.3, focal alpha 0.75.
  loss = max_deeplab_loss.MaXDeepLabLoss(**effective.loss)
  defaults = max_deeplab_loss.LossSpec()
  for name in ("instance_discrimination_temperature", "focal_loss_alpha"):
    # Not set by the builder: the loss's own default.
    assert getattr(effective.loss["spec"], name) == getattr(defaults, name)
  assert loss.spec.instance_discrimination_temperature == 0.3
  assert loss.spec.focal_loss_alpha == 0.75
  # DeepLab2's AdamW: Keras' legacy Adam defaults.
  for optimizer in (effective.optimizer, effective.backbone_optimizer):
    assert (optimizer.beta_1, optimizer.beta_2, optimizer.epsilon) == (
        pytest.approx(0.9), pytest.approx(0.999), pytest.approx(1e-7))


def _deeplab2_learning_rate(cells, step):
  """trainer.py + trainer_utils.WarmUp + Keras PolynomialDecay, in NumPy."""
  base = float(cells["trainer_options.solver_options.base_learning_rate"])
  warmup = int(cells["trainer_options.solver_options.warmup_steps"])
  total = int(cells["trainer_options.solver_options.training_number_of_steps"])
  power = float(cells["trainer_options.solver_options.poly_learning_power"])
  end = float(cells["trainer_options.solver_options.poly_end_learning_rate"])
  if step < warmup:
    return step / warmup * base
  return (base - end) * (1 - min(step, total) / total) ** power + end


@pytest.mark.parametrize("stem,column,overrides", _cases(),
                         ids=[case[0] for case in _cases()])
def test_learning_rate_warms_up_to_the_base_rate_then_poly(stem, column,
                                                           overrides):
  del overrides
  cells = _table()[column]
  multiplier = float(cells[
      "trainer_options.solver_options.backbone_learning_rate_multiplier"])
  base = float(cells["trainer_options.solver_options.base_learning_rate"])
  effective = recipe_mapping.Effective(_load(stem))
  total = int(cells["trainer_options.solver_options.training_number_of_steps"])
  for step in (0, 1, 1250, 2500, 4999, 5000, 5001, 20000, total - 1, total,
               total + 7):
    expected = _deeplab2_learning_rate(cells, step)
    rate = float(recipe_mapping.schedule(effective.optimizer)(step))
    backbone = float(recipe_mapping.schedule(
        effective.backbone_optimizer)(step))
    # float32 schedules (as DeepLab2's): 1 - step / total loses ~1e-7.
    assert rate == pytest.approx(expected, rel=1e-5, abs=1e-6 * base), step
    assert backbone == pytest.approx(expected * multiplier, rel=1e-5,
                                     abs=1e-6 * base), step


def test_built_model_has_no_kernel_l2_loss_and_bn_options_everywhere():
  """DeepLab2's weight_decay 0 (no L2 loss); BN options reach every layer."""
  config = _load("cityscapes/kmax_r50_os32")
  model = config.model_options
  model.backbone.backbone_width_multiplier = 0.0625
  del model.backbone.blocks_per_stage[:]
  model.backbone.blocks_per_stage.extend([1, 1, 1, 1])
  model.max_deeplab.pixel_decoder.width_multiplier = 0.0625
  del model.max_deeplab.pixel_decoder.num_blocks[:]
  model.max_deeplab.pixel_decoder.num_blocks.extend([1, 1, 1, 1, 1])
  transformer = model.max_deeplab.transformer_decoder
  transformer.num_mask_slots, transformer.channels = 4, 16
  transformer.ffn_channels, transformer.num_heads = 16, 2
  del transformer.num_blocks[:]
  transformer.num_blocks.extend([1, 1, 1])
  solver = config.trainer_options.solver_options
  solver.batchnorm_momentum, solver.batchnorm_epsilon = 0.9, 1e-4
  built = builders.build_model(config)
  built(tf.zeros([1, 65, 65, 3]), training=True)  # Lazy layers too.
  norms = [layer for layer in built.submodules
           if isinstance(layer, (tf_keras.layers.BatchNormalization,
                                 tf_keras.layers.experimental
                                 .SyncBatchNormalization))]
  assert len(norms) > 100
  for norm in norms:  # Config floats are float32.
    np.testing.assert_allclose([norm.momentum, norm.epsilon], [0.9, 1e-4],
                               rtol=1e-6, err_msg=norm.name)
  assert not built.losses
