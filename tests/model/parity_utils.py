"""Regenerates the weights of the DeepLab2 parity fixture (reference/PARITY.md).

Fill rule, per full checkpoint key k with shape s:
rng = numpy.random.default_rng(zlib.crc32(k)); gamma -> 1 + 0.1 N(0, 1);
beta / bias -> 0.1 N(0, 1); BN moving statistics -> the npz's `bn/<k>`;
other rank >= 2 leaves -> N(0, 1) / sqrt(fan_in) (x class_kernel_scale for
`transformer_class_head/`); other rank 0 / 1 leaves -> 0.1 N(0, 1).
Drawn in float64, returned as float32.
"""

import dataclasses
import json
import os
import pathlib
from typing import Dict
from typing import Mapping
from typing import Optional
from typing import Sequence
from typing import Tuple
import zlib

import numpy as np
import tensorflow as tf

SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
DEFAULT_SIDECAR = (REPO_ROOT.parent / "shared" / "reference" /
                   "parity_kmax_r50_coco.json")


def reference_dir() -> Optional[pathlib.Path]:
  """../shared/reference relative to the repository root, if present."""
  path = REPO_ROOT.parent / "shared" / "reference"
  return path if path.is_dir() else None


def read_sidecar(name: str = "parity_kmax_r50_coco.json") -> dict:
  return json.loads((reference_dir() / name).read_text())


def read_key_list(tsv_name: str, directory: Optional[pathlib.Path] = None
                  ) -> Dict[str, Tuple[int, ...]]:
  """Full checkpoint key -> shape, from a key-list tsv in `directory`
  (default: the shared reference folder)."""
  keys = {}
  lines = ((directory or reference_dir()) / tsv_name).read_text().splitlines()
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


def fixture_image(seed: int, crop: Sequence[int] = (321, 321)) -> np.ndarray:
  """The fixture's uint8 input image [1, H, W, 3]."""
  rng = np.random.default_rng(seed)
  return rng.integers(0, 256, size=(1, *crop, 3)).astype(np.uint8)


@dataclasses.dataclass
class Fixture:
  """Everything a model-parity sidecar names, loaded."""
  sidecar: dict
  reference: Mapping[str, np.ndarray]
  keys: Dict[str, Tuple[int, ...]]
  config: object  # ExperimentOptions with the evaluator overrides applied.
  image: np.ndarray  # uint8 [1, H, W, 3].

  @property
  def crop(self) -> Tuple[int, int]:
    return tuple(self.sidecar["crop_size"])

  @property
  def class_kernel_scale(self) -> float:
    return self.sidecar.get("class_kernel_scale", 8.0)

  def weights(self) -> Dict[str, np.ndarray]:
    """Full DeepLab2 key -> the fill rule's value."""
    return {key: fill_value(key, shape, self.reference,
                            self.class_kernel_scale)
            for key, shape in self.keys.items()}


def sidecar_path() -> pathlib.Path:
  """KMAX_PARITY_FIXTURE, else the R50 COCO sidecar beside the checkout."""
  return pathlib.Path(os.environ.get("KMAX_PARITY_FIXTURE", DEFAULT_SIDECAR))


def load_fixture(path: Optional[pathlib.Path] = None) -> Fixture:
  """Loads the sidecar at `path` and the files it names (beside it)."""
  from deeplab2_kmax import config_loader  # pylint: disable=g-import-not-at-top
  path = path or sidecar_path()
  sidecar = json.loads(path.read_text())
  reference = np.load(path.parent / sidecar["npz"])
  keys = read_key_list(sidecar["checkpoint_keys"], path.parent)
  config = config_loader.load_config(
      str(REPO_ROOT / sidecar["config_file"]), {}, validate_config=False)
  for name, value in sidecar.get("evaluator_overrides", {}).items():
    target = config.evaluator_options
    if not target.DESCRIPTOR.fields_by_name.get(name):
      target = target.maskwise_postprocessing
    setattr(target, name, value)
  image = fixture_image(sidecar["image_seed"], sidecar["crop_size"])
  if "image" in reference:
    np.testing.assert_array_equal(image, reference["image"])
  return Fixture(sidecar, reference, keys, config, image)


def logits_within_tolerance(actual: np.ndarray, expected: np.ndarray) -> bool:
  """PARITY.md: |actual - expected| <= 1e-3 (1 + |expected|) everywhere."""
  return bool(np.all(np.abs(actual - expected) <=
                     1e-3 * (1 + np.abs(expected))))


def skip_reason() -> Optional[str]:
  if reference_dir() is None:
    return ("reference fixtures not found at ../shared/reference relative to "
            "the repository root")
  if os.environ.get("DEEPLAB2_KMAX_SKIP_PARITY"):
    return "DEEPLAB2_KMAX_SKIP_PARITY is set"
  return None


LOGIT_KEYS = ("pixel_space_mask_logits", "transformer_class_logits")


def logit_change_under_input_rounding(model, image) -> Tuple[float, str]:
  """Largest |Δ| / (1 + |logit|) of the model's logits for a 1e-6 relative
  change of `image`, and the logits it occurs in. Above PARITY.md's 1e-3,
  a fixture cannot tell implementations with another operation order apart.
  """
  image = tf.constant(image, tf.float32)
  base = model(image, training=False)
  moved = model(image * (1.0 + 1e-6), training=False)
  return max((float(np.max(np.abs(moved[k].numpy() - base[k].numpy()) /
                           (1.0 + np.abs(base[k].numpy())))), k)
             for k in LOGIT_KEYS)


def chaotic_fixture_reason(model, image) -> Optional[str]:
  """Why the logits comparison cannot be made on this fixture, or None."""
  change, where = logit_change_under_input_rounding(model, image)
  if change <= 1e-3:
    return None
  return (f"the fixture cannot resolve 1e-3: a 1e-6 relative change of the "
          f"input image moves our own {where} by up to {change:.3g} x "
          f"(1 + |logit|); layer-by-layer structure is checked by "
          f"test_full_model_parity.py::"
          f"test_every_batch_norm_input_matches_deeplab2_statistics")


def assert_final_outputs_match(fixture: Fixture, outputs) -> None:
  """Mask and class logits within PARITY.md's tolerance, panoptic map equal
  on >= 99.9% of pixels (for the outputs the sidecar lists)."""
  compare = fixture.sidecar["compare"]
  for name in LOGIT_KEYS:
    if name in compare:
      assert logits_within_tolerance(np.asarray(outputs[name]),
                                     fixture.reference[name]), name
  if "panoptic_pred" in compare:
    agree = np.mean(np.asarray(outputs["panoptic_pred"]) ==
                    fixture.reference["panoptic_pred"])
    assert agree >= 0.999, agree
