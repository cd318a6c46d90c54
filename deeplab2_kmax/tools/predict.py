"""Runs an exported kMaX-DeepLab SavedModel on one image and renders it.

  python -m deeplab2_kmax.tools.predict --saved_model=DIR --image=photo.jpg \
      [--output=overlay.png] [--cluster_panels=clusters.png]

Any size works; grayscale (8 or 16 bit), RGBA and palette images are
converted to RGB (16-bit values scaled, not clipped), and the EXIF
orientation is applied. The overlay
shows each panoptic segment in its class colour over the image. When the
SavedModel returns `cluster_assignments` (one hard pixel-to-centre assignment
per kMaX layer), `--cluster_panels` writes them side by side (paper Fig. 4).
"""

import os
import sys
from typing import Dict
from typing import Optional

from absl import app
from absl import flags
import numpy as np
from PIL import Image
from PIL import ImageOps
from PIL import UnidentifiedImageError

from deeplab2_kmax import visualization
from deeplab2_kmax.data import dataset_registry

FLAGS = flags.FLAGS


def _define_flags() -> None:
  """CLI flags; defined only when run as a program (modules share names)."""
  flags.DEFINE_string("saved_model", None, "SavedModel directory.")
  flags.DEFINE_string("image", None, "Input image (PNG, JPEG, ...).")
  flags.DEFINE_string(
      "output", None, "Output PNG (default: <image>_panoptic.png beside it).")
  flags.DEFINE_string(
      "cluster_panels", None, "Optional PNG for the per-layer cluster panels.")
  flags.DEFINE_string(
      "dataset", None, "Dataset whose colours and label divisor to use "
      "(default: the one recorded in the SavedModel, else coco_panoptic).")


class PredictError(ValueError):
  """An input that cannot be predicted on; the message names it."""


def _high_depth_to_uint8(image: Image.Image) -> np.ndarray:
  """A 16-bit, 32-bit integer or float single-channel image as uint8 [H, W].

  Scaled to the full 8-bit range, not clipped: 16-bit images by 255/65535;
  32-bit integers by their likely depth (8 or 16 bits, else their maximum);
  floats in [0, 1] by 255.
  """
  values = np.asarray(image, dtype=np.float64)
  peak = float(values.max()) if values.size else 0.0
  if image.mode.startswith("I;16"):
    full = 65535.0
  elif image.mode == "F" and peak <= 1.0:
    full = 1.0
  else:
    full = next((f for f in (255.0, 65535.0) if peak <= f), peak)
  return np.clip(np.rint(values * (255.0 / full)), 0, 255).astype(np.uint8)


def read_rgb_image(path: str) -> np.ndarray:
  """Reads `path` as [H, W, 3] uint8 RGB.

  Grayscale, RGBA, palette and 16-bit images are converted (16-bit scaled,
  not clipped) and the EXIF orientation is applied.
  """
  if not os.path.isfile(path):
    raise PredictError(f"{path}: no such image file")
  try:
    with Image.open(path) as image:
      image.load()
      image = ImageOps.exif_transpose(image)
      if image.mode.startswith("I") or image.mode == "F":
        gray = _high_depth_to_uint8(image)
        return np.repeat(gray[..., None], 3, axis=-1)
      if image.mode in ("RGBA", "LA") or (
          image.mode == "P" and "transparency" in image.info):
        # Composite on black so transparent areas do not show stale colours.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, rgba)
      return np.asarray(image.convert("RGB"), dtype=np.uint8)
  except (UnidentifiedImageError, OSError) as e:
    raise PredictError(f"{path}: not a readable image ({e})") from None


def _dataset_of(model, override: Optional[str]) -> dataset_registry.DatasetInfo:
  if override:
    return dataset_registry.get(override)
  name = getattr(model, "dataset_name", None)
  if name is not None:
    value = name.numpy() if hasattr(name, "numpy") else name
    value = value.decode() if isinstance(value, bytes) else str(value)
    try:
      return dataset_registry.get(value)
    except ValueError:
      pass
  return dataset_registry.get("coco_panoptic")


def predict(saved_model_dir: str, image: np.ndarray) -> Dict[str, np.ndarray]:
  """Runs the SavedModel's serving_default on one [H, W, 3] uint8 image."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  model = tf.saved_model.load(saved_model_dir)
  outputs = model.signatures["serving_default"](image=tf.constant(image))
  result = {k: v.numpy() for k, v in outputs.items()}
  result["_model"] = model
  return result


def run(saved_model_dir: str, image_path: str, output_path: Optional[str],
        cluster_panels_path: Optional[str] = None,
        dataset: Optional[str] = None) -> str:
  """Predicts on `image_path` and writes the overlay; returns its path."""
  if not os.path.isdir(saved_model_dir):
    raise PredictError(f"{saved_model_dir}: no such SavedModel directory")
  image = read_rgb_image(image_path)
  outputs = predict(saved_model_dir, image)
  info = _dataset_of(outputs.pop("_model"), dataset)
  panoptic = outputs["panoptic_pred"][0]
  colored = visualization.colorize_panoptic(
      panoptic, info.panoptic_label_divisor, info.colormap, info.ignore_label)
  rendered = visualization.hstack_panels([
      image,
      visualization.overlay(image, colored,
                            boundaries=visualization.segment_boundaries(panoptic)),
  ])
  if output_path is None:
    output_path = os.path.splitext(image_path)[0] + "_panoptic.png"
  visualization.save_png(rendered, output_path)
  if cluster_panels_path:
    if "cluster_assignments" not in outputs:
      raise PredictError(
          f"{saved_model_dir}: this SavedModel does not return "
          "'cluster_assignments'; re-export it to get cluster panels")
    assignments = outputs["cluster_assignments"][0]  # [L, h, w]
    num_clusters = int(assignments.max()) + 1
    palette = visualization.cluster_palette(max(num_clusters, 1))
    panels = [palette[a] for a in assignments]
    visualization.save_png(
        visualization.hstack_panels(
            [visualization.resize_nearest(p, image.shape[:2]) for p in panels]),
        cluster_panels_path)
  return output_path


def main(argv):
  del argv
  if not FLAGS.saved_model or not FLAGS.image:
    raise app.UsageError("--saved_model and --image are required.")
  try:
    path = run(FLAGS.saved_model, FLAGS.image, FLAGS.output,
               FLAGS.cluster_panels, FLAGS.dataset)
  except (PredictError, ValueError) as e:
    print(f"ERROR: {e}", file=sys.stderr)
    sys.exit(1)
  print(f"Wrote {path}")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
