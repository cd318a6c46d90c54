"""Whole-model DeepLab2 key maps and parameter counts (SPEC §2.5, §9).

Variable shapes do not depend on the crop (the relative positional tables
keep 509 rows), so the models are built at small crops here; the key lists
were recorded at the official crops.
"""

import parity_utils  # tests/model is on sys.path (rootdir conftest).
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


def _model(config_file, crop):
  path = parity_utils.REPO_ROOT / config_file
  config = config_loader.load_config(str(path), {}, validate_config=False)
  return builders.build_model(config, crop_size=crop)


@pytest.mark.parametrize("case", sorted(CASES))
def test_key_map_is_a_bijection_with_equal_shapes(case):
  tsv, config_file, crop, total, without_aux = CASES[case]
  model = _model(config_file, crop)
  keys = parity_utils.read_key_list(tsv)
  theirs = {k[:-len(parity_utils.SUFFIX)]: shape for k, shape in keys.items()
            if k.endswith(parity_utils.SUFFIX) and
            not k.startswith("save_counter")}
  ours = model.deeplab2_variable_map()
  assert sorted(set(theirs) - set(ours)) == []
  assert sorted(set(ours) - set(theirs)) == []
  mismatched = {k: (tuple(v.shape), theirs[k]) for k, v in ours.items()
                if tuple(v.shape) != tuple(theirs[k])}
  assert not mismatched
  # Every model variable is reachable from a DeepLab2 key exactly once.
  assert len({id(v) for v in ours.values()}) == len(model.variables)

  parts = model.parameter_groups()
  assert sum(parts.values()) == total
  assert sum(parts.values()) - parts["semantic_branch"] == without_aux
