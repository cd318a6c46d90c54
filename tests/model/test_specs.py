"""The model specs: one home for every default and every check.

Each component's hyperparameters are a frozen dataclass beside its layer
(`*/spec.py`, `kmax_deeplab_spec.py`). These tests hold the rest of the code
to that: no layer, builder or config reader repeats a spec default; the proto
defaults that mirror one equal it; a config passes `check_config` exactly
when the specs its model is built from accept it; and a model built in
Python reads the same encoder endpoints as one built from a config.
"""

import ast
import dataclasses
import pathlib

import numpy as np
import pytest

from deeplab2_kmax import config_loader
from deeplab2_kmax import model_options
from deeplab2_kmax.model import kmax_deeplab_spec
from deeplab2_kmax.model import spec_checks
from deeplab2_kmax.model.heads import spec as head_spec
from deeplab2_kmax.model.layers import spec as layer_spec
from deeplab2_kmax.model.pixel_decoder import spec as decoder_spec
from deeplab2_kmax.model.pixel_encoders import spec as encoder_spec
from deeplab2_kmax.model.transformer_decoder import spec as transformer_spec
from deeplab2_kmax.protos import config_pb2

REPO = pathlib.Path(__file__).resolve().parents[2]
SPECS = (encoder_spec.PixelEncoderSpec, decoder_spec.PixelDecoderSpec,
         transformer_spec.KMaXLayerSpec,
         transformer_spec.TransformerDecoderSpec, head_spec.HeadSpec,
         head_spec.SemanticBranchSpec, layer_spec.BatchNormSpec,
         kmax_deeplab_spec.KMaXDeepLabSpec)
SPEC_MODULES = {"spec.py", "kmax_deeplab_spec.py", "spec_checks.py"}
TINY_CONFIG = REPO / "configs" / "synthetic" / "kmax_tiny_r50_os32.textproto"
# (file under deeplab2_kmax/model, parameter): another hyperparameter that
# shares a spec field's name, with its own default.
OTHER_HYPERPARAMETERS = {
    ("layers/axial_attention.py", "num_heads"):
        "axial attention's heads (the MaX-S blocks), not the kMaX layer's",
    ("layers/blocks.py", "drop_path_keep_prob"):
        "one residual block's; the encoder / decoder specs set every block's",
    ("pixel_encoders/convnext.py", "drop_path_keep_prob"):
        "one ConvNeXt block's; PixelEncoderSpec sets every block's",
    ("layers/stems.py", "width_multiplier"):
        "the stem's; AxialResNet passes PixelEncoderSpec's",
}


def _defaults():
  """{field name: {default values}} of every spec field with a literal
  default (sub-specs and None aside)."""
  defaults = {}
  for spec_class in SPECS:
    for field in dataclasses.fields(spec_class):
      value = field.default
      if value is None or dataclasses.is_dataclass(value) or (
          value is dataclasses.MISSING):
        continue
      defaults.setdefault(field.name, set()).add(value)
  return defaults


def _code_files():
  """The model's layers and the code that builds or checks them."""
  for path in sorted((REPO / "deeplab2_kmax" / "model").rglob("*.py")):
    if path.name not in SPEC_MODULES:
      yield path
  for name in ("builders.py", "config_loader.py", "model_options.py"):
    yield REPO / "deeplab2_kmax" / name


def _literal(node):
  try:
    value = ast.literal_eval(node)
  except ValueError:
    return None
  return tuple(value) if isinstance(value, list) else value


def _repeated_defaults(path, defaults, root=REPO):
  """(line, name, value) of a parameter default or keyword argument named
  like a spec field whose literal is that field's default, and of
  `x.<field> or <default>` fallbacks."""
  found = []
  tree = ast.parse(path.read_text(encoding="utf-8"))
  for node in ast.walk(tree):
    pairs = []
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
      args = node.args
      positional = args.posonlyargs + args.args
      pairs += list(zip(positional[len(positional) - len(args.defaults):],
                        args.defaults))
      pairs += [(a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults)
                if d is not None]
      pairs = [(a.arg, d) for a, d in pairs]
    elif isinstance(node, ast.Call):
      pairs = [(k.arg, k.value) for k in node.keywords if k.arg]
    elif isinstance(node, ast.BoolOp) and isinstance(node.op, ast.Or):
      first = node.values[0]
      if isinstance(first, ast.Attribute):
        pairs = [(first.attr, node.values[-1])]
    for name, value_node in pairs:
      value = _literal(value_node)
      if name in defaults and value is not None and value in defaults[name]:
        found.append(f"{path.relative_to(root)}:{node.lineno} {name}={value!r}")
  return found


def test_every_spec_default_is_written_only_in_its_spec():
  defaults = _defaults()
  assert {"num_mask_slots", "pixel_head_channels", "mask_logits_gamma_init",
          "channels", "num_heads"} <= set(defaults)
  model = REPO / "deeplab2_kmax" / "model"
  repeated = [
      hit for path in _code_files()
      for hit in _repeated_defaults(path, defaults)
      if (path.relative_to(model).as_posix() if model in path.parents
          else None, hit.split(" ")[1].split("=")[0])
      not in OTHER_HYPERPARAMETERS]
  assert not repeated, "spec defaults repeated outside the specs:\n" + (
      "\n".join(repeated))


def test_the_default_scan_finds_a_repeated_default(tmp_path):
  path = tmp_path / "layer.py"
  path.write_text("def f(num_mask_slots=128, *, channels=256):\n"
                  "  return g(pixel_head_channels=256, x=o.num_heads or 8)\n")
  hits = _repeated_defaults(path, _defaults(), root=tmp_path)
  assert [h.split(" ")[1] for h in hits] == [
      "num_mask_slots=128", "channels=256", "pixel_head_channels=256",
      "num_heads=8"]


def _proto_field(path):
  descriptor = config_pb2.ExperimentOptions.DESCRIPTOR
  field = None
  for name in path.split("."):
    field = descriptor.fields_by_name[name]
    descriptor = field.message_type
  return field


@pytest.mark.parametrize("spec_class", list(model_options.FIELD_PATHS),
                         ids=lambda c: c.__name__)
def test_proto_defaults_that_mirror_a_spec_default_equal_it(spec_class):
  defaults = {f.name: f.default for f in dataclasses.fields(spec_class)}
  for field_name, path in model_options.FIELD_PATHS[spec_class].items():
    assert field_name in defaults, (spec_class, field_name)
    if path.startswith("*"):
      continue
    field = _proto_field(path)
    if not field.has_presence or field.is_repeated:
      continue
    if field.has_default_value:
      expected = defaults[field_name]
      if isinstance(field.default_value, float):
        # Proto floats are float32.
        assert np.float32(field.default_value) == np.float32(expected), path
      else:
        assert field.default_value == expected, path


def test_an_unset_config_builds_the_spec_defaults():
  config = config_pb2.ExperimentOptions()
  config.trainer_options.loss_options.semantic_loss.weight = 1.0
  spec = model_options.model_spec_of(config, num_classes=3,
                                     dataset_num_classes=4)
  assert spec == kmax_deeplab_spec.KMaXDeepLabSpec(
      num_classes=3, semantic=head_spec.SemanticBranchSpec(num_classes=4))


def _write(tmp_path, model_text):
  path = tmp_path / "exp.textproto"
  path.write_text('train_dataset_options { dataset: "synthetic_panoptic" '
                  'crop_size: [129, 129] }\n' + model_text)
  return str(path)


def test_check_config_rejects_heads_that_do_not_divide_the_key_channels(
    tmp_path):
  from deeplab2_kmax.tools import check_config  # pylint: disable=g-import-not-at-top
  # 24 channels split into 8 heads, but the keys have 24 // 2 = 12.
  path = _write(tmp_path, "model_options { max_deeplab { transformer_decoder "
                "{ channels: 24 num_heads: 8 } } }")
  (error,) = check_config.check_files([path], {})
  assert ("field 'model_options.max_deeplab.transformer_decoder.num_heads'"
          in error)
  assert "key channels 12" in error
  with pytest.raises(spec_checks.SpecError, match="key channels 12"):
    transformer_spec.KMaXLayerSpec(channels=24, num_heads=8)


@pytest.mark.parametrize("model_text, path", [
    ('model_options { backbone { name: "vgg16" } }',
     "model_options.backbone.name"),
    ("model_options { backbone { blocks_per_stage: [1, 1] } }",
     "model_options.backbone.blocks_per_stage"),
    ("model_options { max_deeplab { pixel_decoder { num_blocks: [1, 1] } } }",
     "model_options.max_deeplab.pixel_decoder.num_blocks"),
    ("model_options { max_deeplab { pixel_space_head { head_channels: 0 } } }",
     "model_options.max_deeplab.pixel_space_head.head_channels"),
    ("model_options { decoder { atrous_rates: [6, 12] } }",
     "model_options.decoder.atrous_rates"),
    ('trainer_options { recompute: "all" }', "trainer_options.recompute"),
    ("trainer_options { solver_options { batchnorm_momentum: 1.5 } }",
     "trainer_options.solver_options.batchnorm_momentum"),
])
def test_spec_problems_name_the_textproto_field(tmp_path, model_text, path):
  if "atrous_rates" in model_text:  # Only read with a semantic branch.
    model_text += (" trainer_options { loss_options { semantic_loss { "
                   "weight: 1.0 } } }")
  with pytest.raises(config_loader.ConfigError, match=f"field '{path}'"):
    config_loader.load_config(_write(tmp_path, model_text))


def test_backbone_names_are_the_registry():
  from deeplab2_kmax.model import pixel_encoders  # pylint: disable=g-import-not-at-top
  assert set(pixel_encoders.ENCODER_NAMES) == set(encoder_spec.ENCODERS)
  assert encoder_spec.PixelEncoderSpec(name="kmax_convnext_base").name == (
      "convnext_base")


def test_flat_keywords_round_trip():
  spec = kmax_deeplab_spec.KMaXDeepLabSpec(
      num_classes=7,
      transformer_decoder=transformer_spec.TransformerDecoderSpec(
          num_mask_slots=16, layer=transformer_spec.KMaXLayerSpec(
              channels=32, num_heads=4)),
      semantic=None, recompute="blocks")
  flat = kmax_deeplab_spec.to_flat(spec)
  assert flat["num_mask_slots"] == 16 and flat["transformer_channels"] == 32
  assert kmax_deeplab_spec.from_flat(**flat) == spec
  with pytest.raises(TypeError, match="num_slots"):
    kmax_deeplab_spec.from_flat(num_classes=3, num_slots=4)


@pytest.mark.parametrize("use_decoder", [True, False])
def test_python_and_config_models_read_the_same_semantic_endpoint(
    use_decoder):
  """DeepLab2's "res5" (the os32 output before its activation) is our
  "stage5", whether the model comes from Python defaults or a config."""
  from deeplab2_kmax import builders  # pylint: disable=g-import-not-at-top
  from deeplab2_kmax.model import kmax_deeplab  # pylint: disable=g-import-not-at-top
  config = config_loader.load_config(str(TINY_CONFIG))
  config.model_options.max_deeplab.use_auxiliary_semantic_decoder = (
      use_decoder)
  from_config = builders.build_model(config).semantic_branch
  in_python = kmax_deeplab.KMaXDeepLab(
      num_classes=3, use_semantic_decoder=use_decoder).semantic_branch

  def endpoints(branch):
    if branch.decoder is None:
      return (branch._feature_key,)  # pylint: disable=protected-access
    return (branch.decoder._high_level_key,  # pylint: disable=protected-access
            *branch.decoder._low_level_keys)  # pylint: disable=protected-access

  assert endpoints(from_config) == endpoints(in_python)
  assert endpoints(in_python)[0] == "stage5"


def test_the_model_config_is_its_spec():
  from deeplab2_kmax.model import kmax_deeplab  # pylint: disable=g-import-not-at-top
  model = kmax_deeplab.KMaXDeepLab(num_classes=3, num_mask_slots=8,
                                   transformer_num_heads=4,
                                   use_semantic_branch=False)
  rebuilt = kmax_deeplab.KMaXDeepLab.from_config(model.get_config())
  assert rebuilt.spec == model.spec and rebuilt.semantic_branch is None


def test_config_loader_stays_small():
  source = (REPO / "deeplab2_kmax" / "config_loader.py").read_text(
      encoding="utf-8")
  assert len(source.splitlines()) < 400
  (validate,) = [node for node in ast.parse(source).body
                 if isinstance(node, ast.FunctionDef)
                 and node.name == "validate"]
  assert validate.end_lineno - validate.lineno + 1 < 80
