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

# Post-processed predictions.
PRED_PANOPTIC_KEY = "panoptic_pred"
PRED_SEMANTIC_KEY = "semantic_pred"
PRED_INSTANCE_KEY = "instance_pred"
# [B, H, W] class confidence of the slot pasted at the pixel (0 if none).
PRED_INSTANCE_SCORES_KEY = "instance_scores"
# [B, H, W] max over slots of the mask probability.
PRED_SEMANTIC_PROBS_KEY = "semantic_probs"
# Every pixel takes the class of its argmax slot (no thresholds, no void):
# DeepLab2's semantic prediction for mIoU.
PRED_DENSE_SEMANTIC_KEY = "dense_semantic_pred"

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
