"""DeepLab2's checkpoint layout of kMaX R50 on ADE20K, and our model for it.

../shared/reference records no ADE20K key list. DeepLab2 builds its ADE20K
R50 model with the COCO R50 layout: the same hard-coded pixel-decoder output
stride 4, 128 mask slots and auxiliary semantic decoder, and void inside the
class count (class 0), so the transformer class heads predict as many
classes as the semantic head. Only the class-dependent layers differ: the
semantic head's last convolution and the 7 transformer class heads (the
final one and the 6 auxiliary ones) have 151 outputs instead of 134. The
expected key list is therefore the recorded COCO R50 list with those 16
shapes changed (`key_list`); everything else is unchanged.
"""

import functools
import re
from typing import Dict
from typing import Tuple

import parity_utils
import tensorflow as tf

from deeplab2_kmax import builders
from deeplab2_kmax import config_loader
from deeplab2_kmax.model import kmax_deeplab

CONFIG = "configs/ade20k/kmax_r50_os32.textproto"
COCO_R50_KEYS = "deeplab2_kmax_r50_coco_321_checkpoint_keys.tsv"
COCO_CLASSES, ADE20K_CLASSES = 134, 151
# The semantic head's last convolution and every transformer class head.
_CLASS_LAYER = re.compile(r"^semantic_last_layer/|transformer_class_head/_conv/")
NUM_CLASS_LAYERS = 8


def key_list() -> Dict[str, Tuple[int, ...]]:
  """Full checkpoint key -> shape of DeepLab2's kMaX R50 ADE20K model."""
  keys = {}
  changed = 0
  for key, shape in parity_utils.read_key_list(COCO_R50_KEYS).items():
    is_class_layer = bool(_CLASS_LAYER.search(key))
    # Nothing else in the COCO list has the class count as its last size.
    assert is_class_layer == (shape[-1:] == (COCO_CLASSES,)), (key, shape)
    if is_class_layer:
      shape = shape[:-1] + (ADE20K_CLASSES,)
      changed += 1
    keys[key] = shape
  assert changed == 2 * NUM_CLASS_LAYERS  # A kernel and a bias each.
  return keys


@functools.lru_cache(maxsize=None)
def model() -> kmax_deeplab.KMaXDeepLab:
  """Our model at the ADE20K R50 config, built once per test session.

  Variable shapes do not depend on the crop; one eager call at 33x33
  creates them (several times faster than tracing the official crop).
  """
  config = config_loader.load_config(str(parity_utils.REPO_ROOT / CONFIG), {},
                                     validate_config=False)
  built = kmax_deeplab.KMaXDeepLab(**builders.model_kwargs(config))
  built(tf.zeros([1, 33, 33, 3]), training=False, return_semantic=True)
  return built
