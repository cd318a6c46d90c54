"""Rendering of panoptic predictions and of kMaX pixel-to-cluster assignments.

The cluster-assignment panels show, for every kMaX layer, the hard assignment
the layer used to update its centres (paper Eq. 5: argmax over the N centres of
the layer's auxiliary mask logits), one colour per centre, as in the paper's
Fig. 4-5.
"""

from typing import Optional
from typing import Sequence
from typing import Tuple

import numpy as np
from PIL import Image

Colormap = Sequence[Tuple[int, int, int]]


def cluster_palette(num_clusters: int) -> np.ndarray:
  """Returns [num_clusters, 3] uint8 colours; centre i has the same colour for any N."""
  index = np.arange(num_clusters)
  hues = (index * 0.618033988749895) % 1.0
  saturation = 0.55 + 0.45 * ((index * 0.7548776662) % 1.0)
  value = 0.65 + 0.35 * ((index * 0.5698402910) % 1.0)
  return (_hsv_to_rgb(hues, saturation, value) * 255).round().astype(np.uint8)


def _hsv_to_rgb(h, s, v):
  i = np.floor(h * 6).astype(int) % 6
  f = h * 6 - np.floor(h * 6)
  p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
  table = np.stack([
      np.stack([v, t, p], -1), np.stack([q, v, p], -1),
      np.stack([p, v, t], -1), np.stack([p, q, v], -1),
      np.stack([t, p, v], -1), np.stack([v, p, q], -1)
  ], 0)
  return table[i, np.arange(len(h))]


def cluster_assignment(mask_logits: np.ndarray) -> np.ndarray:
  """[H, W, N] logits of one kMaX layer -> [H, W] index of the assigned centre."""
  return np.argmax(mask_logits, axis=-1)


def colorize_assignment(assignment: np.ndarray, num_clusters: int) -> np.ndarray:
  """[H, W] centre indices -> [H, W, 3] uint8, one colour per centre."""
  return cluster_palette(num_clusters)[assignment]


def colorize_panoptic(panoptic: np.ndarray,
                      label_divisor: int,
                      colormap: Colormap,
                      ignore_label: Optional[int] = None) -> np.ndarray:
  """[H, W] panoptic ids -> [H, W, 3] uint8.

  Each segment gets its class colour, shifted by a per-instance offset so that
  touching instances of one class stay distinguishable; void is black.
  """
  panoptic = np.asarray(panoptic, dtype=np.int64)
  semantic = panoptic // label_divisor
  instance = panoptic % label_divisor
  colors = np.asarray(colormap, dtype=np.int64)
  semantic_clipped = np.clip(semantic, 0, len(colors) - 1)
  rgb = colors[semantic_clipped]
  jitter = np.stack([(instance * 37) % 61, (instance * 73) % 53,
                     (instance * 19) % 47], -1) - 25
  rgb = np.where(instance[..., None] > 0, rgb + jitter, rgb)
  void = (semantic < 0) | (semantic >= len(colors))
  if ignore_label is not None:
    void |= semantic == ignore_label
  rgb[void] = 0
  return np.clip(rgb, 0, 255).astype(np.uint8)


def segment_boundaries(panoptic: np.ndarray) -> np.ndarray:
  """[H, W] bool: pixels whose right or lower neighbour is another segment."""
  edges = np.zeros(panoptic.shape, dtype=bool)
  edges[:, :-1] |= panoptic[:, :-1] != panoptic[:, 1:]
  edges[:-1, :] |= panoptic[:-1, :] != panoptic[1:, :]
  return edges


def overlay(image: np.ndarray, colored: np.ndarray, alpha: float = 0.55,
            boundaries: Optional[np.ndarray] = None) -> np.ndarray:
  """Blends `colored` over `image` (both [H, W, 3] uint8); boundaries white."""
  blended = (1 - alpha) * image.astype(np.float32) + alpha * colored
  out = blended.round().astype(np.uint8)
  if boundaries is not None:
    out[boundaries] = 255
  return out


def resize_nearest(array: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
  height, width = size
  rows = (np.arange(height) * array.shape[0] // height)
  cols = (np.arange(width) * array.shape[1] // width)
  return array[rows][:, cols]


def hstack_panels(panels: Sequence[np.ndarray], gap: int = 4) -> np.ndarray:
  """Concatenates [H, W, 3] panels left to right (resized to the first's size)."""
  height, width = panels[0].shape[:2]
  spacer = np.full((height, gap, 3), 255, dtype=np.uint8)
  parts = []
  for i, panel in enumerate(panels):
    if panel.shape[:2] != (height, width):
      panel = resize_nearest(panel, (height, width))
    parts.append(panel.astype(np.uint8))
    if i + 1 < len(panels):
      parts.append(spacer)
  return np.concatenate(parts, axis=1)


def cluster_panels(per_layer_mask_logits: Sequence[np.ndarray],
                   output_size: Optional[Tuple[int, int]] = None) -> np.ndarray:
  """One panel per kMaX layer: the argmax assignment, coloured by centre.

  Args:
    per_layer_mask_logits: For each kMaX layer, [h, w, N] auxiliary mask logits
      (the ones whose argmax the layer used as its cluster assignment).
    output_size: Optional (H, W) to upsample the panels to (nearest).

  Returns:
    [H, L * W + gaps, 3] uint8 strip of L panels.
  """
  panels = []
  for logits in per_layer_mask_logits:
    colored = colorize_assignment(cluster_assignment(logits), logits.shape[-1])
    if output_size is not None:
      colored = resize_nearest(colored, output_size)
    panels.append(colored)
  return hstack_panels(panels)


def save_png(array: np.ndarray, path: str):
  Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)


def prediction_strip(image: np.ndarray, panoptic_label: np.ndarray,
                     panoptic_prediction: np.ndarray, label_divisor: int,
                     colormap: Colormap,
                     ignore_label: Optional[int] = None) -> np.ndarray:
  """image | ground truth | prediction, the panoptic maps over the image.

  Args:
    image: [H, W, 3] RGB.
    panoptic_label: [H, W] ground-truth panoptic ids (class * divisor + id).
    panoptic_prediction: [H, W] predicted panoptic ids.
    label_divisor: The dataset's panoptic label divisor.
    colormap: One RGB colour per class.
    ignore_label: Void class (drawn black).

  Returns:
    [H, 3 * W + gaps, 3] uint8.
  """
  image = np.clip(np.asarray(image, np.float32), 0, 255).astype(np.uint8)
  panels = [image]
  for panoptic in (panoptic_label, panoptic_prediction):
    colored = colorize_panoptic(panoptic, label_divisor, colormap,
                                ignore_label)
    panels.append(overlay(image, colored,
                          boundaries=segment_boundaries(panoptic)))
  return hstack_panels(panels)


def training_panels(images: np.ndarray, semantic_labels: np.ndarray,
                    mask_logits: np.ndarray, class_logits: np.ndarray,
                    class_ids: Sequence[int], ignore_label: int,
                    colormap: Colormap) -> np.ndarray:
  """Per image: image | label | predicted semantic | cluster assignment.

  The predicted semantic map gives every pixel the class of the cluster
  centre it is assigned to (argmax of the mask logits), the centre's class
  being the argmax of its class logits (the void logit -> `ignore_label`).

  Args:
    images: [B, H, W, 3] RGB.
    semantic_labels: [B, H, W] (or [B, H, W, 1]) ground-truth class ids.
    mask_logits: [B, h, w, N].
    class_logits: [B, N, C + 1], classes in `class_ids` order, void last.
    class_ids: The dataset class id of each class logit.
    ignore_label: The void class id.
    colormap: One RGB colour per class id.

  Returns:
    [B, H, 4 * W + gaps, 3] uint8.
  """
  to_class = np.asarray(list(class_ids) + [ignore_label], np.int64)
  strips = []
  for image, label, masks, classes in zip(images, semantic_labels,
                                          mask_logits, class_logits):
    image = np.clip(np.asarray(image, np.float32), 0, 255).astype(np.uint8)
    size = image.shape[:2]
    label = np.reshape(label, size)
    assignment = cluster_assignment(masks)
    predicted = to_class[np.argmax(classes, axis=-1)][assignment]
    panels = [image]
    for semantic in (label, resize_nearest(predicted, size)):
      panels.append(colorize_panoptic(semantic, 1, colormap, ignore_label))
    panels.append(resize_nearest(
        colorize_assignment(assignment, masks.shape[-1]), size))
    strips.append(hstack_panels(panels))
  return np.stack(strips)
