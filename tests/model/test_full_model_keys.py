"""Whole-model DeepLab2 key maps and parameter counts (SPEC §2.5, §9),
and the parity fixture's key list and batch-norm statistics.

Variable shapes do not depend on the crop (the relative positional tables
keep 509 rows), so the models are built at small crops here; the key lists
were recorded at the official crops.
"""

import functools

import ade20k_layout  # tests/model is on sys.path (rootdir conftest).
import numpy as np
import parity_utils
import pytest

from deeplab2_kmax import builders
from deeplab2_kmax import config_loader

pytestmark = pytest.mark.skipif(
    parity_utils.skip_reason() is not None,
    reason=str(parity_utils.skip_reason()))

CASES = {
    # key list, config, crop to build at, total params, without aux (anchors)
    "coco_r50": ("deeplab2_kmax_r50_coco_321_checkpoint_keys.tsv",
                 "configs/coco/kmax_r50_os32.textproto", (129, 129),
                 72_436_862, 56_580_120),
    "cityscapes_r50": (
        "deeplab2_kmax_r50_cityscapes_1025x2049_checkpoint_keys.tsv",
        "configs/cityscapes/kmax_r50_os32.textproto", (65, 129),
        56_986_125, 56_401_146),
}


@functools.lru_cache(maxsize=None)
def _model(config_file, crop):
  """Built once per (config, crop): the fixture's is usually a case's."""
  path = parity_utils.REPO_ROOT / config_file
  config = config_loader.load_config(str(path), {}, validate_config=False)
  return builders.build_model(config, crop_size=crop)


def _assert_key_map_is_a_bijection(model, keys):
  """Our variable map and the DeepLab2 key list: same keys, same shapes,
  every model variable reached exactly once."""
  theirs = {k[:-len(parity_utils.SUFFIX)]: shape for k, shape in keys.items()
            if k.endswith(parity_utils.SUFFIX) and
            not k.startswith("save_counter")}
  ours = model.deeplab2_variable_map()
  assert sorted(set(theirs) - set(ours)) == []
  assert sorted(set(ours) - set(theirs)) == []
  mismatched = {k: (tuple(v.shape), theirs[k]) for k, v in ours.items()
                if tuple(v.shape) != tuple(theirs[k])}
  assert not mismatched
  assert len({id(v) for v in ours.values()}) == len(model.variables)


@pytest.mark.parametrize("case", sorted(CASES))
def test_key_map_is_a_bijection_with_equal_shapes(case):
  tsv, config_file, crop, total, without_aux = CASES[case]
  model = _model(config_file, crop)
  _assert_key_map_is_a_bijection(model, parity_utils.read_key_list(tsv))
  parts = model.parameter_groups()
  assert sum(parts.values()) == total
  assert sum(parts.values()) - parts["semantic_branch"] == without_aux


def test_ade20k_r50_key_map_and_parameter_count():
  """ADE20K R50 against DeepLab2's layout derived from the COCO R50 list
  (ade20k_layout: 151 instead of 134 outputs in the 8 class layers)."""
  keys = ade20k_layout.key_list()
  model = ade20k_layout.model()
  _assert_key_map_is_a_bijection(model, keys)
  trainable = sum(int(np.prod(shape)) for key, shape in keys.items()
                  if not key[:-len(parity_utils.SUFFIX)].endswith(
                      ("/moving_mean", "/moving_variance")))
  extra = ade20k_layout.ADE20K_CLASSES - ade20k_layout.COCO_CLASSES
  per_class = 256 + 1  # A 256-channel 1x1 kernel column and a bias.
  parts = model.parameter_groups()
  # COCO R50's anchors + 17 classes in 8 class layers (7 outside the
  # auxiliary semantic branch).
  assert sum(parts.values()) == trainable == 72_436_862 + 8 * extra * per_class
  assert sum(parts.values()) - parts["semantic_branch"] == (
      56_580_120 + 7 * extra * per_class)


def test_parity_fixture_keys_and_statistics():
  """The sidecar named by KMAX_PARITY_FIXTURE: its config's model maps onto
  its key list, and its npz holds one `bn/<key>` array of the listed shape
  for every batch-norm moving statistic, and nothing else under `bn/`."""
  path = parity_utils.sidecar_path()
  sidecar = parity_utils.read_sidecar(path)
  keys = parity_utils.read_key_list(sidecar["checkpoint_keys"], path.parent)
  _assert_key_map_is_a_bijection(_model(sidecar["config_file"], (129, 129)),
                                 keys)
  reference = np.load(path.parent / sidecar["npz"])
  statistics = {k[len("bn/"):]: reference[k].shape for k in reference.files
                if k.startswith("bn/")}
  expected = {k: shape for k, shape in keys.items()
              if k[:-len(parity_utils.SUFFIX)].endswith(
                  ("/moving_mean", "/moving_variance"))}
  assert statistics == expected
