"""Tests for --define parsing, --config_override merging and --strict.

The expected configs are written out by hand as whole files (the override's
values typed into the file), so the merge is checked against the plain
textproto parser, not against itself.
"""

import os
import subprocess
import sys

from google.protobuf import text_format
import pytest

from deeplab2_kmax import config_loader
from deeplab2_kmax import config_text
from deeplab2_kmax.protos import config_pb2
from deeplab2_kmax.tools import check_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO = os.path.join(REPO, "configs", "synthetic", "kmax_tiny_r50_os32.textproto")

_BASE = """
train_dataset_options { dataset: "synthetic_panoptic" crop_size: [129, 129]
                        batch_size: 4 file_pattern: "${DATA}/train-*" }
trainer_options { steps_per_loop: 10 save_summaries_steps: 10
                  solver_options { base_learning_rate: 0.001
                                   training_number_of_steps: 100 } }
"""


def _write(tmp_path, text, name="exp.textproto"):
  path = tmp_path / name
  path.write_text(text)
  return str(path)


def _parse(text):
  return text_format.Parse(text, config_pb2.ExperimentOptions())


@pytest.mark.parametrize("item", ["NOVALUE", "=1", "1ABC=2", "A-B=3", ""])
def test_malformed_defines_are_errors_naming_the_item(item):
  with pytest.raises(config_text.ConfigError, match="--define"):
    config_text.parse_defines([item])


def test_defines_keep_everything_after_the_first_equals():
  assert config_text.parse_defines(["A=x=y", "_B1=", "A=z"]) == {
      "A": "z", "_B1": ""}


def test_override_replaces_scalars_lists_and_keeps_siblings(tmp_path):
  config = config_loader.load_config(
      _write(tmp_path, _BASE), {"DATA": "/d"},
      overrides=["trainer_options { solver_options { "
                 "training_number_of_steps: 7 } }",
                 "train_dataset_options { crop_size: [65, 97] }"])
  expected = _parse(_BASE.replace("${DATA}", "/d")
                    .replace("training_number_of_steps: 100",
                             "training_number_of_steps: 7")
                    .replace("crop_size: [129, 129]", "crop_size: [65, 97]"))
  assert config == expected


def test_later_overrides_win_and_placeholders_are_filled(tmp_path):
  config = config_loader.load_config(
      _write(tmp_path, _BASE), {"DATA": "/d", "N": "3"},
      overrides=["trainer_options { steps_per_loop: 5 }",
                 "trainer_options { steps_per_loop: ${N} "
                 "save_summaries_steps: 3 }"])
  expected = _parse(_BASE.replace("${DATA}", "/d")
                    .replace("steps_per_loop: 10", "steps_per_loop: 3")
                    .replace("save_summaries_steps: 10",
                             "save_summaries_steps: 3"))
  assert config == expected


def test_override_that_does_not_parse_names_itself(tmp_path):
  with pytest.raises(config_text.ConfigError) as e:
    config_loader.load_config(
        _write(tmp_path, _BASE), {"DATA": "/d"},
        overrides=["trainer_options { steps_per_loop: 2 }",
                   "trainer_options { no_such_field: 1 }"])
  assert "--config_override #2" in str(e.value)
  assert "no_such_field" in str(e.value)


def test_override_is_validated_like_the_file(tmp_path):
  with pytest.raises(config_text.ConfigError) as e:
    config_loader.load_config(
        _write(tmp_path, _BASE), {"DATA": "/d"},
        overrides=["trainer_options { save_summaries_steps: 4 }"])
  assert "with --config_override" in str(e.value)
  assert "trainer_options.save_summaries_steps" in str(e.value)


def test_strict_check_makes_unresolved_placeholders_errors(tmp_path, capsys):
  path = _write(tmp_path, _BASE)
  assert check_config.check_files([path], {}) == []
  assert "unresolved" in capsys.readouterr().out
  errors = check_config.check_files([path], {}, strict=True)
  assert len(errors) == 1
  assert "train_dataset_options.file_pattern" in errors[0]
  assert check_config.check_files([path], {"DATA": "/d"}, strict=True) == []


def test_check_config_cli_applies_overrides_and_strict(tmp_path):
  path = _write(tmp_path, _BASE)
  run = [sys.executable, "-m", "deeplab2_kmax.tools.check_config", path]
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  env.pop("DATA", None)
  ok = subprocess.run(run, capture_output=True, text=True, env=env,
                      check=False)
  strict = subprocess.run(run + ["--strict"], capture_output=True, text=True,
                          env=env, check=False)
  bad = subprocess.run(
      run + ["--define=DATA=/d",
             "--config_override=trainer_options { steps_per_loop: 3 }"],
      capture_output=True, text=True, env=env, check=False)
  assert ok.returncode == 0, ok.stderr
  assert strict.returncode == 1 and "${DATA}" in strict.stderr
  assert bad.returncode == 1
  assert "save_summaries_steps" in bad.stderr


def test_train_cli_rejects_a_bad_override_before_building(tmp_path):
  model_dir = tmp_path / "model"
  result = subprocess.run(
      [sys.executable, "-m", "deeplab2_kmax.trainer.train",
       f"--config_file={DEMO}", f"--model_dir={model_dir}",
       "--define=DATA_DIR=/nowhere",
       "--config_override=model_options { max_deeplab { transformer_decoder"
       " { channels: 24 num_heads: 8 } } }"],
      capture_output=True, text=True, check=False,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
  assert result.returncode == 1, result.stderr[-2000:]
  assert "transformer_decoder.num_heads" in result.stderr
  assert result.stderr.count("ERROR:") == 1
  assert not model_dir.exists()
