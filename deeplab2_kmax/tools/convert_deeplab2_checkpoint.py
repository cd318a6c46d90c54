"""Converts an official DeepLab2 kMaX-DeepLab checkpoint to this library.

  python -m deeplab2_kmax.tools.convert_deeplab2_checkpoint \
      --config_file=configs/coco/kmax_r50_os32.textproto \
      --deeplab2_checkpoint=/ckpts/kmax_resnet50_coco_train/ckpt-150000 \
      --output_checkpoint=/ckpts/converted/kmax_r50_coco [--crop_size=H,W]

The model is built from the config (at the config's eval crop unless
--crop_size is given). Every DeepLab2 variable key is mapped through the
model's `deeplab2_variable_map()`; any DeepLab2 key that maps onto nothing,
any variable of ours that no key fills, or any shape mismatch stops the
conversion with the full list. Optimizer slots, the step counters and the
object graph are ignored. The output is a model-only checkpoint
`tf.train.Checkpoint(model=...)`, the layout that the trainer's
`initial_checkpoint`, the evaluator and `export_model` restore.
"""

import dataclasses
import os
import sys
from typing import List
from typing import Mapping
from typing import Optional
from typing import Sequence
from typing import Tuple

from absl import app
from absl import flags
import tensorflow as tf

from deeplab2_kmax import builders
from deeplab2_kmax import config_loader

SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
# Official crops (height, width) of the released checkpoints.
OFFICIAL_CROPS = {"coco": (1281, 1281), "cityscapes": (1025, 2049),
                  "ade20k": (641, 641), "ade20k res1281": (1281, 1281)}
# Top-level training state of a DeepLab2 checkpoint (not model weights).
_STATE_PREFIXES = ("optimizer/", "global_step/", "save_counter/")
_OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"


class ConversionError(ValueError):
  """The DeepLab2 checkpoint does not match the model built from the config."""


@dataclasses.dataclass
class ConversionReport:
  """What a conversion did."""
  output_checkpoint: str
  crop_size: Tuple[int, int]
  converted: List[str]  # DeepLab2 keys (without the suffix) written.
  num_parameters: int
  ignored_optimizer_slots: List[str]
  ignored_state: List[str]  # Step counters, optimizer state, object graph.

  def summary(self) -> str:
    lines = [
        f"Converted {len(self.converted)} variables "
        f"({self.num_parameters:,} values) at crop "
        f"{self.crop_size[0]}x{self.crop_size[1]} -> {self.output_checkpoint}"]
    if self.ignored_optimizer_slots:
      lines.append(f"Ignored {len(self.ignored_optimizer_slots)} optimizer "
                   "slot variables (not needed for inference or fine-tuning).")
    if self.ignored_state:
      lines.append("Ignored training state: " +
                   ", ".join(sorted(self.ignored_state)))
    return "\n".join(lines)


def _is_optimizer_slot(key: str) -> bool:
  return "/.OPTIMIZER_SLOT/" in key


def split_checkpoint_keys(shapes: Mapping[str, Sequence[int]]):
  """Splits a DeepLab2 key->shape map into model variables and ignored keys.

  Args:
    shapes: Full checkpoint keys (as `tf.train.list_variables` gives) to shapes.

  Returns:
    (model, slots, state): model variable key (suffix stripped) -> shape tuple,
    the optimizer slot keys, and the other training-state keys.
  """
  model, slots, state = {}, [], []
  for key, shape in shapes.items():
    if _is_optimizer_slot(key):
      slots.append(key)
    elif key == _OBJECT_GRAPH_KEY or key.startswith(_STATE_PREFIXES):
      state.append(key)
    elif key.endswith(SUFFIX):
      model[key[:-len(SUFFIX)]] = tuple(int(d) for d in shape)
    else:
      # Not a variable value: no model variable can take it; reported below.
      model[key] = tuple(int(d) for d in shape)
  return model, sorted(slots), sorted(state)


def _crop_hint(keys: Sequence[str]) -> str:
  if not any("embedding" in key for key in keys):
    return ""
  crops = ", ".join(f"{name} {h},{w}" for name, (h, w) in
                    OFFICIAL_CROPS.items())
  return ("\nPositional-encoding tables are involved: their shapes depend on "
          "the crop the model is built at. Build at the checkpoint's training "
          f"crop with --crop_size=H,W (official crops: {crops}).")


def match_variables(variable_map: Mapping[str, tf.Variable],
                    source_shapes: Mapping[str, Tuple[int, ...]],
                    model_variables: Optional[Sequence[tf.Variable]] = None
                    ) -> List[str]:
  """Checks that `variable_map` and the DeepLab2 keys match one to one.

  Args:
    variable_map: DeepLab2 key (no suffix) -> our variable.
    source_shapes: DeepLab2 model keys (no suffix) -> shape.
    model_variables: All variables of our model; any that `variable_map` does
      not reach is reported as missing.

  Returns:
    The sorted keys to convert.

  Raises:
    ConversionError: listing unmapped, missing and mismatched keys.
  """
  unmapped = sorted(set(source_shapes) - set(variable_map))
  missing = sorted(set(variable_map) - set(source_shapes))
  mismatched = sorted(
      f"{key}: DeepLab2 {list(source_shapes[key])} vs ours "
      f"{variable_map[key].shape.as_list()}"
      for key in set(source_shapes) & set(variable_map)
      if tuple(source_shapes[key]) != tuple(variable_map[key].shape))
  unreached = []
  if model_variables is not None:
    reached = {id(v) for v in variable_map.values()}
    unreached = sorted(v.name for v in model_variables if id(v) not in reached)
  problems = []
  for title, items in (
      ("DeepLab2 keys that map onto no variable of the model", unmapped),
      ("model variables missing from the DeepLab2 checkpoint", missing),
      ("model variables that no DeepLab2 key names", unreached),
      ("shape mismatches", mismatched)):
    if items:
      problems.append(f"{len(items)} {title}:\n  " + "\n  ".join(items))
  if problems:
    raise ConversionError(
        "The DeepLab2 checkpoint does not match the model:\n" +
        "\n".join(problems) + _crop_hint(mismatched))
  return sorted(variable_map)


def _resolve_checkpoint(path: str) -> str:
  if tf.io.gfile.isdir(path):
    latest = tf.train.latest_checkpoint(path)
    if latest is None:
      raise ConversionError(
          f"--deeplab2_checkpoint={path}: directory holds no checkpoint.")
    return latest
  if not tf.io.gfile.exists(path + ".index"):
    raise ConversionError(
        f"--deeplab2_checkpoint={path}: no checkpoint found ({path}.index "
        "does not exist).")
  return path


def _check_output(path: str, overwrite: bool) -> None:
  if not path:
    raise ConversionError("--output_checkpoint is empty.")
  if tf.io.gfile.exists(path + ".index") and not overwrite:
    raise ConversionError(
        f"--output_checkpoint={path}: a checkpoint already exists there; "
        "pass --overwrite to replace it.")
  directory = os.path.dirname(os.path.abspath(path))
  try:
    tf.io.gfile.makedirs(directory)
  except (tf.errors.OpError, OSError) as e:
    raise ConversionError(
        f"--output_checkpoint={path}: cannot create {directory}: {e}"
    ) from None
  if not os.access(directory, os.W_OK):
    raise ConversionError(
        f"--output_checkpoint={path}: directory {directory} is not writable.")


def _load_config(config):
  if isinstance(config, str):
    return config_loader.load_config(config, {}, validate_config=False)
  return config


def parse_crop_size(text: str) -> Tuple[int, int]:
  """'H,W' -> (H, W)."""
  try:
    height, width = (int(v) for v in text.split(","))
  except ValueError:
    raise ConversionError(
        f"--crop_size={text!r}: expected two integers H,W") from None
  if height <= 0 or width <= 0:
    raise ConversionError(f"--crop_size={text!r}: must be positive")
  return height, width


def convert_checkpoint(config, deeplab2_checkpoint: str,
                       output_checkpoint: str,
                       crop_size: Optional[Sequence[int]] = None,
                       overwrite: bool = False) -> ConversionReport:
  """Converts a DeepLab2 checkpoint into this library's model checkpoint.

  Args:
    config: An `ExperimentOptions` proto or the path of a config file.
    deeplab2_checkpoint: Checkpoint prefix (or a directory; its latest).
    output_checkpoint: Prefix of the model-only checkpoint to write.
    crop_size: (H, W) to build the model at; default the config's eval crop.
    overwrite: Replace an existing `output_checkpoint`.

  Returns:
    A `ConversionReport`.

  Raises:
    ConversionError: on a bad argument or any key / shape mismatch.
  """
  _check_output(output_checkpoint, overwrite)
  source = _resolve_checkpoint(deeplab2_checkpoint)
  reader = tf.train.load_checkpoint(source)
  source_shapes, slots, state = split_checkpoint_keys(
      reader.get_variable_to_shape_map())
  config = _load_config(config)
  if crop_size is None:
    crop_size = tuple(config.eval_dataset_options.crop_size)
  if len(crop_size) != 2:
    raise ConversionError(
        f"crop size {list(crop_size)}: need (H, W); give --crop_size.")
  crop_size = tuple(int(v) for v in crop_size)
  model = builders.build_model(config, crop_size=crop_size)
  variable_map = model.deeplab2_variable_map()
  keys = match_variables(variable_map, source_shapes, model.variables)
  for key in keys:
    variable = variable_map[key]
    variable.assign(tf.cast(reader.get_tensor(key + SUFFIX), variable.dtype))
  tf.train.Checkpoint(model=model).write(output_checkpoint)
  return ConversionReport(
      output_checkpoint=output_checkpoint, crop_size=crop_size,
      converted=keys,
      num_parameters=sum(int(tf.size(variable_map[k])) for k in keys),
      ignored_optimizer_slots=slots, ignored_state=state)


FLAGS = flags.FLAGS


def _define_flags() -> None:
  """CLI flags; defined only when run as a program (modules share names)."""
  flags.DEFINE_string("config_file", None,
                      "Config of the model to build.")
  flags.DEFINE_string(
      "deeplab2_checkpoint", None, "DeepLab2 checkpoint prefix or directory.")
  flags.DEFINE_string(
      "output_checkpoint", None, "Prefix of the converted checkpoint.")
  flags.DEFINE_string(
      "crop_size", None, "H,W to build the model at (default: eval crop).")
  flags.DEFINE_bool("overwrite", False,
                    "Replace an existing output checkpoint.")


def main(argv):
  del argv
  for name in ("config_file", "deeplab2_checkpoint", "output_checkpoint"):
    if not FLAGS[name].value:
      raise app.UsageError(f"--{name} is required.")
  try:
    crop = parse_crop_size(FLAGS.crop_size) if FLAGS.crop_size else None
    report = convert_checkpoint(FLAGS.config_file, FLAGS.deeplab2_checkpoint,
                                FLAGS.output_checkpoint, crop,
                                FLAGS.overwrite)
  except (ConversionError, config_loader.ConfigError) as e:
    print(f"ERROR: {e}", file=sys.stderr)
    sys.exit(1)
  print(report.summary())


if __name__ == "__main__":
  _define_flags()
  app.run(main)
