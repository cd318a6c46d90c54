"""Every loss term against DeepLab2's numbers (reference/LOSS_PARITY.md).

The fixture path comes from KMAX_LOSS_PARITY_FIXTURE (default
../shared/reference/loss_parity.npz beside the checkout); every setting is
read from the JSON next to it, so other fixtures of the same format run
unchanged.
"""

import json
import os
import pathlib

import numpy as np
import pytest
import tensorflow as tf

from deeplab2_kmax import common
from deeplab2_kmax.losses import max_deeplab_loss

_DEFAULT = (pathlib.Path(__file__).resolve().parents[2].parent / "shared" /
            "reference" / "loss_parity.npz")
FIXTURE = pathlib.Path(os.environ.get("KMAX_LOSS_PARITY_FIXTURE", _DEFAULT))
_PRED_KEYS = (common.PRED_PIXEL_SPACE_NORMALIZED_FEATURE_KEY,
              common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY,
              common.PRED_TRANSFORMER_CLASS_LOGITS_KEY)


def _cases():
  if not FIXTURE.exists():
    return []
  return sorted(json.loads(FIXTURE.with_suffix(".json").read_text()).items())


@pytest.mark.skipif(not FIXTURE.exists(),
                    reason=f"loss parity fixture not found at {FIXTURE}")
@pytest.mark.parametrize("implementation", ["scipy", "tensorflow"])
@pytest.mark.parametrize("case", [name for name, _ in _cases()] or ["none"])
def test_every_term_matches_deeplab2(case, implementation):
  settings = dict(_cases())[case]
  data = np.load(FIXTURE)
  get = lambda key: tf.constant(data[f"{case}/{key}"])  # pylint: disable=g-long-lambda
  semantic = get("semantic_gt")
  y_true = {
      common.GT_SEMANTIC_KEY: semantic,
      common.GT_THING_ID_MASK_KEY: get("thing_id_mask_gt"),
      common.GT_THING_ID_CLASS_KEY: get("thing_id_class_gt"),
      common.SEMANTIC_LOSS_WEIGHT_KEY: tf.ones(semantic.shape, tf.float32),
  }
  y_pred = {key: get(f"pred/{key}") for key in _PRED_KEYS}
  y_pred[common.PRED_SEMANTIC_LOGITS_KEY] = get("pred/semantic_logits")
  y_pred[common.PRED_AUXILIARY_OUTPUTS] = [
      {key: get(f"aux{i}/{key}") for key in _PRED_KEYS}
      for i in range(settings["auxiliary_output_number"])]
  weights = settings["loss_weights"]
  spec = max_deeplab_loss.LossSpec(
      pq_style_loss_weight=weights["pq_style"],
      mask_id_cross_entropy_loss_weight=weights["mask_id_cross_entropy"],
      instance_discrimination_loss_weight=weights["instance_discrimination"],
      semantic_loss_weight=weights["semantic"],
      instance_discrimination_sample_k=settings[
          "instance_discrimination_sample_k"],
      semantic_sample_k=settings["semantic_sample_k"],
      matching_implementation=implementation)
  loss = max_deeplab_loss.MaXDeepLabLoss(
      num_classes=settings["num_classes"],
      ignore_label=settings["ignore_label"],
      thing_class_ids=settings["thing_class_ids"], spec=spec)
  assert loss.num_thing_stuff_classes + 1 == settings[
      "transformer_class_channels"]
  outputs = loss(y_true, y_pred)
  for name, expected in settings["expected"].items():
    np.testing.assert_allclose(outputs[name].numpy(), expected, rtol=1e-4,
                               atol=1e-6, err_msg=name)
