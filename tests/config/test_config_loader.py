"""Tests for textproto loading, placeholders and validation."""

import glob
import os
import subprocess
import sys

from google.protobuf import text_format
import pytest

from deeplab2_kmax import config_loader
from deeplab2_kmax.protos import config_pb2

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "**", "*.textproto"),
                           recursive=True))
PAPER_CONFIGS = [
    "coco/kmax_r50_os32", "coco/kmax_axial_r50_os32",
    "coco/kmax_convnext_base_os32", "coco/kmax_convnext_large_os32",
    "coco/kmax_convnext_large_os32_drop_query_256",
    "cityscapes/kmax_r50_os32", "cityscapes/kmax_axial_r50_os32",
    "cityscapes/kmax_convnext_base_os32", "cityscapes/kmax_convnext_large_os32",
]

_VALID = """
train_dataset_options { dataset: "synthetic_panoptic" crop_size: [129, 129]
                        file_pattern: "${DATA}/train-*" }
"""


def _write(tmp_path, text, name="exp.textproto"):
  path = tmp_path / name
  path.write_text(text)
  return str(path)


def test_every_paper_model_has_a_config():
  present = {os.path.relpath(p, os.path.join(REPO, "configs"))[:-len(".textproto")]
             for p in CONFIGS}
  assert set(PAPER_CONFIGS) <= present
  assert any(p.startswith("synthetic/") for p in present)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.relpath(p, REPO))
def test_shipped_config_loads_and_validates(path):
  config = config_loader.load_config(path)
  assert config.model_options.max_deeplab.transformer_decoder.num_mask_slots >= 1


def test_paper_recipes_follow_the_spec():
  coco = config_loader.load_config(os.path.join(REPO, "configs/coco/kmax_r50_os32.textproto"))
  solver = coco.trainer_options.solver_options
  assert (solver.base_learning_rate, solver.warmup_steps,
          solver.training_number_of_steps) == (pytest.approx(5e-4), 5000, 150000)
  assert solver.backbone_learning_rate_multiplier == pytest.approx(0.1)
  assert coco.train_dataset_options.batch_size == 64
  assert list(coco.train_dataset_options.crop_size) == [1281, 1281]
  assert coco.model_options.max_deeplab.transformer_decoder.num_mask_slots == 128
  city = config_loader.load_config(os.path.join(REPO, "configs/cityscapes/kmax_r50_os32.textproto"))
  assert city.model_options.max_deeplab.transformer_decoder.num_mask_slots == 256
  assert city.model_options.max_deeplab.pixel_decoder.high_resolution_output_stride == 2
  assert list(city.train_dataset_options.crop_size) == [1025, 2049]
  assert city.trainer_options.solver_options.base_learning_rate == pytest.approx(3e-4)
  maskwise = city.evaluator_options.maskwise_postprocessing
  assert maskwise.overlapping_threshold == pytest.approx(0.9)
  assert maskwise.reorder_mask_weight == 0.0


def test_placeholders_come_from_values_then_environment():
  text = 'a: "${ONE}" b: "${TWO}" c: "${UNKNOWN}"'
  out = config_loader.substitute_placeholders(
      text, {"ONE": "1"}, environ={"ONE": "env", "TWO": "2"})
  assert out == 'a: "1" b: "2" c: "${UNKNOWN}"'


def test_unresolved_file_paths_are_reported_not_errors(tmp_path):
  config = config_loader.load_config(_write(tmp_path, _VALID))
  assert config_loader.unresolved_placeholders(config) == {
      "train_dataset_options.file_pattern": "${DATA}/train-*"}
  config = config_loader.load_config(_write(tmp_path, _VALID), {"DATA": "/d"})
  assert config.train_dataset_options.file_pattern[0] == "/d/train-*"
  assert not config_loader.unresolved_placeholders(config)


def test_unknown_field_names_file_and_line(tmp_path):
  path = _write(tmp_path, _VALID + "\nmodel_options {\n  no_such_field: 3\n}\n")
  with pytest.raises(config_loader.ConfigError) as e:
    config_loader.load_config(path)
  message = str(e.value)
  assert f"{path}:6" in message and "no_such_field" in message


def test_wrong_type_names_file_and_line(tmp_path):
  path = _write(tmp_path, _VALID + 'trainer_options { steps_per_loop: "many" }\n')
  with pytest.raises(config_loader.ConfigError) as e:
    config_loader.load_config(path)
  assert f"{path}:4" in str(e.value) and "steps_per_loop" in str(e.value)


@pytest.mark.parametrize("snippet, field", [
    ('eval_dataset_options { dataset: "imagenet" }', "eval_dataset_options.dataset"),
    ('eval_dataset_options { dataset: "synthetic_panoptic" crop_size: [100, 129] }',
     "eval_dataset_options.crop_size"),
    ("model_options { max_deeplab { transformer_decoder { num_mask_slots: 0 } } }",
     "num_mask_slots"),
    ("evaluator_options { pixel_confidence_threshold: 1.5 }",
     "evaluator_options.pixel_confidence_threshold"),
    ('model_options { backbone { name: "vgg16" } }', "model_options.backbone.name"),
    ('model_options { max_deeplab { transformer_decoder { cross_attention: "dot" } } }',
     "cross_attention"),
    ("evaluator_options { maskwise_postprocessing { overlapping_threshold: -0.1 } }",
     "overlapping_threshold"),
    ("model_options { max_deeplab { mask_logits_batch_norm_gamma_init: 0 } }",
     "mask_logits_batch_norm_gamma_init"),
    # Evaluation pads each image to the crop: it must hold the largest.
    ('eval_dataset_options { dataset: "synthetic_panoptic" crop_size: [641, 641] '
     "max_resize_value: [1281] }", "eval_dataset_options.crop_size"),
])
def test_semantic_errors_name_file_and_field(tmp_path, snippet, field):
  path = _write(tmp_path, _VALID + snippet)
  with pytest.raises(config_loader.ConfigError) as e:
    config_loader.load_config(path)
  assert path in str(e.value) and field in str(e.value)


def test_eval_crop_smaller_than_the_dataset_images_names_the_field(tmp_path):
  # Cityscapes images are 1024x2048; without a resize the crop must hold them.
  text = "\n".join(
      f'{split}_dataset_options {{ dataset: "cityscapes_panoptic" '
      f"crop_size: [1025, 1025] }}" for split in ("train", "eval"))
  with pytest.raises(config_loader.ConfigError,
                     match="eval_dataset_options.crop_size.*1024x2048"):
    config_loader.load_config(_write(tmp_path, text))


def test_all_problems_are_reported_at_once(tmp_path):
  path = _write(tmp_path, _VALID + (
      "evaluator_options { pixel_confidence_threshold: 2 stuff_area_limit: -1 }"))
  with pytest.raises(config_loader.ConfigError) as e:
    config_loader.load_config(path)
  assert "pixel_confidence_threshold" in str(e.value)
  assert "stuff_area_limit" in str(e.value)


def test_deeplab2_backbone_names_are_accepted(tmp_path):
  path = _write(tmp_path, _VALID + 'model_options { backbone { name: "kmax_resnet50" } }')
  config_loader.load_config(path)
  assert config_loader.canonical_backbone_name("kmax_convnext_large") == "convnext_large"


def _check_config(*args):
  return subprocess.run(
      [sys.executable, "-m", "deeplab2_kmax.tools.check_config", *args],
      capture_output=True, text=True, cwd=REPO, timeout=120)


def test_check_config_cli(tmp_path):
  ok = _check_config(*CONFIGS)
  assert ok.returncode == 0, ok.stderr
  assert ok.stdout.count("OK ") == len(CONFIGS)
  assert "unresolved" in ok.stdout
  bad = _write(tmp_path, _VALID + 'eval_dataset_options { dataset: "nope" }', "bad.textproto")
  result = _check_config(CONFIGS[0], bad)
  assert result.returncode != 0
  assert bad in result.stderr and "eval_dataset_options.dataset" in result.stderr
  missing = _check_config(str(tmp_path / "missing.textproto"))
  assert missing.returncode != 0 and "missing.textproto" in missing.stderr


def test_generated_module_matches_the_proto_sources(tmp_path):
  """The installed *_pb2 modules were generated from the current .proto files."""
  # grpc_tools must not share a process with TensorFlow (native conflict).
  protos = os.path.join(REPO, "protos")
  result = subprocess.run(
      [sys.executable, os.path.join(protos, "build_protos.py"), protos,
       str(tmp_path)], capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  written = result.stdout.split()
  assert {os.path.basename(p) for p in written} >= {
      "config_pb2.py", "model_pb2.py", "trainer_pb2.py", "dataset_pb2.py",
      "evaluator_pb2.py"}
  from deeplab2_kmax.protos import dataset_pb2
  from deeplab2_kmax.protos import evaluator_pb2
  from deeplab2_kmax.protos import model_pb2
  from deeplab2_kmax.protos import trainer_pb2
  modules = {"config": config_pb2, "model": model_pb2, "trainer": trainer_pb2,
             "dataset": dataset_pb2, "evaluator": evaluator_pb2}
  for name, module in modules.items():
    fresh = (tmp_path / f"{name}_pb2.py").read_text()
    with open(module.__file__, encoding="utf-8") as f:
      installed = f.read()
    assert installed == fresh, (
        f"{module.__file__} is stale: reinstall (pip install -e .) to "
        "regenerate it from the .proto files")


def test_text_format_round_trip_keeps_deeplab2_field_names():
  config = config_pb2.ExperimentOptions()
  text_format.Parse("""
    trainer_options { solver_options { base_learning_rate: 0.1 warmup_steps: 5 } }
    evaluator_options { maskwise_postprocessing { overlapping_threshold: 0.8 } }
    train_dataset_options { augmentations { panoptic_copy_paste {
      panoptic_copy_paste_scale: 0.5 } } }""", config)
  assert config.trainer_options.solver_options.warmup_steps == 5


@pytest.mark.parametrize("channels, num_heads", [
    (24, 8), (32, 8), (16, 8), (64, 4), (48, 8), (30, 3), (36, 6)])
def test_head_check_rejects_exactly_what_the_kmax_layer_rejects(
    tmp_path, channels, num_heads):
  # Brute force against the rule itself: queries and keys have channels // 2
  # channels, values channels; both split evenly over the heads.
  valid = (channels // 2) % num_heads == 0 and channels % num_heads == 0
  path = _write(tmp_path, _VALID + (
      "model_options { max_deeplab { transformer_decoder { "
      f"channels: {channels} num_heads: {num_heads} }} }} }}"))
  from deeplab2_kmax.model.transformer_decoder import kmax  # TensorFlow.
  if valid:
    config_loader.load_config(path)
    kmax.KMaXLayer(num_classes=3, channels=channels, num_heads=num_heads)
    return
  with pytest.raises(config_loader.ConfigError) as e:
    config_loader.load_config(path)
  assert "transformer_decoder.num_heads" in str(e.value)
  with pytest.raises(ValueError) as layer_error:
    kmax.KMaXLayer(num_classes=3, channels=channels, num_heads=num_heads)
  assert str(e.value).split("num_heads': ", 1)[1] in str(layer_error.value)


def test_eval_crop_check_accepts_images_that_fit(tmp_path):
  for dataset, crop in (
      ("cityscapes_panoptic", "crop_size: [1025, 2049]"),
      # The synthetic builder's --image_size varies: no fixed size to check.
      ("synthetic_panoptic", "crop_size: [64, 64]"),
      ("coco_panoptic", "crop_size: [641, 641] min_resize_value: 641 "
       "max_resize_value: 641"),
      ("coco_panoptic", "crop_size: [641, 641]"),  # COCO: at most 640x640.
      # ADE20K's image sizes vary: nothing to check without a resize.
      ("ade20k_panoptic", "crop_size: [64, 64]")):
    text = "\n".join(
        f'{split}_dataset_options {{ dataset: "{dataset}" {crop} }}'
        for split in ("train", "eval"))
    config_loader.load_config(_write(tmp_path, text))


@pytest.mark.parametrize("summaries, loop", [
    (50, 50), (100, 50), (30, 20), (1, 2), (2, 1), (7, 7), (9, 3)])
def test_summary_interval_check_is_orbits(tmp_path, summaries, loop):
  import orbit  # Its controller makes the same check at run time.
  import tensorflow as tf
  path = _write(tmp_path, _VALID + (
      f"trainer_options {{ save_summaries_steps: {summaries} "
      f"steps_per_loop: {loop} }}"))
  try:
    orbit.Controller(trainer=object(), global_step=tf.Variable(0),
                     steps_per_loop=loop, summary_interval=summaries,
                     summary_dir=str(tmp_path))
    orbit_accepts = True
  except ValueError:
    orbit_accepts = False
  if orbit_accepts:
    config_loader.load_config(path)
  else:
    with pytest.raises(config_loader.ConfigError, match="save_summaries_steps"):
      config_loader.load_config(path)
