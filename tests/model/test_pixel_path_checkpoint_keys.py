"""DeepLab2 checkpoint keys of the pixel path (reference key lists, SPEC §9).

Components are built symbolically (tf_keras.Input), so full crops cost no
compute. For each, the variable map must be a bijection onto the reference
keys (prefix stripped) with equal shapes, covering every variable.
"""

import numpy as np
import parity_utils
import pytest
import tf_keras

from deeplab2_kmax.model import pixel_encoders
from deeplab2_kmax.model.pixel_decoder import kmax

pytestmark = pytest.mark.skipif(
    parity_utils.skip_reason() is not None,
    reason=str(parity_utils.skip_reason()))

_COCO_321 = "deeplab2_kmax_r50_coco_321_checkpoint_keys.tsv"
_COCO_1281 = "deeplab2_kmax_r50_coco_1281_checkpoint_keys.tsv"
_CITYSCAPES = "deeplab2_kmax_r50_cityscapes_1025x2049_checkpoint_keys.tsv"


def _symbolic_endpoints(encoder, height, width):
  return encoder(tf_keras.Input([height, width, 3], batch_size=1))


def _build_r50_path(height, width, output_stride):
  encoder = pixel_encoders.build_pixel_encoder(
      "resnet50", use_sync_batch_norm=False)
  endpoints = _symbolic_endpoints(encoder, height, width)
  decoder = kmax.KMaXPixelDecoder(
      high_resolution_output_stride=output_stride, use_sync_batch_norm=False)
  decoder({k: tf_keras.Input(endpoints[k].shape[1:], batch_size=1)
           for k in decoder.required_endpoints})
  return encoder, decoder


def _assert_bijection(component, reference_keys):
  variable_map = component.deeplab2_variable_map()
  assert sorted(variable_map) == sorted(reference_keys)
  wrong = {k: (tuple(v.shape), reference_keys[k])
           for k, v in variable_map.items()
           if tuple(v.shape) != reference_keys[k]}
  assert not wrong
  mapped = [id(v) for v in variable_map.values()]
  assert len(set(mapped)) == len(mapped)
  assert set(mapped) == {id(v) for v in component.variables}


@pytest.mark.parametrize("tsv,size", [(_COCO_321, 321), (_COCO_1281, 1281)])
def test_coco_r50_encoder_and_decoder_keys(tsv, size):
  keys = parity_utils.read_key_list(tsv)
  encoder, decoder = _build_r50_path(size, size, output_stride=4)
  _assert_bijection(encoder, parity_utils.relative_keys(keys, "encoder"))
  _assert_bijection(decoder, parity_utils.relative_keys(keys, "pixel_decoder"))


def test_cityscapes_r50_encoder_and_decoder_keys():
  keys = parity_utils.read_key_list(_CITYSCAPES)
  encoder, decoder = _build_r50_path(1025, 2049, output_stride=2)
  _assert_bijection(encoder, parity_utils.relative_keys(keys, "encoder"))
  _assert_bijection(decoder, parity_utils.relative_keys(keys, "pixel_decoder"))


def _trainable(variables):
  return sum(int(np.prod(v.shape)) for v in variables)


def _rest_of_coco_r50_model():
  """Trainable parameters of the COCO R50 model outside encoder/decoder.

  From the key list: all but moving statistics, minus the auxiliary semantic
  branch (`semantic_*`), which the anchors exclude.
  """
  keys = parity_utils.read_key_list(_COCO_321)
  return sum(int(np.prod(shape)) for key, shape in keys.items()
             if "moving_" not in key and not key.startswith(
                 ("encoder/", "pixel_decoder/", "semantic_")))


# DeepLab2 trainable parameters without the auxiliary semantic branch
# (reference/deeplab2_anchors.md, COCO configs).
_ANCHORS = {
    "resnet50": 56_580_120,
    "axial_resnet50": 74_415_512,
    "convnext_tiny": 60_937_080,
    "convnext_small": 82_571_640,
    "convnext_base": 121_513_304,
    "convnext_large": 231_836_952,
}


@pytest.mark.parametrize("name", [
    "resnet50", "axial_resnet50", "convnext_tiny",
    pytest.param("convnext_small", marks=pytest.mark.slow),
    pytest.param("convnext_base", marks=pytest.mark.slow),
    pytest.param("convnext_large", marks=pytest.mark.slow),
])
def test_parameter_count_matches_deeplab2_anchor(name):
  encoder = pixel_encoders.build_pixel_encoder(name, use_sync_batch_norm=False)
  endpoints = _symbolic_endpoints(encoder, 321, 321)
  decoder = kmax.KMaXPixelDecoder(use_sync_batch_norm=False)
  decoder({k: tf_keras.Input(endpoints[k].shape[1:], batch_size=1)
           for k in decoder.required_endpoints})
  total = (_trainable(encoder.trainable_variables) +
           _trainable(decoder.trainable_variables) + _rest_of_coco_r50_model())
  assert total == _ANCHORS[name]
