"""DeepLab2 checkpoint import (SPEC §9; reference/PARITY_STAGEWISE.md).

The round trip rebuilds the fixture's weights from the documented fill rule,
writes them as a DeepLab2-format checkpoint (SaveV2 with the DeepLab2 keys,
`save_counter` and the object graph), converts it with the CLI, restores the
result and checks that every variable holds its DeepLab2 value bit for bit
and that the restored model reproduces DeepLab2's prediction head and
semantic logits from the fixture's recorded inputs (every stage is checked
on the same weights by test_stagewise_parity.py). Everything comes from the
sidecar named by KMAX_PARITY_FIXTURE (default
../shared/reference/parity_kmax_r50_coco_stagewise.json beside the checkout).
"""

import subprocess
import sys

import ade20k_layout  # tests/model is on sys.path (rootdir conftest).
import numpy as np
import parity_utils
import pytest
import tensorflow as tf

from deeplab2_kmax import builders
from deeplab2_kmax import common
from deeplab2_kmax import config_loader
from deeplab2_kmax.model.layers import rewrites
from deeplab2_kmax.tools import convert_deeplab2_checkpoint as convert

SUFFIX = parity_utils.SUFFIX
SIDECAR = parity_utils.sidecar_path()


def write_deeplab2_checkpoint(prefix, values, object_graph=None):
  """Writes `values` (full key -> array) the way DeepLab2 saves them."""
  values = dict(values)
  values["save_counter" + SUFFIX] = np.array(1, np.int64)
  if object_graph is not None:
    values["_CHECKPOINTABLE_OBJECT_GRAPH"] = bytes(object_graph)
  names = sorted(values)
  tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names,
                    shape_and_slices=[""] * len(names),
                    tensors=[tf.constant(values[n]) for n in names])
  return prefix


# Error cases on a tiny stand-in: a dict of variables with DeepLab2 keys.


def _tiny_map():
  return {"encoder/_conv/kernel": tf.Variable(tf.zeros([3, 3, 2, 4])),
          "encoder/_bn/gamma": tf.Variable(tf.zeros([4]))}


def test_split_ignores_optimizer_slots_and_state():
  shapes = {
      "encoder/_conv/kernel" + SUFFIX: [3, 3, 2, 4],
      "encoder/_conv/kernel/.OPTIMIZER_SLOT/optimizer/m" + SUFFIX: [3, 3, 2, 4],
      "optimizer/iter" + SUFFIX: [],
      "global_step" + SUFFIX: [],
      "save_counter" + SUFFIX: [],
      "_CHECKPOINTABLE_OBJECT_GRAPH": [],
  }
  model, slots, state = convert.split_checkpoint_keys(shapes)
  assert model == {"encoder/_conv/kernel": (3, 3, 2, 4)}
  assert slots == ["encoder/_conv/kernel/.OPTIMIZER_SLOT/optimizer/m" + SUFFIX]
  assert len(state) == 4


def test_match_accepts_exact_map():
  variables = _tiny_map()
  shapes = {k: tuple(v.shape) for k, v in variables.items()}
  assert convert.match_variables(variables, shapes) == sorted(variables)


@pytest.mark.parametrize("case", ["unmapped", "missing", "shape", "unreached"])
def test_match_fails_loudly(case):
  variables = _tiny_map()
  shapes = {k: tuple(v.shape) for k, v in variables.items()}
  extra = []
  if case == "unmapped":
    shapes["encoder/_other/bias"] = (4,)
    expected = "encoder/_other/bias"
  elif case == "missing":
    del shapes["encoder/_bn/gamma"]
    expected = "encoder/_bn/gamma"
  elif case == "shape":
    shapes["encoder/_conv/kernel"] = (3, 3, 2, 5)
    expected = "[3, 3, 2, 5]"
  else:
    extra = [tf.Variable(tf.zeros([2]), name="orphan")]
    expected = "orphan"
  with pytest.raises(convert.ConversionError) as error:
    convert.match_variables(variables, shapes,
                            list(variables.values()) + extra)
  assert expected in str(error.value)


def test_positional_encoding_mismatch_names_the_crop():
  variables = {"encoder/_rpe/embeddings": tf.Variable(tf.zeros([509, 8]))}
  with pytest.raises(convert.ConversionError, match="--crop_size") as error:
    convert.match_variables(variables, {"encoder/_rpe/embeddings": (129, 8)})
  assert "1025,2049" in str(error.value) and "1281,1281" in str(error.value)
  assert "ade20k 641,641" in str(error.value)


def test_existing_or_unwritable_output_is_refused(tmp_path):
  source = write_deeplab2_checkpoint(
      str(tmp_path / "src"), {"encoder/_conv/kernel" + SUFFIX: np.zeros(2)})
  existing = write_deeplab2_checkpoint(str(tmp_path / "out"), {})
  with pytest.raises(convert.ConversionError, match="--overwrite"):
    convert.convert_checkpoint("unused.textproto", source, existing)
  blocker = tmp_path / "a_file"
  blocker.write_text("x")
  with pytest.raises(convert.ConversionError, match="--output_checkpoint"):
    convert.convert_checkpoint("unused.textproto", source,
                               str(blocker / "sub" / "out"))
  with pytest.raises(convert.ConversionError, match="--deeplab2_checkpoint"):
    convert.convert_checkpoint("unused.textproto", str(tmp_path / "nope"),
                               str(tmp_path / "new"))


def test_crop_size_flag_parsing():
  assert convert.parse_crop_size("1025,2049") == (1025, 2049)
  for bad in ("1025", "a,b", "0,5"):
    with pytest.raises(convert.ConversionError, match="--crop_size"):
      convert.parse_crop_size(bad)


def test_deeplab2_writer_round_trips(tmp_path):
  values = {"encoder/_conv/kernel" + SUFFIX: np.arange(6, dtype=np.float32)}
  prefix = write_deeplab2_checkpoint(str(tmp_path / "ckpt"), values, b"graph")
  reader = tf.train.load_checkpoint(prefix)
  np.testing.assert_array_equal(
      reader.get_tensor("encoder/_conv/kernel" + SUFFIX), np.arange(6))
  assert reader.get_tensor("save_counter" + SUFFIX) == 1
  assert reader.get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH") == b"graph"


def test_conversion_of_a_wrong_checkpoint_fails_without_output(tmp_path):
  if not SIDECAR.exists():
    pytest.skip(f"parity sidecar not found: {SIDECAR}")
  sidecar = parity_utils.read_sidecar(SIDECAR)
  kernel = next(k for k in parity_utils.read_key_list(
      sidecar["checkpoint_keys"], SIDECAR.parent)
                if k.endswith("/kernel" + SUFFIX))
  slot = kernel[:-len(SUFFIX)] + "/.OPTIMIZER_SLOT/optimizer/m" + SUFFIX
  source = write_deeplab2_checkpoint(str(tmp_path / "src"), {
      kernel: np.zeros([2], np.float32), slot: np.zeros([2], np.float32),
      "encoder/_not_a_layer/kernel" + SUFFIX: np.zeros([2], np.float32)})
  output = tmp_path / "out"
  with pytest.raises(convert.ConversionError) as error:
    convert.convert_checkpoint(
        str(parity_utils.REPO_ROOT / sidecar["config_file"]), source,
        str(output), crop_size=(65, 65))
  message = str(error.value)
  assert "encoder/_not_a_layer/kernel" in message
  assert "missing from the DeepLab2 checkpoint" in message
  assert f"{kernel[:-len(SUFFIX)]}: DeepLab2 [2]" in message
  assert "OPTIMIZER_SLOT" not in message
  assert not list(tmp_path.glob("out*"))


# Round trip through the CLI.


@pytest.fixture(scope="module")
def parity_run(tmp_path_factory):
  if not SIDECAR.exists():
    pytest.skip(f"parity sidecar not found: {SIDECAR} (set "
                "KMAX_PARITY_FIXTURE or place ../shared/reference beside "
                "the checkout)")
  tf.config.experimental.enable_tensor_float_32_execution(False)
  fixture = parity_utils.load_fixture(SIDECAR)
  values = fixture.weights()
  directory = tmp_path_factory.mktemp("conversion")
  source = write_deeplab2_checkpoint(
      str(directory / "deeplab2" / "ckpt-1"), values,
      fixture.reference["object_graph"].tobytes())
  output = str(directory / "converted" / "model")
  crop = fixture.crop
  config_file = str(parity_utils.REPO_ROOT / fixture.sidecar["config_file"])
  result = subprocess.run(
      [sys.executable, "-m", "deeplab2_kmax.tools.convert_deeplab2_checkpoint",
       f"--config_file={config_file}", f"--deeplab2_checkpoint={source}",
       f"--output_checkpoint={output}", f"--crop_size={crop[0]},{crop[1]}"],
      capture_output=True, text=True, cwd=str(parity_utils.REPO_ROOT),
      check=False)
  assert result.returncode == 0, result.stderr[-3000:]

  model = parity_utils.build_model(fixture)
  tf.train.Checkpoint(model=model).read(output).assert_existing_objects_matched()
  # Compared in DeepLab2's order of operations, as in test_stagewise_parity.
  with rewrites.deeplab2_order_of_operations():
    yield fixture, result.stdout, model, values


def test_cli_reports_conversion(parity_run):
  fixture, stdout, _, _ = parity_run
  assert f"Converted {len(fixture.keys)} variables" in stdout


def test_converted_weights_equal_the_deeplab2_values(parity_run):
  model, values = parity_run[2:]
  variable_map = model.deeplab2_variable_map()
  assert len(variable_map) == len(values)
  for key, variable in variable_map.items():
    np.testing.assert_array_equal(variable.numpy(), values[key + SUFFIX],
                                  err_msg=key)


def test_converted_model_reproduces_the_heads(parity_run):
  fixture, _, model, _ = parity_run
  outputs = parity_utils.recorded_head_outputs(model, fixture.reference)
  compared = [name for name in parity_utils.HEAD_OUTPUTS
              if name in fixture.reference.files]
  assert common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY in compared
  for name in compared:
    error = parity_utils.relative_error(outputs[name],
                                        fixture.reference[name])
    assert error <= fixture.tolerance(name), (name, error)


# Official-crop key lists (small-crop builds are in test_full_model_keys.py).

OFFICIAL = {
    "coco": ("deeplab2_kmax_r50_coco_1281_checkpoint_keys.tsv",
             "configs/coco/kmax_r50_os32.textproto", (1281, 1281)),
    "cityscapes": ("deeplab2_kmax_r50_cityscapes_1025x2049_checkpoint_keys.tsv",
                   "configs/cityscapes/kmax_r50_os32.textproto", (1025, 2049)),
}


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_official_crop_key_list_maps_completely(name):
  if parity_utils.skip_reason():
    pytest.skip(parity_utils.skip_reason())
  tsv, config_file, crop = OFFICIAL[name]
  config = config_loader.load_config(
      str(parity_utils.REPO_ROOT / config_file), {}, validate_config=False)
  model = builders.build_model(config, crop_size=crop)
  source, slots, state = convert.split_checkpoint_keys(
      parity_utils.read_key_list(tsv))
  assert not slots and not state
  keys = convert.match_variables(model.deeplab2_variable_map(), source,
                                 model.variables)
  assert len(keys) == len(source)


# ADE20K: the converter at 151 classes, on DeepLab2's derived R50 layout.


def test_ade20k_round_trip_at_151_classes(tmp_path, monkeypatch):
  """A DeepLab2-layout ADE20K R50 checkpoint (ade20k_layout) converts and
  restores into our ADE20K model with every value in place, bit for bit.

  The converter builds its model through `builders.build_model`, which traces
  the full model (~20 s on CPU); here it gets the session's eager-built
  ADE20K model instead (same variables: test_full_model_keys checks them),
  and everything else runs as in a real conversion.
  """
  if parity_utils.skip_reason():
    pytest.skip(parity_utils.skip_reason())
  model = ade20k_layout.model()
  builds = []

  def build_model(config, crop_size=None):
    builds.append((builders.model_kwargs(config)["semantic_num_classes"],
                   crop_size))
    return model

  monkeypatch.setattr(convert.builders, "build_model", build_model)
  keys = ade20k_layout.key_list()
  # A distinct, exactly representable pattern per variable.
  values = {key: (i * 4096 + np.arange(int(np.prod(shape))) % 4093).astype(
      np.float32).reshape(shape) for i, (key, shape) in enumerate(
          sorted(keys.items()))}
  (tmp_path / "deeplab2").mkdir()
  source = write_deeplab2_checkpoint(str(tmp_path / "deeplab2" / "ckpt-1"),
                                     values)
  output = str(tmp_path / "converted" / "model")
  report = convert.convert_checkpoint(
      str(parity_utils.REPO_ROOT / ade20k_layout.CONFIG), source, output,
      crop_size=(33, 33))
  assert builds == [(ade20k_layout.ADE20K_CLASSES, (33, 33))]
  assert len(report.converted) == len(keys)
  assert report.ignored_state == ["save_counter" + SUFFIX]
  for variable in model.variables:  # Only the written file holds the values.
    variable.assign(tf.zeros_like(variable))
  tf.train.Checkpoint(model=model).read(output).assert_existing_objects_matched()
  variable_map = model.deeplab2_variable_map()
  for key, value in values.items():
    np.testing.assert_array_equal(
        variable_map[key[:-len(SUFFIX)]].numpy(), value, err_msg=key)
  class_head = variable_map["transformer_class_head/_conv/kernel"]
  assert class_head.shape[-1] == ade20k_layout.ADE20K_CLASSES
