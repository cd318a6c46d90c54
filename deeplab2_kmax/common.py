"""The one set of keys shared by the data pipeline, model, losses and export.

Model outputs and ground-truth targets travel as plain dicts keyed by these
names (the DeepLab2 convention), so every stage reads the same documented
structure.
"""

# Model outputs (per image; B = batch, N = cluster centres / mask slots).
# [B, H/4, W/4, D] L2-normalised pixel embedding.
PRED_PIXEL_SPACE_NORMALIZED_FEATURE_KEY = "pixel_space_normalized_feature"
# [B, H/4, W/4, N] mask logits (before the softmax over N).
PRED_PIXEL_SPACE_MASK_LOGITS_KEY = "pixel_space_mask_logits"
# [B, N, num_classes + 1] class logits; the last class is void / no-object.
PRED_TRANSFORMER_CLASS_LOGITS_KEY = "transformer_class_logits"
# [B, H/4, W/4, num_classes] auxiliary semantic logits (training branch).
PRED_SEMANTIC_LOGITS_KEY = "semantic_logits"
# List of dicts, one per kMaX layer, each with the three keys above but the
# semantic logits (deep supervision).
PRED_AUXILIARY_OUTPUTS = "auxiliary_outputs"

# Post-processed predictions. Panoptic, semantic and the two score maps mean
# what DeepLab2's keys of the same names mean for kMaX-DeepLab.
# [B, H, W] int32 semantic x label_divisor + instance (void: void x divisor).
PRED_PANOPTIC_KEY = "panoptic_pred"
# [B, H, W] int32 class of each pixel's argmax slot: no thresholds, no area
# limits, no void (DeepLab2's threshold-free pass; the map mIoU scores).
PRED_SEMANTIC_KEY = "semantic_pred"
# [B, H, W] int32 instance id of the panoptic map (0 on stuff and void);
# DeepLab2's is its intermediate pasted-slot map instead.
PRED_INSTANCE_KEY = "instance_pred"
# [B, H, W] float32 max over slots of the mask probability (0 everywhere
# when no slot passes a class threshold).
PRED_INSTANCE_SCORES_KEY = "instance_scores"
# [B, H, W] float32 class confidence of the slot pasted at the pixel, before
# the area limits (0 where none is). A segment's AP score is the product of
# the two score maps' means over it.
PRED_SEMANTIC_SCORES_KEY = "semantic_scores"

# Ground truth produced by the input pipeline.
IMAGE = "image"
IMAGE_NAME = "image_name"
GT_SIZE_RAW = "gt_size_raw"  # [2] original (height, width) (eval only).
RESIZED_SIZE = "resized_size"  # [2] (height, width) before padding (eval).
GT_PANOPTIC_RAW = "panoptic_raw"  # Unaugmented panoptic map (eval only).
GT_SEMANTIC_KEY = "semantic_gt"  # [B, H, W] int32 semantic class.
GT_PANOPTIC_KEY = "panoptic_gt"  # [B, H, W] int32 class * divisor + instance.
GT_THING_ID_MASK_KEY = "thing_id_mask_gt"  # [B, H, W] int32, -1 if not thing.
GT_THING_ID_CLASS_KEY = "thing_id_class_gt"  # [B, max_things] class or -1.
SEMANTIC_LOSS_WEIGHT_KEY = "semantic_loss_weight"  # [B, H, W] float32.

# TFRecord feature names (the DeepLab2 format).
KEY_ENCODED_IMAGE = "image/encoded"
KEY_IMAGE_FILENAME = "image/filename"
KEY_IMAGE_FORMAT = "image/format"
KEY_IMAGE_HEIGHT = "image/height"
KEY_IMAGE_WIDTH = "image/width"
KEY_IMAGE_CHANNELS = "image/channels"
KEY_ENCODED_LABEL = "image/segmentation/class/encoded"
KEY_LABEL_FORMAT = "image/segmentation/class/format"

# Loss-term names written to summaries.
TOTAL_LOSS = "total_loss"
