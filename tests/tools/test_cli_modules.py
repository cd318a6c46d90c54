"""Every CLI module imports beside every other one, and parses its flags.

absl keeps one global flag registry, so a module that defines flags at import
time breaks any process (a test session, a notebook) that imports two tools
sharing a flag name. Each tool defines its flags only when run as a program.
"""

import importlib
import subprocess
import sys

import pytest

CLI_MODULES = (
    "deeplab2_kmax.data.build_cityscapes_data",
    "deeplab2_kmax.data.build_coco_data",
    "deeplab2_kmax.data.build_synthetic_data",
    "deeplab2_kmax.evaluation.evaluate_panoptic",
    "deeplab2_kmax.tools.check_config",
    "deeplab2_kmax.tools.convert_deeplab2_checkpoint",
    "deeplab2_kmax.tools.demo",
    "deeplab2_kmax.tools.model_summary",
    "deeplab2_kmax.tools.predict",
    "deeplab2_kmax.trainer.export_model",
    "deeplab2_kmax.trainer.train",
)


def test_all_cli_modules_import_together():
  from absl import flags
  for name in CLI_MODULES:
    importlib.import_module(name)
  # Importing defines none of the tools' flags; they appear only under
  # __main__.
  tool_flags = {"config_file", "output_dir", "model_dir", "gt_json",
                "coco_root", "cityscapes_root", "saved_model", "define",
                "deeplab2_checkpoint", "crop_size"}
  assert not tool_flags & set(flags.FLAGS)


@pytest.mark.parametrize("module, flag", [
    ("deeplab2_kmax.evaluation.evaluate_panoptic", "--gt_json"),
    ("deeplab2_kmax.tools.model_summary", "--config_file"),
])
def test_cli_defines_its_flags_when_run(module, flag):
  """Run as a program, the tool knows its flags and names the missing one."""
  help_run = subprocess.run([sys.executable, "-m", module, "--help"],
                            capture_output=True, text=True, timeout=300)
  assert flag in help_run.stdout + help_run.stderr
  bare_run = subprocess.run([sys.executable, "-m", module],
                            capture_output=True, text=True, timeout=300)
  assert bare_run.returncode != 0
  assert flag in bare_run.stdout + bare_run.stderr
