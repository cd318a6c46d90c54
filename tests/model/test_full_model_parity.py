"""Whole-model parity with DeepLab2 (reference/PARITY.md).

The sidecar (KMAX_PARITY_FIXTURE, default
../shared/reference/parity_kmax_r50_coco.json beside the checkout) names the
config, crop, key list, fill-rule settings, evaluator overrides and outputs
to compare; nothing else is assumed, so other fixtures run unchanged.

What is compared, and why this way:
* the encoder's `stage5` and the semantic logits, directly;
* the post-processing: DeepLab2's own logits through our mask-wise merging
  give DeepLab2's panoptic map;
* every layer, through its batch norms: the fixture's moving statistics are
  DeepLab2's batch statistics of each batch norm's input in one
  training-mode pass over the fixture image, so the inputs of our batch norms
  must reproduce them. That pass ran drop path in the kMaX layers (batch 1:
  each residual branch was either dropped or scaled by 1 / keep_prob); the
  pattern is recovered from the statistics themselves and replayed for the
  os32 kMaX layers, which covers every operation of a kMaX layer;
* the final mask and class logits and the panoptic map, directly, when the
  fixture can tell implementations apart at PARITY.md's tolerance. With
  random weights the statistics recorded after a dropped residual do not
  match an inference pass, and the network then amplifies float rounding
  (the k-means argmax flips); when our own logits move beyond the tolerance
  under a 1e-6 relative change of the input image, no float32
  implementation whose operation order differs from DeepLab2's can meet it,
  and the test is skipped with the figures.
"""

import itertools
from typing import Dict
from typing import List
from typing import Tuple

import numpy as np
import parity_utils  # tests/model is on sys.path (rootdir conftest).
import pytest
import tensorflow as tf
from tf_keras.src.layers.normalization import batch_normalization

from deeplab2_kmax import builders
from deeplab2_kmax import common
from deeplab2_kmax.model import kmax_deeplab
from deeplab2_kmax.model.transformer_decoder import kmax as kmax_transformer

SIDECAR = parity_utils.sidecar_path()

pytestmark = pytest.mark.skipif(not SIDECAR.exists(),
                                reason=f"parity sidecar not found: {SIDECAR}")

_LOGITS = parity_utils.LOGIT_KEYS


def _build_fixture_model(fixture: parity_utils.Fixture,
                         use_sync_batch_norm: bool = False):
  """Our model from the fixture's config, holding its DeepLab2 weights."""
  kwargs = builders.model_kwargs(fixture.config)
  kwargs["use_sync_batch_norm"] = use_sync_batch_norm
  model = kmax_deeplab.KMaXDeepLab(**kwargs)
  model(tf.zeros([1, *fixture.crop, 3]), training=False, return_semantic=True)
  weights = fixture.weights()
  for key, variable in model.deeplab2_variable_map().items():
    variable.assign(weights[key + parity_utils.SUFFIX].reshape(variable.shape))
  return model


@pytest.fixture(scope="module")
def fixture():
  tf.config.experimental.enable_tensor_float_32_execution(False)
  return parity_utils.load_fixture(SIDECAR)


@pytest.fixture(scope="module")
def model(fixture):
  return _build_fixture_model(fixture)


@pytest.fixture(scope="module")
def run(fixture, model):
  image = tf.constant(fixture.image, tf.float32)
  outputs = model(image, training=False, return_semantic=True)
  outputs["stage5"] = model.encoder(image / 127.5 - 1.0,
                                    training=False)["stage5"]
  outputs.update(builders.build_post_processor(fixture.config)(
      outputs, fixture.crop))
  return outputs


def test_backbone_and_semantic_logits(fixture, run):
  for name in ("stage5", common.PRED_SEMANTIC_LOGITS_KEY):
    if name not in fixture.sidecar["compare"]:
      continue
    expected = fixture.reference[name]
    actual = run[name].numpy()
    assert actual.shape == expected.shape
    assert np.abs(actual - expected).max() <= 1e-3 * np.abs(expected).max()


def test_post_processing_of_deeplab2_logits_gives_deeplab2_panoptic(fixture):
  if common.PRED_PANOPTIC_KEY not in fixture.sidecar["compare"]:
    pytest.skip("the fixture holds no panoptic map")
  logits = {name: tf.constant(fixture.reference[name]) for name in _LOGITS}
  ours = builders.build_post_processor(fixture.config)(logits, fixture.crop)
  expected = fixture.reference[common.PRED_PANOPTIC_KEY]
  actual = ours[common.PRED_PANOPTIC_KEY].numpy()
  assert len(np.unique(expected)) > 2  # Segments survive: a real check.
  assert np.mean(actual == expected) >= 0.999


def test_mask_and_class_logits_and_panoptic(fixture, model, run):
  reason = parity_utils.chaotic_fixture_reason(model, fixture.image)
  if reason:
    pytest.skip(reason)
  parity_utils.assert_final_outputs_match(fixture, run)


# Layer-by-layer: batch-norm inputs against the recorded statistics.

_Statistics = Dict[str, Tuple[np.ndarray, np.ndarray]]
_KMAX_LAYER = "transformer_decoder/_kmax_decoder/{}/_block1_transformer/"
# Batch norms of a kMaX layer that see only pixel features (no centres).
_PIXEL_ONLY = ("_pixel_conv1_bn_act/", "_pixel_v_conv_bn/",
               "_auxiliary_clustering_predictor/_pixel_space_head/",
               "_auxiliary_clustering_predictor/_pixel_space_feature_batch_norm/")
# Everything before the first stochastic layer (the semantic decoder's
# dropout follows its ASPP; the encoder of this config has no drop path).
_DETERMINISTIC = ("encoder/", "pixel_decoder/", "semantic_decoder/_aspp/",
                  "semantic_decoder/_low_level_conv", "pixel_space_head/",
                  "pixel_space_feature_batch_norm/")


class _Recorder:
  """Records the per-channel mean and std of every batch norm's input and
  replays a drop-path pattern (one multiplier per kMaX residual, in call
  order; inference behaviour once the pattern is used up)."""

  def __init__(self, model, monkeypatch):
    self._keys = {id(v): k for k, v in model.deeplab2_variable_map().items()
                  if k.endswith("/moving_mean")}
    self.statistics: _Statistics = {}
    self.pattern: List[float] = []
    original = batch_normalization.BatchNormalizationBase.call

    def recording_call(layer, inputs, *args, **kwargs):
      key = self._keys.get(id(layer.moving_mean))
      if key:
        rank = len(inputs.shape)
        kept = {axis % rank for axis in layer.axis}
        axes = [a for a in range(rank) if a not in kept]
        x = tf.cast(inputs, tf.float64)
        self.statistics[key] = (
            tf.reduce_mean(x, axes).numpy().reshape(-1),
            tf.math.reduce_std(x, axes).numpy().reshape(-1))
      return original(layer, inputs, *args, **kwargs)

    def replayed_drop_path(unused_layer, x, training):
      del training
      return x * self.pattern.pop(0) if self.pattern else x

    monkeypatch.setattr(batch_normalization.BatchNormalizationBase, "call",
                        recording_call)
    monkeypatch.setattr(kmax_transformer.KMaXLayer, "_drop_path",
                        replayed_drop_path)

  def record(self, call, pattern) -> _Statistics:
    self.statistics, self.pattern = {}, list(pattern)
    call()
    return self.statistics


def _error(statistics: _Statistics, key: str, reference) -> float:
  """Mean and std differences over the recorded std's scale (inf if no
  statistics: a 1x1 pooled input)."""
  full = key + parity_utils.SUFFIX
  mean = reference["bn/" + full].reshape(-1)
  std = np.sqrt(reference["bn/" + full.replace("/moving_mean/",
                                               "/moving_variance/")]
                ).reshape(-1)
  if std.max() == 0:
    return float("inf")
  ours_mean, ours_std = statistics[key]
  return max(np.abs(ours_mean - mean).max(),
             np.abs(ours_std - std).max()) / std.max()


def _recover_drop_path_pattern(model, recorder, fixture, num_layers,
                               keep_prob) -> List[float]:
  """The calibration pass's drop-path multipliers of the first kMaX layers.

  The k-means update and self-attention residuals of layer i meet in the
  input of its FFN; its FFN residual reaches the next layer's centre
  projection (or the final embedding projections).
  """
  image = tf.constant(fixture.image, tf.float32) / 127.5 - 1.0
  decoded = model.pixel_decoder(model.encoder(image, training=False),
                                training=False)
  decode = lambda: model.transformer_decoder(decoded, training=False)  # pylint: disable=g-long-lambda
  options = (0.0, 1.0 / keep_prob)
  pattern: List[float] = []
  for layer in range(num_layers):
    prefix = _KMAX_LAYER.format(layer)
    following = (_KMAX_LAYER.format(layer + 1) + "_memory_conv1_bn_act"
                 if layer + 1 < model.num_kmax_layers else
                 "transformer_decoder/_class_embedding_projection")
    for count, key in ((2, prefix + "_memory_ffn_conv1_bn_act"),
                       (1, following)):
      key += "/_batch_norm/moving_mean"
      errors = sorted(
          (_error(recorder.record(decode, pattern + list(choice)), key,
                  fixture.reference), choice)
          for choice in itertools.product(options, repeat=count))
      (best, choice), (second, _) = errors[0], errors[1]
      assert best < 1e-2 and second > 10 * best, (
          f"no drop-path choice reproduces {key}: {errors}")
      pattern += list(choice)
  return pattern


def test_every_batch_norm_input_matches_deeplab2_statistics(fixture, model,
                                                            monkeypatch):
  """A structural difference (a missing or extra op, a wrong order or key
  mapping) shows as a jump far above float rounding at the first batch norm
  it reaches. Rounding is measured per layer as the difference between two
  of our own builds that differ only in the batch-norm kernel."""
  kwargs = builders.model_kwargs(fixture.config)
  replayed = kwargs["transformer_num_blocks"][0]
  recorder = _Recorder(model, monkeypatch)
  pattern = _recover_drop_path_pattern(
      model, recorder, fixture, replayed,
      kwargs["transformer_drop_path_keep_prob"])
  image = tf.constant(fixture.image, tf.float32)
  ours = recorder.record(
      lambda: model(image, training=False, return_semantic=True), pattern)
  other_kernel = _build_fixture_model(fixture, use_sync_batch_norm=True)
  other = _Recorder(other_kernel, monkeypatch).record(
      lambda: other_kernel(image, training=False, return_semantic=True),
      pattern)

  def compared(key):
    if key.startswith(_DETERMINISTIC):
      return True
    for layer in range(model.num_kmax_layers):
      prefix = _KMAX_LAYER.format(layer)
      if key.startswith(prefix):
        return layer < replayed or key[len(prefix):].startswith(_PIXEL_ONLY)
    return False

  failures, count = [], 0
  for key in filter(compared, ours):
    error = _error(ours, key, fixture.reference)
    if error == float("inf"):
      continue
    count += 1
    rounding = _error(other, key, {
        "bn/" + key + parity_utils.SUFFIX: ours[key][0],
        "bn/" + key.replace("/moving_mean", "/moving_variance") +
        parity_utils.SUFFIX: ours[key][1]**2})
    if error > 10 * rounding + 1e-4:
      failures.append(f"{key}: {error:.2e} (rounding {rounding:.2e})")
  assert count >= 150, count
  assert not failures, "\n".join(failures)
