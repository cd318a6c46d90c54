"""Regenerates the weights of the DeepLab2 parity fixture (reference/PARITY.md).

Fill rule, per full checkpoint key k with shape s:
rng = numpy.random.default_rng(zlib.crc32(k)); gamma -> 1 + 0.1 N(0, 1);
beta / bias -> 0.1 N(0, 1); BN moving statistics -> the npz's `bn/<k>`;
other rank >= 2 leaves -> N(0, 1) / sqrt(fan_in) (x class_kernel_scale for
`transformer_class_head/`); other rank 0 / 1 leaves -> 0.1 N(0, 1).
Drawn in float64, returned as float32.
"""

import json
import os
import pathlib
from typing import Dict
from typing import Mapping
from typing import Optional
from typing import Tuple
import zlib

import numpy as np
import tensorflow as tf

SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


def reference_dir() -> Optional[pathlib.Path]:
  """../shared/reference relative to the repository root, if present."""
  path = REPO_ROOT.parent / "shared" / "reference"
  return path if path.is_dir() else None


def read_sidecar(name: str = "parity_kmax_r50_coco.json") -> dict:
  return json.loads((reference_dir() / name).read_text())


def read_key_list(tsv_name: str) -> Dict[str, Tuple[int, ...]]:
  """Full checkpoint key -> shape, from a reference key-list tsv."""
  keys = {}
  lines = (reference_dir() / tsv_name).read_text().splitlines()
  for line in lines[1:]:
    key, shape = line.split("\t")[:2]
    keys[key] = tuple(int(d) for d in shape.split(",")) if shape else ()
  return keys


def relative_keys(keys: Mapping[str, Tuple[int, ...]],
                  prefix: str) -> Dict[str, Tuple[int, ...]]:
  """Keys under `prefix/`, with the prefix and the suffix stripped."""
  start = len(prefix) + 1
  return {key[start:-len(SUFFIX)]: shape for key, shape in keys.items()
          if key.startswith(prefix + "/")}


def fill_value(key: str, shape: Tuple[int, ...], bn_statistics=None,
               class_kernel_scale: float = 8.0) -> np.ndarray:
  """The fixture's value for the full checkpoint key `key`."""
  leaf = key[:-len(SUFFIX)].rsplit("/", 1)[-1]
  if leaf in ("moving_mean", "moving_variance"):
    return np.asarray(bn_statistics["bn/" + key], np.float32)
  rng = np.random.default_rng(zlib.crc32(key.encode("utf-8")))
  if leaf == "gamma":
    value = 1.0 + 0.1 * rng.standard_normal(shape)
  elif leaf in ("beta", "bias") or len(shape) < 2:
    value = 0.1 * rng.standard_normal(shape)
  else:
    value = rng.standard_normal(shape) / np.sqrt(np.prod(shape[:-1]))
    if key.startswith("transformer_class_head/"):
      value = value * class_kernel_scale
  return np.asarray(value, np.float32)


def load_component(variable_map: Mapping[str, tf.Variable], prefix: str,
                   keys: Mapping[str, Tuple[int, ...]], bn_statistics,
                   class_kernel_scale: float = 8.0) -> None:
  """Assigns the fixture's weights to `variable_map` (keys under prefix/)."""
  for relative_key, variable in variable_map.items():
    full_key = f"{prefix}/{relative_key}{SUFFIX}"
    value = fill_value(full_key, keys[full_key], bn_statistics,
                       class_kernel_scale)
    variable.assign(value.reshape(variable.shape))


def fixture_image(seed: int) -> np.ndarray:
  """The fixture's uint8 input image [1, 321, 321, 3]."""
  rng = np.random.default_rng(seed)
  return rng.integers(0, 256, size=(1, 321, 321, 3)).astype(np.uint8)


def skip_reason() -> Optional[str]:
  if reference_dir() is None:
    return ("reference fixtures not found at ../shared/reference relative to "
            "the repository root")
  if os.environ.get("DEEPLAB2_KMAX_SKIP_PARITY"):
    return "DEEPLAB2_KMAX_SKIP_PARITY is set"
  return None
