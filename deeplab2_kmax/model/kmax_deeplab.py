"""The kMaX-DeepLab meta-architecture (paper Fig. 2; SPEC §2).

pixel encoder -> enhanced pixel decoder -> kMaX transformer decoder ->
MaX-DeepLab head (+ the auxiliary semantic branch in training). Inputs are
RGB in [0, 255]; the model normalises with x / 127.5 - 1.
"""

from typing import Dict
from typing import Optional
from typing import Sequence

import tensorflow as tf
import tf_keras

from deeplab2_kmax import common
from deeplab2_kmax.model.heads import max_deeplab
from deeplab2_kmax.model.heads import semantic
from deeplab2_kmax.model.layers import checkpoint_keys
from deeplab2_kmax.model.layers import convolutions
from deeplab2_kmax.model.layers import recompute as recompute_lib
from deeplab2_kmax.model.layers import resized_fuse
from deeplab2_kmax.model.pixel_decoder import kmax as kmax_pixel_decoder
from deeplab2_kmax.model.pixel_encoders import builder as encoder_builder
from deeplab2_kmax.model.transformer_decoder import kmax as kmax_transformer

# Keys of the per-layer outputs that are resized to the final resolution.
_RESIZED_AUXILIARY_KEYS = (common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY,
                           common.PRED_PIXEL_SPACE_NORMALIZED_FEATURE_KEY)


class KMaXDeepLab(tf_keras.Model):
  """kMaX-DeepLab built from plain arguments (see `builder` for presets)."""

  def __init__(self,
               num_classes: int,
               backbone: str = "resnet50",
               backbone_drop_path_keep_prob: float = 1.0,
               backbone_drop_path_schedule: str = "linear",
               backbone_width_multiplier: float = 1.0,
               backbone_blocks_per_stage: Optional[Sequence[int]] = None,
               high_resolution_output_stride: int = 4,
               pixel_decoder_num_blocks: Optional[Sequence[int]] = None,
               pixel_decoder_width_multiplier: float = 1.0,
               num_mask_slots: int = 128,
               transformer_num_blocks: Sequence[int] = (2, 2, 2),
               transformer_channels: int = 256,
               transformer_ffn_channels: int = 2048,
               transformer_num_heads: int = 8,
               cross_attention: str = "kmeans",
               transformer_drop_path_keep_prob: float = 0.8,
               drop_query_keep_number: int = 0,
               pixel_head_channels: int = 256,
               pixel_output_channels: int = 128,
               mask_logits_gamma_init: float = 0.1,
               use_semantic_branch: bool = True,
               use_semantic_decoder: bool = True,
               semantic_head_channels: int = 256,
               semantic_feature_key: str = "res5",
               semantic_low_level_keys: Sequence[str] = ("res3", "res2"),
               semantic_low_level_channels: Sequence[int] = (64, 32),
               aspp_channels: int = 256,
               semantic_decoder_channels: int = 256,
               atrous_rates: Sequence[int] = (6, 12, 18),
               semantic_num_classes: Optional[int] = None,
               use_sync_batch_norm: bool = True,
               batch_norm_momentum: float = 0.99,
               batch_norm_epsilon: float = 1e-3,
               recompute: str = "none",
               name: str = "kmax_deeplab"):
    """Builds the model; every argument is a plain value (no protos).

    Args:
      num_classes: Non-void classes (the class head adds one void logit).
      backbone: Pixel encoder name (`encoder_builder.ENCODER_NAMES`).
      backbone_drop_path_keep_prob: Backbone stochastic depth.
      backbone_drop_path_schedule: "linear" (DeepLab2's) or "constant".
      backbone_width_multiplier: Backbone channel scale (tiny variants).
      backbone_blocks_per_stage: Backbone depths override.
      high_resolution_output_stride: 4 (COCO) or 2 (Cityscapes).
      pixel_decoder_num_blocks: Decoder blocks per stage override.
      pixel_decoder_width_multiplier: Decoder channel scale.
      num_mask_slots: N cluster centres.
      transformer_num_blocks: kMaX layers at os32, os16, os8.
      transformer_channels: Centre width.
      transformer_ffn_channels: FFN hidden width.
      transformer_num_heads: Self-attention heads.
      cross_attention: "kmeans" or the "softmax" baseline.
      transformer_drop_path_keep_prob: kMaX layers' stochastic depth.
      drop_query_keep_number: Drop query (0 disables).
      pixel_head_channels: Pixel-space head width.
      pixel_output_channels: Pixel / mask embedding size D.
      mask_logits_gamma_init: Initial gamma of every mask-logit batch norm
        (final and auxiliary heads).
      use_semantic_branch: Build the auxiliary semantic branch (training).
      use_semantic_decoder: Put a Panoptic-DeepLab decoder before the semantic
        head (COCO) or not (Cityscapes: head on the os32 feature).
      semantic_head_channels: Semantic head width.
      semantic_feature_key: Encoder endpoint feeding the semantic branch.
      semantic_low_level_keys: Low-level endpoints of the semantic decoder.
      semantic_low_level_channels: Their projection widths.
      aspp_channels: ASPP width.
      semantic_decoder_channels: Semantic decoder width.
      atrous_rates: ASPP rates.
      semantic_num_classes: Semantic-head outputs (the dataset's classes,
        e.g. 134 on COCO whose void 0 is a channel, 19 on Cityscapes);
        defaults to num_classes.
      use_sync_batch_norm: Synchronised batch norm under a strategy.
      batch_norm_momentum: Moving-average momentum of every batch norm.
      batch_norm_epsilon: Variance epsilon of every batch norm.
      recompute: "none", or "blocks": training recomputes the activations of
        every residual block of the pixel encoder and decoder and of every
        kMaX layer in the backward pass, for less activation memory
        (`layers/recompute.py`); inference is unchanged.
      name: Model name.
    """
    super().__init__(name=name)
    if recompute not in recompute_lib.MODES:
      raise ValueError(f"{name}: recompute must be one of "
                       f"{recompute_lib.MODES}, got {recompute!r}.")
    recompute_blocks = recompute == "blocks"
    # Every batch norm of the model, lazily built ones included, comes from
    # this one factory.
    bn_layer = convolutions.batch_norm_class(
        use_sync_batch_norm, momentum=batch_norm_momentum,
        epsilon=batch_norm_epsilon)
    self._num_classes = num_classes
    self.encoder = encoder_builder.build_pixel_encoder(
        backbone, drop_path_keep_prob=backbone_drop_path_keep_prob,
        drop_path_schedule=backbone_drop_path_schedule,
        width_multiplier=backbone_width_multiplier,
        blocks_per_stage=backbone_blocks_per_stage, bn_layer=bn_layer,
        recompute=recompute_blocks)
    self.pixel_decoder = kmax_pixel_decoder.KMaXPixelDecoder(
        high_resolution_output_stride=high_resolution_output_stride,
        num_blocks=pixel_decoder_num_blocks,
        width_multiplier=pixel_decoder_width_multiplier, bn_layer=bn_layer,
        recompute=recompute_blocks)
    self.transformer_decoder = kmax_transformer.KMaXTransformerDecoder(
        num_classes, num_mask_slots, transformer_num_blocks,
        transformer_channels, transformer_ffn_channels, transformer_num_heads,
        cross_attention, transformer_drop_path_keep_prob,
        drop_query_keep_number, pixel_head_channels, pixel_output_channels,
        bn_layer=bn_layer, mask_logits_gamma_init=mask_logits_gamma_init,
        recompute=recompute_blocks)
    self.head = max_deeplab.MaXDeepLabHead(
        num_classes, pixel_head_channels, pixel_output_channels,
        bn_layer=bn_layer, mask_logits_gamma_init=mask_logits_gamma_init,
        name="max_deeplab_head")
    self.semantic_branch = None
    if use_semantic_branch:
      decoder = None
      if use_semantic_decoder:
        decoder = semantic.SemanticDecoder(
            semantic_feature_key, semantic_low_level_keys,
            semantic_low_level_channels, aspp_channels,
            semantic_decoder_channels, atrous_rates, bn_layer=bn_layer)
      self.semantic_branch = semantic.SemanticBranch(
          semantic_num_classes or num_classes, semantic_head_channels, decoder,
          feature_key=semantic_feature_key, bn_layer=bn_layer)

  @property
  def num_classes(self) -> int:
    return self._num_classes

  @property
  def num_mask_slots(self) -> int:
    return self.transformer_decoder._num_mask_slots  # pylint: disable=protected-access

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
      resolution) in training or when asked.
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
