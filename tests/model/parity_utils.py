"""Loads a DeepLab2 stage-wise parity fixture (reference/PARITY_STAGEWISE.md).

A fixture is a sidecar JSON (format "stagewise-v2") naming a config, crop,
checkpoint key list, fill-rule settings, evaluator overrides and an npz of
DeepLab2's input and output of every stage, plus a `sensitivity` table.

Weights, per full checkpoint key k with shape s:
rng = numpy.random.default_rng(zlib.crc32(k)); gamma -> 1 + 0.1 N(0, 1);
beta / bias -> 0.1 N(0, 1); BN moving statistics -> the npz's `bn/<k>`;
other rank >= 2 leaves -> N(0, 1) / sqrt(fan_in) (x class_kernel_scale for
`transformer_class_head/`); other rank 0 / 1 leaves -> 0.1 N(0, 1).
Drawn in float64, returned as float32.

Everything model- or dataset-specific (stage names, strides, number of kMaX
layers, crop, slots) is derived from the sidecar and the npz, so other
fixtures of the format run through the same code.
"""

import dataclasses
import json
import math
import os
import pathlib
import re
from typing import Dict
from typing import Iterable
from typing import List
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
                   "parity_kmax_r50_coco_stagewise.json")

# Tolerance rule of the format: max |ours - ref| / (1 + |ref|) <=
# max(TOLERANCE_FLOOR, SENSITIVITY_FACTOR * sensitivity).
TOLERANCE_FLOOR = 1e-4
SENSITIVITY_FACTOR = 2.0
ASSIGNMENT_AGREEMENT = 0.999
# Outputs of the prediction head (and the semantic head), stored at the top
# level of the npz; their sensitivities are `predictor/<key>`.
HEAD_OUTPUTS = ("pixel_space_mask_logits", "transformer_class_logits",
                "semantic_logits")
_KMAX_KEY = re.compile(r"kmax/(\d+)/centers_out$")


def reference_dir() -> Optional[pathlib.Path]:
  """../shared/reference relative to the repository root, if present."""
  path = REPO_ROOT.parent / "shared" / "reference"
  return path if path.is_dir() else None


def skip_reason() -> Optional[str]:
  if reference_dir() is None:
    return ("reference fixtures not found at ../shared/reference relative to "
            "the repository root")
  return None


def sidecar_path() -> pathlib.Path:
  """KMAX_PARITY_FIXTURE, else the R50 COCO sidecar beside the checkout."""
  return pathlib.Path(os.environ.get("KMAX_PARITY_FIXTURE", DEFAULT_SIDECAR))


def read_sidecar(path: Optional[pathlib.Path] = None) -> dict:
  return json.loads((path or sidecar_path()).read_text())


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


def fixture_image(seed: int, crop: Sequence[int]) -> np.ndarray:
  """The fixture's uint8 input image [1, H, W, 3]."""
  rng = np.random.default_rng(seed)
  return rng.integers(0, 256, size=(1, *crop, 3)).astype(np.uint8)


@dataclasses.dataclass
class Fixture:
  """Everything a parity sidecar names, loaded."""
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

  def tolerance(self, key: str) -> float:
    return tolerance(self.sidecar.get("sensitivity", {}), key)


def load_fixture(path: Optional[pathlib.Path] = None) -> Fixture:
  """Loads the sidecar at `path` and the files it names (beside it)."""
  from deeplab2_kmax import config_loader  # pylint: disable=g-import-not-at-top
  path = path or sidecar_path()
  sidecar = read_sidecar(path)
  for field in ("npz", "config_file", "crop_size", "checkpoint_keys",
                "image_seed"):
    if field not in sidecar:
      raise ValueError(f"{path}: the sidecar has no field {field!r}.")
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


def build_model(fixture: Fixture):
  """Our model from the fixture's config (plain batch norm), variables
  created by one inference pass at the fixture's crop (eager: faster to
  build than a traced call)."""
  from deeplab2_kmax import builders  # pylint: disable=g-import-not-at-top
  from deeplab2_kmax.model import kmax_deeplab  # pylint: disable=g-import-not-at-top
  kwargs = builders.model_kwargs(fixture.config)
  kwargs["use_sync_batch_norm"] = False
  model = kmax_deeplab.KMaXDeepLab(**kwargs)
  model(tf.zeros([1, *fixture.crop, 3]), training=False, return_semantic=True)
  return model


def build_fixture_model(fixture: Fixture):
  """`build_model`, holding the fixture's DeepLab2 weights."""
  model = build_model(fixture)
  weights = fixture.weights()
  for key, variable in model.deeplab2_variable_map().items():
    variable.assign(weights[key + SUFFIX].reshape(variable.shape))
  return model


def recorded_head_outputs(model, reference: Mapping[str, np.ndarray]
                          ) -> Dict[str, tf.Tensor]:
  """The prediction head fed the recorded decoder output and embeddings, and
  the semantic branch (if the model has one) fed the recorded encoder
  endpoints (with their activated copies)."""
  def recorded(key):
    return tf.constant(reference[key])

  outputs = model.head(
      recorded("pixel_decoder/decoder_output"),
      recorded("transformer_decoder/transformer_class_feature"),
      recorded("transformer_decoder/transformer_mask_feature"),
      training=False)
  if model.semantic_branch is not None:
    endpoints = model.encoder.with_activated_copies(
        {name: recorded(f"encoder/{name}")
         for name in model.encoder.stage_names})
    outputs["semantic_logits"] = model.semantic_branch(endpoints,
                                                       training=False)
  return outputs


# The tolerance rule and stage discovery (generic over fixtures).


def sensitivity_group(key: str) -> str:
  """Prefix of the sensitivity entries whose rule the array `key` follows
  when it has no entry of its own: its stage (`encoder/`, `pixel_decoder/`,
  `kmax/<i>/` for a layer's auxiliary outputs, `kmax/` for the transformer
  decoder's embedding projections, `predictor/` for the head outputs)."""
  if key in HEAD_OUTPUTS:
    return "predictor/"
  parts = key.split("/")
  if parts[0] == "kmax" and len(parts) > 2:
    return f"kmax/{parts[1]}/"
  if parts[0] in ("kmax", "transformer_decoder"):
    return "kmax/"
  return parts[0] + "/"


def tolerance(sensitivity: Mapping[str, float], key: str) -> float:
  """max(1e-4, 2 x sensitivity) of `key` (`predictor/<key>` for the head
  outputs); without an entry, the largest sensitivity of its group."""
  for name in (key, "predictor/" + key):
    if name in sensitivity:
      value = sensitivity[name]
      break
  else:
    group = sensitivity_group(key)
    value = max((v for k, v in sensitivity.items() if k.startswith(group)),
                default=0.0)
  return max(TOLERANCE_FLOOR, SENSITIVITY_FACTOR * float(value))


def relative_error(actual, expected) -> float:
  """max |actual - expected| / (1 + |expected|)."""
  actual = np.asarray(actual, np.float64)
  expected = np.asarray(expected, np.float64)
  if actual.shape != expected.shape:
    raise AssertionError(f"shape {actual.shape} != reference {expected.shape}")
  return float(np.max(np.abs(actual - expected) / (1.0 + np.abs(expected))))


def arrays_under(names: Iterable[str], prefix: str) -> List[str]:
  """Npz keys directly under `prefix/` (their last component), sorted."""
  start = len(prefix) + 1
  return sorted(n[start:] for n in names
                if n.startswith(prefix + "/") and "/" not in n[start:])


def num_kmax_layers(names: Iterable[str]) -> int:
  """Number of kMaX layers recorded (`kmax/<i>/centers_out`, i = 0 .. n-1)."""
  layers = sorted(int(m.group(1)) for m in map(_KMAX_KEY.match, names) if m)
  if layers != list(range(len(layers))):
    raise ValueError(f"kMaX layers recorded are not 0 .. n-1: {layers}")
  return len(layers)


def stride_of(spatial_shape: Sequence[int], crop: Sequence[int]) -> int:
  """The power-of-two output stride s with ceil(crop / s) == spatial_shape
  (both dimensions; e.g. 11 x 11 of a 321 x 321 crop is stride 32)."""
  for exponent in range(8):
    stride = 2**exponent
    if all(math.ceil(c / stride) == s for c, s in zip(crop, spatial_shape)):
      return stride
  raise ValueError(f"spatial shape {list(spatial_shape)} is no power-of-two "
                   f"stride of the crop {list(crop)}")


def decoder_key_at_stride(reference: Mapping[str, np.ndarray],
                          crop: Sequence[int], stride: int) -> str:
  """The one `pixel_decoder/*` array of the npz at output stride `stride`."""
  names = [n for n in arrays_under(reference, "pixel_decoder")
           if stride_of(reference[f"pixel_decoder/{n}"].shape[1:3],
                        crop) == stride]
  if len(names) != 1:
    raise ValueError(f"expected one pixel_decoder array at stride {stride}, "
                     f"found {names}")
  return names[0]


def unchecked_arrays(names: Iterable[str], checked: Iterable[str]
                     ) -> List[str]:
  """Npz arrays that are neither checked nor inputs / weights / metadata."""
  checked = set(checked)
  return sorted(n for n in names if n not in checked and not n.startswith(
      "bn/") and n not in ("image", "object_graph") and
                not re.fullmatch(r"kmax/\d+/stride", n))
