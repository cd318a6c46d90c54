"""The kMaX-DeepLab meta-architecture (paper Fig. 2).

pixel encoder -> enhanced pixel decoder -> kMaX transformer decoder ->
MaX-DeepLab head (+ the auxiliary semantic branch in training). Inputs are
RGB in [0, 255]; the model normalises with x / 127.5 - 1.
"""

from typing import Dict
from typing import Optional

import tensorflow as tf
import tf_keras

from deeplab2_kmax import common
from deeplab2_kmax.model import kmax_deeplab_spec as model_spec
from deeplab2_kmax.model.heads import max_deeplab
from deeplab2_kmax.model.heads import semantic
from deeplab2_kmax.model.layers import checkpoint_keys
from deeplab2_kmax.model.layers import convolutions
from deeplab2_kmax.model.layers import resized_fuse
from deeplab2_kmax.model.pixel_decoder import kmax as kmax_pixel_decoder
from deeplab2_kmax.model.pixel_encoders import builder as encoder_builder
from deeplab2_kmax.model.transformer_decoder import kmax as kmax_transformer

# Keys of the per-layer outputs that are resized (bilinearly) to the final
# resolution.
_RESIZED_AUXILIARY_KEYS = (common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY,
                           common.PRED_PIXEL_SPACE_NORMALIZED_FEATURE_KEY)
# Each kMaX layer's cluster assignment, int32 [B, h, w] at the final
# resolution (nearest neighbour of the layer's own, paper Eq. 5 / Fig. 4).
ASSIGNMENT_KEY = kmax_transformer.ASSIGNMENT_KEY


class KMaXDeepLab(tf_keras.Model):
  """kMaX-DeepLab built from its spec (`kmax_deeplab_spec`), no protos."""

  def __init__(self, spec: Optional[model_spec.KMaXDeepLabSpec] = None, *,
               name: str = "kmax_deeplab", **flat):
    """Builds the model.

    Args:
      spec: The model's hyperparameters.
      name: Model name.
      **flat: Without `spec`: the spec as flat keywords
        (`kmax_deeplab_spec.from_flat`, e.g. num_classes=5, num_mask_slots=8).
    """
    super().__init__(name=name)
    if spec is None:
      spec = model_spec.from_flat(**flat)
    elif flat:
      raise TypeError(f"{name}: give a spec or flat keywords, not both.")
    self.spec = spec
    recompute_blocks = spec.recompute == "blocks"
    # Every batch norm of the model, lazily built ones included, comes from
    # this one factory.
    bn_layer = convolutions.batch_norm_class(spec.batch_norm)
    self.encoder = encoder_builder.build_pixel_encoder(
        spec.encoder, bn_layer=bn_layer, recompute=recompute_blocks)
    self.pixel_decoder = kmax_pixel_decoder.KMaXPixelDecoder(
        spec.pixel_decoder, bn_layer=bn_layer, recompute=recompute_blocks)
    self.transformer_decoder = kmax_transformer.KMaXTransformerDecoder(
        spec.num_classes, spec.transformer_decoder, spec.head,
        bn_layer=bn_layer, recompute=recompute_blocks)
    self.head = max_deeplab.MaXDeepLabHead(
        spec.num_classes, spec.head, bn_layer=bn_layer,
        name="max_deeplab_head")
    self.semantic_branch = None
    if spec.semantic is not None:
      self.semantic_branch = semantic.SemanticBranch(
          spec.semantic, spec.num_classes, bn_layer=bn_layer)

  def get_config(self):
    """The flat keywords of the spec (JSON-serialisable; `from_config`
    rebuilds the model from them)."""
    return dict(model_spec.to_flat(self.spec), name=self.name)

  @property
  def num_classes(self) -> int:
    return self.spec.num_classes

  @property
  def num_mask_slots(self) -> int:
    return self.spec.transformer_decoder.num_mask_slots

  @property
  def num_kmax_layers(self) -> int:
    return self.transformer_decoder.num_layers

  def call(self, images, training=False, return_semantic: bool = False,
           return_auxiliary: bool = False) -> Dict[str, tf.Tensor]:
    """Runs the model.

    Args:
      images: [B, H, W, 3] RGB in [0, 255].
      training: Training mode (batch-norm statistics, drop path, drop query,
        auxiliary outputs and semantic logits).
      return_semantic: At inference, also return the semantic logits.
      return_auxiliary: At inference, also return the per-layer auxiliary
        outputs (e.g. for the cluster-assignment visualisation).

    Returns:
      Dict with the normalised pixel feature [B, h, w, D], mask logits
      [B, h, w, N], class logits [B, N, C+1]; semantic logits [B, h', w', C]
      and `auxiliary_outputs` (one dict per kMaX layer, resized to the final
      resolution, with the layer's cluster assignment under ASSIGNMENT_KEY)
      in training or when asked.
    """
    images = tf.cast(images, tf.float32) / 127.5 - 1.0
    endpoints = self.encoder(images, training=training)
    decoded = self.pixel_decoder(endpoints, training=training)
    transformer = self.transformer_decoder(decoded, training=training)
    outputs = self.head(decoded["decoder_output"],
                        transformer["class_embedding"],
                        transformer["mask_embedding"], training=training)
    if self.semantic_branch is not None and (training or return_semantic):
      outputs[common.PRED_SEMANTIC_LOGITS_KEY] = self.semantic_branch(
          endpoints, training=training)
    if training or return_auxiliary:
      size = outputs[common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY].shape[1:3]
      auxiliary = []
      for aux in transformer[common.PRED_AUXILIARY_OUTPUTS]:
        aux = dict(aux)
        for key in _RESIZED_AUXILIARY_KEYS:
          aux[key] = resized_fuse.resize_bilinear_align_corners(
              aux[key], size.as_list())
        aux[ASSIGNMENT_KEY] = resized_fuse.resize_nearest_align_corners(
            aux[ASSIGNMENT_KEY], size.as_list())
        auxiliary.append(aux)
      outputs[common.PRED_AUXILIARY_OUTPUTS] = auxiliary
    return outputs

  def deeplab2_variable_map(self) -> checkpoint_keys.VariableMap:
    """DeepLab2 checkpoint key (no `/.ATTRIBUTES/...`) -> our variable."""
    head = self.head.deeplab2_variable_map()
    maps = [
        checkpoint_keys.prefixed("encoder",
                                 self.encoder.deeplab2_variable_map()),
        checkpoint_keys.prefixed("pixel_decoder",
                                 self.pixel_decoder.deeplab2_variable_map()),
        checkpoint_keys.prefixed(
            "transformer_decoder",
            self.transformer_decoder.deeplab2_variable_map()),
        head]
    if self.semantic_branch is not None:
      maps.append(self.semantic_branch.deeplab2_variable_map())
    return checkpoint_keys.merge(*maps)

  def parameter_groups(self) -> Dict[str, int]:
    """Trainable parameter counts per part (for summaries)."""
    count = lambda layer: sum(  # pylint: disable=g-long-lambda
        int(tf.size(v)) for v in layer.trainable_variables) if layer else 0
    return {"encoder": count(self.encoder),
            "pixel_decoder": count(self.pixel_decoder),
            "transformer_decoder": count(self.transformer_decoder),
            "head": count(self.head),
            "semantic_branch": count(self.semantic_branch)}
