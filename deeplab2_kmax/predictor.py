"""Panoptic prediction from Python: `Predictor` and its `Prediction`.

  from deeplab2_kmax import Predictor
  predictor = Predictor.from_saved_model("exported/saved_model")
  result = predictor("photo.jpg")  # Or a uint8 [H, W, 3] array.
  result.segments    # [{"id", "category_id", "isthing", "area", "score"}]
  overlay = result.render()

Both constructors run the exported serving function (`export_lib`): the
evaluation resize and padding, the model, the mask-wise merging and the
mapping back to the original image size. `from_saved_model` loads what
`export_model` wrote; `from_config` builds the same serving module in
memory from a textproto and a checkpoint, so the two give the same maps.
"""

import dataclasses
import os
from typing import Any
from typing import Callable
from typing import Dict
from typing import Mapping
from typing import Optional
from typing import Tuple
from typing import Union

import numpy as np

from deeplab2_kmax import common
from deeplab2_kmax import image_io
from deeplab2_kmax import visualization
from deeplab2_kmax.data import dataset_registry

ImageInput = Union[str, os.PathLike, np.ndarray]

# Outputs every exported serving_default returns (`export_lib`);
# `cluster_assignments` is optional (older exports lack it).
_REQUIRED_OUTPUTS = (
    common.PRED_PANOPTIC_KEY, common.PRED_SEMANTIC_KEY,
    common.PRED_INSTANCE_KEY, common.PRED_INSTANCE_SCORES_KEY,
    common.PRED_SEMANTIC_SCORES_KEY)
_CLUSTERS = "cluster_assignments"
_DEFAULT_DATASET = "coco_panoptic"


class PredictorError(ValueError):
  """A model or input the predictor cannot use; the message names it."""


@dataclasses.dataclass(frozen=True, eq=False)
class Prediction:
  """One image's panoptic prediction, every map at the image's size.

  Attributes:
    image: [H, W, 3] uint8 RGB input.
    panoptic: [H, W] int32, semantic * label_divisor + instance (void pixels:
      ignore_label * label_divisor).
    semantic: [H, W] int32 class of each panoptic segment
      (panoptic // label_divisor; void pixels have the ignore label).
    instance: [H, W] int32 instance id (panoptic % label_divisor; 0 on stuff
      and void).
    semantic_argmax: [H, W] int32 class of each pixel's argmax mask slot, with
      no thresholds and no void: the map mean IoU scores.
    segments: COCO-style `segments_info` of the non-void segments, in id
      order: {"id": panoptic id, "category_id": class id (the source
      category id for a dataset described by a file), "isthing": bool,
      "area": pixels, "score": mean class confidence x mean mask
      probability over the segment}.
    cluster_assignments: [L, h, w] int32 centre each pixel is assigned to in
      each of the L kMaX layers (paper Eq. 5, Fig. 4), at the feature
      resolution of the image's part of the crop; None when the SavedModel
      does not return them.
    dataset: The dataset whose classes, colours and divisor apply.
  """

  image: np.ndarray
  panoptic: np.ndarray
  semantic: np.ndarray
  instance: np.ndarray
  semantic_argmax: np.ndarray
  segments: Tuple[Dict[str, Any], ...]
  cluster_assignments: Optional[np.ndarray]
  dataset: dataset_registry.DatasetInfo

  def render(self, alpha: float = 0.55) -> np.ndarray:
    """[H, W, 3] uint8: segments in their class colours over the image."""
    info = self.dataset
    colored = visualization.colorize_panoptic(
        self.panoptic, info.panoptic_label_divisor, info.colormap,
        info.ignore_label)
    return visualization.overlay(
        self.image, colored, alpha=alpha,
        boundaries=visualization.segment_boundaries(self.panoptic))

  def render_clusters(self) -> np.ndarray:
    """[H, L * W + gaps, 3] uint8: one panel per kMaX layer, colour = centre.

    Raises:
      PredictorError: the model returned no cluster assignments.
    """
    if self.cluster_assignments is None:
      raise PredictorError(
          "this model does not return 'cluster_assignments'; re-export it "
          "to get cluster panels")
    palette = visualization.cluster_palette(
        int(self.cluster_assignments.max()) + 1)
    size = self.image.shape[:2]
    return visualization.hstack_panels(
        [visualization.resize_nearest(palette[a], size)
         for a in self.cluster_assignments])


def check_image(image: np.ndarray, name: str = "image") -> np.ndarray:
  """Returns `image` if it is a non-empty uint8 [H, W, 3] array, else raises."""
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[-1] != 3:
    raise PredictorError(
        f"{name}: expected an RGB array of shape [H, W, 3], got shape "
        f"{list(image.shape)}")
  if image.dtype != np.uint8:
    raise PredictorError(
        f"{name}: expected dtype uint8 (0..255), got {image.dtype}; convert "
        "it, e.g. np.clip(x, 0, 255).astype(np.uint8)")
  if image.shape[0] == 0 or image.shape[1] == 0:
    raise PredictorError(f"{name}: empty image of shape {list(image.shape)}")
  return image


def segments_info(panoptic: np.ndarray, semantic_scores: np.ndarray,
                  instance_scores: np.ndarray,
                  info: dataset_registry.DatasetInfo) -> Tuple[dict, ...]:
  """COCO-style segments of a panoptic map (void left out), in id order."""
  from deeplab2_kmax.evaluation import coco_instance_ap  # pylint: disable=g-import-not-at-top

  divisor = info.panoptic_label_divisor
  scores = coco_instance_ap.segment_scores(
      panoptic, semantic_scores, instance_scores, divisor, info.ignore_label)
  ids, areas = np.unique(panoptic, return_counts=True)
  segments = []
  for segment_id, area in zip(ids.tolist(), areas.tolist()):
    class_id = segment_id // divisor
    if class_id == info.ignore_label:
      continue
    is_thing = (0 <= class_id < len(info.class_has_instances) and
                info.class_has_instances[class_id])
    category_id = (info.category_ids[class_id] if info.category_ids
                   else class_id)  # A described dataset's source ids.
    segments.append({"id": segment_id, "category_id": category_id,
                     "isthing": bool(is_thing), "area": area,
                     "score": scores[segment_id]})
  return tuple(segments)


def _frozen(array) -> np.ndarray:
  array = np.array(array)
  array.setflags(write=False)
  return array


class Predictor:
  """Runs kMaX-DeepLab on single images; build with a `from_*` constructor.

  `predictor(image)` takes a uint8 [H, W, 3] RGB array or an image path
  (read with `image_io.read_rgb_image`) and returns a `Prediction`.
  """

  def __init__(self, serve: Callable[[Any], Mapping[str, Any]],
               dataset: dataset_registry.DatasetInfo, source: str,
               keep_alive: Any = None):
    """Wraps a serving function; prefer `from_saved_model` / `from_config`.

    Args:
      serve: Takes a uint8 [H, W, 3] tensor, returns the exported outputs.
      dataset: Classes, colours and label divisor of the model.
      source: Where the model comes from, for messages.
      keep_alive: Object owning `serve`'s variables (kept referenced).
    """
    self._serve = serve
    self.dataset = dataset
    self.source = source
    self._keep_alive = keep_alive

  @classmethod
  def from_saved_model(cls, path: str,
                       dataset: Optional[str] = None) -> "Predictor":
    """Loads a SavedModel written by `export_model` (its serving_default).

    Args:
      path: The SavedModel directory.
      dataset: Registry name overriding the dataset the SavedModel records
        (default: the recorded one, else coco_panoptic).

    Raises:
      PredictorError: `path` is not a SavedModel with the exported outputs.
    """
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    path = os.fspath(path)
    if not os.path.isfile(os.path.join(path, "saved_model.pb")):
      raise PredictorError(
          f"{path}: not a SavedModel directory (no saved_model.pb)")
    model = tf.saved_model.load(path)
    signature = model.signatures.get("serving_default")
    if signature is None:
      raise PredictorError(f"{path}: the SavedModel has no serving_default "
                           "signature; export it with export_model")
    missing = sorted(set(_REQUIRED_OUTPUTS) - set(signature.structured_outputs))
    if missing:
      raise PredictorError(
          f"{path}: serving_default lacks the outputs {missing}; re-export "
          "it with export_model")
    info = _dataset_info(dataset or _recorded_dataset(model), path)
    return cls(lambda image: signature(image=image), info, path, model)

  @classmethod
  def from_config(cls, config_file: str, checkpoint: str,
                  defines: Optional[Mapping[str, str]] = None) -> "Predictor":
    """Builds the model of a textproto and restores a checkpoint into it.

    The serving module is the one `export_model` saves, built in memory: same
    export crop, resizing and post-processing as the SavedModel.

    Args:
      config_file: Experiment textproto (`${NAME}` placeholders filled from
        `defines`, then the environment).
      checkpoint: Checkpoint prefix (model_dir/ckpt-N) or a model_dir (its
        latest checkpoint).
      defines: Placeholder values.

    Raises:
      PredictorError: no checkpoint at `checkpoint`, or it does not fit.
      config_loader.ConfigError: the config cannot be read (file named).
    """
    from deeplab2_kmax import builders  # pylint: disable=g-import-not-at-top
    from deeplab2_kmax import config_loader  # pylint: disable=g-import-not-at-top
    from deeplab2_kmax.trainer import export_lib  # pylint: disable=g-import-not-at-top

    config = config_loader.load_config(os.fspath(config_file), defines,
                                       validate_config=False)
    prefix = _checkpoint_prefix(os.fspath(checkpoint))
    crop = (tuple(config.export_options.crop_size) or
            tuple(config.eval_dataset_options.crop_size))
    model = builders.build_model(config, crop_size=crop)
    _restore(model, prefix, config_file)
    module = export_lib.serving_module(model, config)
    return cls(module.serve, builders.dataset_info(config), prefix, module)

  def __call__(self, image: ImageInput) -> Prediction:
    """Predicts on a uint8 [H, W, 3] RGB array or an image file path.

    Raises:
      PredictorError: the array is not uint8 [H, W, 3].
      image_io.ImageReadError: the file is missing or unreadable (named).
    """
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    if isinstance(image, (str, os.PathLike)):
      image = image_io.read_rgb_image(image)
    else:
      image = check_image(image)
    outputs = {key: value.numpy()[0] for key, value in
               self._serve(tf.constant(image)).items()}
    info = self.dataset
    panoptic = outputs[common.PRED_PANOPTIC_KEY]
    clusters = outputs.get(_CLUSTERS)
    return Prediction(
        image=_frozen(image),
        panoptic=_frozen(panoptic),
        semantic=_frozen(panoptic // info.panoptic_label_divisor),
        instance=_frozen(outputs[common.PRED_INSTANCE_KEY]),
        semantic_argmax=_frozen(outputs[common.PRED_SEMANTIC_KEY]),
        segments=segments_info(
            panoptic, outputs[common.PRED_SEMANTIC_SCORES_KEY],
            outputs[common.PRED_INSTANCE_SCORES_KEY], info),
        cluster_assignments=None if clusters is None else _frozen(clusters),
        dataset=info)


def _recorded_dataset(model) -> str:
  """The dataset name a SavedModel records, else the default."""
  name = getattr(model, "dataset_name", None)
  if name is None:
    return _DEFAULT_DATASET
  value = name.numpy() if hasattr(name, "numpy") else name
  value = value.decode() if isinstance(value, bytes) else str(value)
  known = value in dataset_registry.names() or (
      dataset_registry.is_info_file(value) and os.path.exists(value))
  return value if known else _DEFAULT_DATASET


def _dataset_info(name: str, where: str) -> dataset_registry.DatasetInfo:
  try:
    return dataset_registry.get(name)
  except ValueError as e:
    raise PredictorError(f"{where}: {e}") from None


def _checkpoint_prefix(checkpoint: str) -> str:
  """A checkpoint prefix, or a directory's latest checkpoint; else raises."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  if os.path.isdir(checkpoint):
    latest = tf.train.latest_checkpoint(checkpoint)
    if latest is None:
      raise PredictorError(f"{checkpoint}: directory holds no checkpoint")
    return latest
  if not tf.io.gfile.exists(checkpoint + ".index"):
    raise PredictorError(f"{checkpoint}: no such checkpoint (expected "
                         f"{checkpoint}.index)")
  return checkpoint


def _restore(model, prefix: str, config_file: str) -> None:
  """Restores every model variable from `prefix`; names both on a misfit."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  try:
    tf.train.Checkpoint(model=model).restore(
        prefix).expect_partial().assert_existing_objects_matched()
  except (AssertionError, ValueError) as e:
    raise PredictorError(
        f"{prefix}: checkpoint does not fit the model of {config_file} "
        f"({str(e).splitlines()[0][:300]})") from None
