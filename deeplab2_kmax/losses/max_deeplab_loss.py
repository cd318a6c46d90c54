"""The MaX-DeepLab / kMaX-DeepLab training loss, composed of its terms.

kMaX-DeepLab (§3.3, "Loss functions") trains with MaX-DeepLab's PQ-style
loss, mask-id cross-entropy, instance discrimination and auxiliary semantic
loss, each a function of `loss_terms`. `MaXDeepLabLoss` builds the ground
truth masks, matches the final output's mask slots to them once (Hungarian,
on `loss_terms.matching_cost`), reuses that matching for every auxiliary
output (deep supervision, §4.1) and returns the weighted terms by name.
Its hyperparameters live in one place, `LossSpec`.

Ground-truth masks are one per thing instance (padded to `max_thing_id`)
then one per stuff class; class logits order classes as thing ids then stuff
ids, void last.
"""

import dataclasses
from typing import Dict
from typing import List
from typing import NamedTuple
from typing import Optional
from typing import Sequence

import tensorflow as tf

from deeplab2_kmax import common
from deeplab2_kmax.losses import loss_terms
from deeplab2_kmax.losses import matching

PQ_CLASS = "pq_style_loss_class_term"
PQ_DICE = "pq_style_loss_mask_dice_term"
MASK_ID_CE = "mask_id_cross_entropy_loss"
INSTANCE_DISCRIMINATION = "instance_discrimination_loss"
SEMANTIC = "semantic_loss"
TOTAL = "total_loss"
PER_OUTPUT_TERMS = (PQ_CLASS, PQ_DICE, MASK_ID_CE, INSTANCE_DISCRIMINATION)


@dataclasses.dataclass(frozen=True)
class LossSpec:
  """Every hyperparameter of the loss, each default written once, here.

  The defaults are kMaX-DeepLab's: the loss weights of §4.1 (COCO and
  Cityscapes; the PQ-style weight applies to both of its terms), α, τ and the
  sampling of DeepLab2's kMaX configs. A sample_k of 0 uses every pixel
  (for instance discrimination: MaX-DeepLab's mask-average form). A
  top_k_percent below 1 averages only that fraction of the hardest pixel
  losses (DeepLab2's hard-pixel mining).

  Attributes:
    pq_style_loss_weight: Weight of both PQ-style terms.
    mask_id_cross_entropy_loss_weight: Weight of the mask-id cross-entropy.
    instance_discrimination_loss_weight: Weight of instance discrimination.
    semantic_loss_weight: Weight of the auxiliary semantic loss.
    focal_loss_alpha: α of the PQ-style loss (positive vs negative slots).
    instance_discrimination_sample_k: Pixels sampled per image.
    instance_discrimination_sample_temperature: Inverse-area exponent of the
      sampling.
    instance_discrimination_temperature: Feature-similarity temperature τ.
    semantic_sample_k: Pixels sampled per image for the semantic loss.
    semantic_sample_temperature: Inverse-area exponent of that sampling.
    semantic_top_k_percent: Hard-pixel mining of the semantic loss (after
      sampling, if any).
    mask_id_cross_entropy_top_k_percent: The same for the mask-id
      cross-entropy.
    instance_discrimination_top_k_percent: The same for instance
      discrimination (over the sampled pixels when sampling).
    matching_implementation: A name in `matching.MATCHING_IMPLEMENTATIONS`.
  """
  pq_style_loss_weight: float = 3.0
  mask_id_cross_entropy_loss_weight: float = 0.3
  instance_discrimination_loss_weight: float = 1.0
  semantic_loss_weight: float = 1.0
  focal_loss_alpha: float = 0.75
  instance_discrimination_sample_k: int = 4096
  instance_discrimination_sample_temperature: float = 1.5
  instance_discrimination_temperature: float = 0.3
  semantic_sample_k: int = 4096
  semantic_sample_temperature: float = 2.0
  semantic_top_k_percent: float = 1.0
  mask_id_cross_entropy_top_k_percent: float = 1.0
  instance_discrimination_top_k_percent: float = 1.0
  matching_implementation: str = "auto"

  def __post_init__(self):
    for name in ("semantic_top_k_percent",
                 "mask_id_cross_entropy_top_k_percent",
                 "instance_discrimination_top_k_percent"):
      value = getattr(self, name)
      if not 0.0 < value <= 1.0:
        raise ValueError(f"{name} must be in (0, 1], got {value}.")
    if self.matching_implementation not in matching.MATCHING_IMPLEMENTATIONS:
      raise ValueError(
          "matching_implementation must be one of "
          f"{tuple(matching.MATCHING_IMPLEMENTATIONS)}, got "
          f"{self.matching_implementation!r}.")

  @property
  def weights(self) -> Dict[str, float]:
    """Loss weight by term name."""
    return {PQ_CLASS: self.pq_style_loss_weight,
            PQ_DICE: self.pq_style_loss_weight,
            MASK_ID_CE: self.mask_id_cross_entropy_loss_weight,
            INSTANCE_DISCRIMINATION: self.instance_discrimination_loss_weight,
            SEMANTIC: self.semantic_loss_weight}


class GroundTruthMasks(NamedTuple):
  """The gt masks at the predictions' resolution (P pixels, M masks)."""
  masks: tf.Tensor  # [B, P, M] 0/1; void pixels in none.
  valid: tf.Tensor  # [B, M] bool, the mask has pixels.
  class_one_hot: tf.Tensor  # [B, M, C] in class-logit order; 0 if absent.
  thing: tf.Tensor  # [B, P] 1 on thing-instance pixels.
  non_void: tf.Tensor  # [B, P] 1 on non-void pixels.
  inverse_area: tf.Tensor  # [B, P] P / area of the pixel's mask.


def thing_stuff_class_ids(num_classes: int, ignore_label: int,
                          thing_class_ids: Sequence[int]) -> List[int]:
  """Dataset class ids in class-logit order: things, then stuff (no void)."""
  things = list(thing_class_ids)
  stuff = [c for c in range(num_classes)
           if c not in things and c != ignore_label]
  return things + stuff


def strided_downsample(x: tf.Tensor, size: Sequence[int]) -> tf.Tensor:
  """Picks every s-th pixel from 0, s = (in - 1) // (out - 1) per axis."""
  in_h, in_w = x.shape[1], x.shape[2]
  out_h, out_w = int(size[0]), int(size[1])
  if (in_h, in_w) == (out_h, out_w):
    return x
  stride_h = (in_h - 1) // max(out_h - 1, 1)
  stride_w = (in_w - 1) // max(out_w - 1, 1)
  return x[:, :stride_h * (out_h - 1) + 1:stride_h,
           :stride_w * (out_w - 1) + 1:stride_w]


class MaXDeepLabLoss:
  """Computes the named loss terms; call(y_true, y_pred) -> dict of [B]."""

  def __init__(self,
               num_classes: int,
               ignore_label: int,
               thing_class_ids: Sequence[int],
               spec: Optional[LossSpec] = None,
               seed: Optional[tf.Tensor] = None):
    """Initialises the loss.

    Args:
      num_classes: Semantic classes of the dataset (incl. an in-range ignore
        label, as COCO's 0).
      ignore_label: Void label of the semantic ground truth.
      thing_class_ids: Dataset ids of the thing classes.
      spec: The hyperparameters; None: `LossSpec()`'s defaults.
      seed: Optional [2] int seed making the pixel sampling deterministic.
    """
    self._ignore_label = ignore_label
    self._thing_ids = list(thing_class_ids)
    self._class_ids = thing_stuff_class_ids(num_classes, ignore_label,
                                            thing_class_ids)
    self._stuff_ids = self._class_ids[len(self._thing_ids):]
    self._spec = LossSpec() if spec is None else spec
    self._seed = seed

  @property
  def spec(self) -> LossSpec:
    return self._spec

  @property
  def num_thing_stuff_classes(self) -> int:
    """Non-void class logits the model must predict."""
    return len(self._class_ids)

  def _seed_for(self, salt: int):
    if self._seed is None:
      return None
    return tf.cast(self._seed, tf.int32) + tf.constant([0, salt], tf.int32)

  def _ground_truth(self, y_true, height, width) -> GroundTruthMasks:
    """Masks and classes at the prediction's resolution."""
    batch = tf.shape(y_true[common.GT_SEMANTIC_KEY])[0]
    size = [height, width]
    semantic = tf.reshape(
        strided_downsample(y_true[common.GT_SEMANTIC_KEY], size),
        [batch, height * width])
    thing_id = tf.reshape(
        strided_downsample(y_true[common.GT_THING_ID_MASK_KEY], size),
        [batch, height * width])
    max_thing_id = y_true[common.GT_THING_ID_CLASS_KEY].shape[-1]
    depth = max(self._class_ids) + 1
    stuff_one_hot = tf.gather(tf.one_hot(semantic, depth), self._stuff_ids,
                              axis=-1)
    thing_one_hot = tf.one_hot(thing_id, max_thing_id)
    masks = tf.concat([thing_one_hot, stuff_one_hot], axis=-1)
    area = tf.reduce_sum(masks, axis=1)  # [B, M]
    thing_classes = tf.cast(y_true[common.GT_THING_ID_CLASS_KEY], tf.int32)
    stuff_classes = tf.tile(tf.constant([self._stuff_ids], tf.int32),
                            [batch, 1])
    mask_class = tf.concat([thing_classes, stuff_classes], axis=-1)
    present = area > 0.5
    mask_class = tf.where(present, mask_class, -1)
    pixel_area = tf.einsum("bpm,bm->bp", masks, area)
    return GroundTruthMasks(
        masks=masks,
        valid=present,
        class_one_hot=tf.gather(tf.one_hot(mask_class, depth),
                                self._class_ids, axis=-1),
        thing=tf.cast(tf.not_equal(thing_id, -1), tf.float32),
        non_void=tf.cast(tf.not_equal(semantic, self._ignore_label),
                         tf.float32),
        inverse_area=(height * width) / tf.maximum(pixel_area, 1.0))

  def __call__(self, y_true: Dict[str, tf.Tensor],
               y_pred: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
    spec = self._spec
    feature = y_pred[common.PRED_PIXEL_SPACE_NORMALIZED_FEATURE_KEY]
    _, height, width, _ = feature.shape.as_list()
    gt = self._ground_truth(y_true, height, width)
    outputs = [y_pred] + list(y_pred.get(common.PRED_AUXILIARY_OUTPUTS, []))
    flat = lambda x: tf.reshape(x, [tf.shape(x)[0], height * width, -1])  # pylint: disable=g-long-lambda

    # Matching on the final output only, reused by every auxiliary output.
    mask_probs = tf.nn.softmax(
        flat(y_pred[common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY]), axis=-1)
    cost, dice, class_probability = loss_terms.matching_cost(
        gt.masks, gt.class_one_hot, mask_probs,
        y_pred[common.PRED_TRANSFORMER_CLASS_LOGITS_KEY], gt.non_void)
    permutation = tf.stop_gradient(matching.match(
        tf.stop_gradient(cost), gt.valid, spec.matching_implementation))
    class_target, class_weight, mask_weight = loss_terms.pq_style_targets(
        permutation, gt.class_one_hot, gt.valid, dice, class_probability,
        mask_probs, gt.non_void)

    per_output = []
    for index, output in enumerate(outputs):
      mask_logits = flat(output[common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY])
      terms = {}
      terms[PQ_CLASS], terms[PQ_DICE] = loss_terms.pq_style_loss(
          output[common.PRED_TRANSFORMER_CLASS_LOGITS_KEY], mask_logits,
          permutation, gt.masks, class_target, class_weight, mask_weight,
          spec.focal_loss_alpha)
      terms[MASK_ID_CE] = loss_terms.mask_id_cross_entropy(
          mask_logits, permutation, gt.masks, gt.non_void,
          spec.mask_id_cross_entropy_top_k_percent)
      terms[INSTANCE_DISCRIMINATION] = self._instance_discrimination(
          flat(output[common.PRED_PIXEL_SPACE_NORMALIZED_FEATURE_KEY]), gt,
          index)
      per_output.append(terms)
    losses = loss_terms.aggregate_deep_supervision(per_output, spec.weights)

    if common.PRED_SEMANTIC_LOGITS_KEY in y_pred and spec.semantic_loss_weight:
      losses[SEMANTIC] = self._semantic_loss(
          y_pred[common.PRED_SEMANTIC_LOGITS_KEY], y_true, gt, height,
          width) * spec.semantic_loss_weight
    losses[TOTAL] = tf.add_n(list(losses.values()))
    return losses

  def _instance_discrimination(self, feature, gt: GroundTruthMasks, index):
    spec = self._spec
    if spec.instance_discrimination_sample_k <= 0:
      return loss_terms.mask_instance_discrimination_loss(
          feature, gt.masks, gt.thing,
          spec.instance_discrimination_temperature,
          spec.instance_discrimination_top_k_percent)
    indices = loss_terms.sample_pixels(
        gt.inverse_area, gt.non_void, spec.instance_discrimination_sample_k,
        spec.instance_discrimination_sample_temperature,
        self._seed_for(2 * index + 1))
    return loss_terms.instance_discrimination_loss(
        feature, gt.masks, indices, spec.instance_discrimination_temperature,
        spec.instance_discrimination_top_k_percent)

  def _semantic_loss(self, logits, y_true, gt: GroundTruthMasks, height,
                     width):
    """Labels and weights at the logits' resolution; pixels sampled when the
    logits have the masks' resolution (the sampling is defined there)."""
    spec = self._spec
    size = [logits.shape[1], logits.shape[2]]
    labels = strided_downsample(y_true[common.GT_SEMANTIC_KEY], size)
    weights = strided_downsample(
        tf.cast(y_true[common.SEMANTIC_LOSS_WEIGHT_KEY], tf.float32), size)
    indices = None
    if spec.semantic_sample_k > 0 and size == [height, width]:
      indices = loss_terms.sample_pixels(
          gt.inverse_area, gt.non_void, spec.semantic_sample_k,
          spec.semantic_sample_temperature, self._seed_for(1000))
    return loss_terms.semantic_loss(logits, labels, weights,
                                    self._ignore_label,
                                    spec.semantic_top_k_percent, indices)


def term_names(num_auxiliary_outputs: int, with_semantic: bool) -> List[str]:
  """Names of the terms `MaXDeepLabLoss` returns, total included."""
  names = list(PER_OUTPUT_TERMS)
  for index in range(num_auxiliary_outputs):
    names += [f"aux_{index}{term}" for term in PER_OUTPUT_TERMS]
  if with_semantic:
    names.append(SEMANTIC)
  return names + [TOTAL]
