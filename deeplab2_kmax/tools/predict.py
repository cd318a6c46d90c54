"""Runs kMaX-DeepLab on images, folders or videos (`predictor.Predictor`).

One image, rendered (image | overlay), optionally with the per-layer cluster
assignment panels (paper Fig. 4):
  python -m deeplab2_kmax.tools.predict --saved_model=DIR --image=photo.jpg \
      [--output=overlay.png] [--cluster_panels=clusters.png]

Many images (a folder, a glob, or one file) to COCO panoptic files:
  python -m deeplab2_kmax.tools.predict --saved_model=DIR \
      --input='photos/*.jpg' --output_dir=out [--overlays]
writes out/panoptic/<name>.png (segment id = R + 256 G + 256^2 B, ids
1..n, void 0), out/panoptic.json (annotations with file_name, image_id and
segments_info, and the categories: what panopticapi's pq_compute reads) and,
with --overlays, out/overlays/<name>.png. Unreadable files are named in a
warning and skipped; the run then exits with status 3, after all the others.

A video (mp4, avi, mov, mkv, webm, ...) gives out/<name>_overlay.mp4, frame
by frame; --video_frames adds the per-frame panoptic PNGs and JSON.

The model is a SavedModel (--saved_model) or a config and checkpoint
(--config_file, --checkpoint_path). With a config, --precision=bfloat16 runs
the model in bfloat16 (`precision`; default: the config's
export_options.precision); where bfloat16 is not native a warning says so and
float32 runs, and the precision that ran is logged. A SavedModel runs in the
precision it was exported in. Any image size works; grayscale (8 or
16 bit), RGBA and palette images are converted to RGB and the EXIF
orientation is applied (`image_io`).
"""

import glob
import os
import sys
from typing import List
from typing import Optional
from typing import Sequence

from absl import app
from absl import flags
from absl import logging
import numpy as np
import tqdm

from deeplab2_kmax import config_loader
from deeplab2_kmax import image_io
from deeplab2_kmax import precision as precision_lib
from deeplab2_kmax import predictor as predictor_lib
from deeplab2_kmax import visualization

FLAGS = flags.FLAGS

VIDEO_EXTENSIONS = frozenset((".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v",
                              ".mpg", ".mpeg", ".wmv", ".flv", ".ts"))
# Exit status when some inputs were skipped (the others were written).
EXIT_SKIPPED = 3


def _define_flags() -> None:
  """CLI flags; defined only when run as a program (modules share names)."""
  flags.DEFINE_string("saved_model", None, "SavedModel directory.")
  flags.DEFINE_string("config_file", None,
                      "Experiment textproto (instead of --saved_model).")
  flags.DEFINE_string("checkpoint_path", None, "With --config_file: "
                      "checkpoint prefix or model_dir (latest checkpoint).")
  flags.DEFINE_multi_string("define", [], "NAME=VALUE config placeholders.")
  flags.DEFINE_string("image", None, "One input image (PNG, JPEG, ...).")
  flags.DEFINE_string(
      "output", None, "Output PNG (default: <image>_panoptic.png beside it).")
  flags.DEFINE_string(
      "cluster_panels", None, "Optional PNG for the per-layer cluster panels.")
  flags.DEFINE_string("input", None, "Folder, glob, image or video.")
  flags.DEFINE_string("output_dir", None, "Where --input's outputs go.")
  flags.DEFINE_bool("overlays", False, "Also write overlay PNGs.")
  flags.DEFINE_bool("video_frames", False,
                    "Video input: also write per-frame panoptic PNGs + JSON.")
  flags.DEFINE_string(
      "dataset", None, "With --saved_model: dataset whose classes, colours "
      "and label divisor to use (default: the one the SavedModel records, "
      "else coco_panoptic).")
  flags.DEFINE_enum(
      "precision", None, precision_lib.PRECISIONS,
      "With --config_file: inference precision (default: the config's "
      "export_options.precision); bfloat16 falls back to float32, with a "
      "warning, where it is not native.")


class PredictError(ValueError):
  """An input that cannot be predicted on; the message names it."""


def load_predictor(saved_model: Optional[str] = None,
                   config_file: Optional[str] = None,
                   checkpoint_path: Optional[str] = None,
                   defines: Optional[dict] = None,
                   dataset: Optional[str] = None,
                   precision: Optional[str] = None) -> predictor_lib.Predictor:
  """A Predictor from a SavedModel, or from a config and checkpoint.

  With a config the model is built in `precision` (default: the config's
  export_options.precision) as `precision.resolve` decides: float32, with a
  warning, where bfloat16 is not native. The precision that runs is logged.
  A SavedModel runs in the precision it was exported in: `precision` is
  refused with it.
  """
  try:
    if saved_model:
      if precision:
        raise PredictError(
            "--precision: a SavedModel runs in the precision it was exported "
            "with (export_options.precision); give it with --config_file")
      return predictor_lib.Predictor.from_saved_model(saved_model, dataset)
    field = "--precision"
    if not precision:
      precision = config_loader.load_config(
          config_file, defines, validate_config=False).export_options.precision
      field = f"{config_file}: export_options.precision"
    ran = precision_lib.resolve(precision, field)
    logging.info("Predicting in %s (asked: %s)", ran, precision)
    with precision_lib.policy_scope(ran):
      return predictor_lib.Predictor.from_config(config_file, checkpoint_path,
                                                 defines)
  except (predictor_lib.PredictorError, precision_lib.PrecisionError) as e:
    raise PredictError(str(e)) from None


def _predict_file(predictor, path: str) -> predictor_lib.Prediction:
  try:
    return predictor(path)
  except image_io.ImageReadError as e:
    raise PredictError(str(e)) from None


def run(saved_model_dir: str, image_path: str, output_path: Optional[str],
        cluster_panels_path: Optional[str] = None,
        dataset: Optional[str] = None,
        predictor: Optional[predictor_lib.Predictor] = None) -> str:
  """Predicts on `image_path` and writes image | overlay; returns its path."""
  if predictor is None:
    if not os.path.isdir(saved_model_dir):
      raise PredictError(f"{saved_model_dir}: no such SavedModel directory")
    if not os.path.isfile(image_path):
      raise PredictError(f"{image_path}: no such image file")
    predictor = load_predictor(saved_model_dir, dataset=dataset)
  result = _predict_file(predictor, image_path)
  if output_path is None:
    output_path = os.path.splitext(image_path)[0] + "_panoptic.png"
  visualization.save_png(
      visualization.hstack_panels([result.image, result.render()]),
      output_path)
  if cluster_panels_path:
    try:
      panels = result.render_clusters()
    except predictor_lib.PredictorError as e:
      raise PredictError(f"{predictor.source}: {e}") from None
    visualization.save_png(panels, cluster_panels_path)
  return output_path


def is_video(path: str) -> bool:
  return os.path.splitext(path)[1].lower() in VIDEO_EXTENSIONS


def list_images(pattern: str) -> List[str]:
  """The image files a folder holds (not recursive) or a glob matches.

  Files are chosen by extension (any Pillow reads); whether they really are
  images is found out when they are read.

  Raises:
    PredictError: nothing matches `pattern` (named).
  """
  if os.path.isdir(pattern):
    candidates = [os.path.join(pattern, name) for name in os.listdir(pattern)]
  elif os.path.isfile(pattern):
    candidates = [pattern]
  else:
    candidates = glob.glob(pattern, recursive=True)
  extensions = image_io.image_extensions()
  files = sorted(p for p in candidates if os.path.isfile(p) and
                 os.path.splitext(p)[1].lower() in extensions)
  if not files:
    raise PredictError(f"--input {pattern}: no image files found (a folder, "
                       "a glob or a file is expected)")
  ignored = len([p for p in candidates if os.path.isfile(p)]) - len(files)
  if ignored:
    logging.info("--input %s: %d files without an image extension ignored",
                 pattern, ignored)
  return files


def image_ids(paths: Sequence[str]) -> List[str]:
  """Unique output names: the file stems, the extension added on a clash."""
  ids, taken = [], set()
  for path in paths:
    stem, extension = os.path.splitext(os.path.basename(path))
    candidate, index = stem, 1
    while candidate in taken:
      candidate = f"{stem}_{extension.lstrip('.')}" + (
          f"_{index}" if index > 1 else "")
      index += 1
    taken.add(candidate)
    ids.append(candidate)
  return ids


class PanopticOutputs:
  """COCO panoptic PNGs + JSON (and optional overlays) under one folder."""

  def __init__(self, output_dir: str, dataset, overlays: bool):
    from deeplab2_kmax.evaluation import writers  # pylint: disable=g-import-not-at-top

    # A dataset described by a file writes its source category ids.
    ids = dataset.category_ids or range(dataset.num_classes)
    categories = [{"id": ids[c], "name": dataset.class_names[c],
                   "isthing": int(dataset.class_has_instances[c])}
                  for c in range(dataset.num_classes)
                  if c != dataset.ignore_label]
    try:
      self._writer = writers.CocoPanopticWriter(
          output_dir, dataset.panoptic_label_divisor, dataset.ignore_label,
          categories, name="panoptic", category_ids=dataset.category_ids)
    except FileExistsError as e:
      raise PredictError(f"--output_dir {output_dir}: {e}") from None
    self._overlay_dir = None
    if overlays:
      self._overlay_dir = os.path.join(output_dir, "overlays")
      os.makedirs(self._overlay_dir, exist_ok=True)

  def add(self, image_id: str, result: predictor_lib.Prediction):
    scores = {segment["id"]: segment["score"] for segment in result.segments}
    self._writer.add(image_id, result.panoptic, scores)
    if self._overlay_dir:
      visualization.save_png(
          result.render(), os.path.join(self._overlay_dir, image_id + ".png"))

  def close(self) -> str:
    return self._writer.close()


def predict_images(predictor, paths: Sequence[str], output_dir: str,
                   overlays: bool = False) -> List[str]:
  """Writes every readable image's outputs; returns the skipped paths."""
  outputs = PanopticOutputs(output_dir, predictor.dataset, overlays)
  skipped = []
  for path, image_id in zip(tqdm.tqdm(paths, desc="predict", unit="image"),
                            image_ids(paths)):
    try:
      result = predictor(path)
    except image_io.ImageReadError as e:
      logging.warning("Skipped %s", e)
      skipped.append(path)
      continue
    outputs.add(image_id, result)
  json_path = outputs.close()
  logging.info("Wrote %d images' predictions to %s", len(paths) -
               len(skipped), json_path)
  return skipped


def _even(frame: np.ndarray) -> np.ndarray:
  """Pads a frame to even height and width (H.264's 4:2:0 needs them)."""
  pad = [(0, frame.shape[0] % 2), (0, frame.shape[1] % 2), (0, 0)]
  return np.pad(frame, pad) if any(p[1] for p in pad[:2]) else frame


def _video_frames(reader, path: str):
  """Yields a video's frames as uint8 RGB; decoding errors name `path`."""
  frames = iter(reader)
  while True:
    try:
      frame = next(frames)
    except StopIteration:
      return
    except (OSError, RuntimeError) as e:
      raise PredictError(f"{path}: cannot decode the video ({e})") from None
    yield np.ascontiguousarray(frame[..., :3], np.uint8)


def predict_video(predictor, path: str, output_dir: str,
                  frames: bool = False, overlays: bool = False) -> str:
  """Writes `<output_dir>/<name>_overlay.mp4`; returns its path.

  With `frames`, each frame's panoptic PNG (`<name>_<index>`) and the JSON
  go to `output_dir` as for images (`overlays`: their overlay PNGs too).

  Raises:
    PredictError: the video cannot be decoded (named).
  """
  import imageio.v2 as imageio  # pylint: disable=g-import-not-at-top

  name = os.path.splitext(os.path.basename(path))[0]
  try:
    reader = imageio.get_reader(path, format="FFMPEG")
    meta = reader.get_meta_data()
  except (OSError, RuntimeError, ValueError) as e:
    raise PredictError(f"{path}: not a readable video ({e})") from None
  fps = float(meta.get("fps") or 25.0)
  expected = int(round(float(meta.get("duration") or 0) * fps)) or None
  os.makedirs(output_dir, exist_ok=True)
  out_path = os.path.join(output_dir, f"{name}_overlay.mp4")
  outputs = (PanopticOutputs(output_dir, predictor.dataset, overlays)
             if frames else None)
  writer = imageio.get_writer(out_path, format="FFMPEG", fps=fps,
                              codec="libx264", macro_block_size=1)
  count = 0
  try:
    for frame in tqdm.tqdm(_video_frames(reader, path), desc=name,
                           unit="frame", total=expected):
      result = predictor(frame)
      writer.append_data(_even(result.render()))
      if outputs is not None:
        outputs.add(f"{name}_{count:06d}", result)
      count += 1
  finally:
    writer.close()
    reader.close()
  if outputs is not None:
    outputs.close()
  logging.info("Wrote %d frames to %s", count, out_path)
  return out_path


def run_input(predictor, pattern: str, output_dir: str, overlays: bool = False,
              video_frames: bool = False) -> int:
  """Predicts on a folder, glob, image or video; returns the exit status.

  0 when every input was written, `EXIT_SKIPPED` when unreadable images were
  skipped.
  """
  if os.path.isfile(pattern) and is_video(pattern):
    path = predict_video(predictor, pattern, output_dir, video_frames,
                         overlays)
    print(f"Wrote {path}")
    return 0
  paths = list_images(pattern)
  skipped = predict_images(predictor, paths, output_dir, overlays)
  print(f"Wrote {len(paths) - len(skipped)} of {len(paths)} images' "
        f"predictions to {output_dir}")
  if skipped:
    print(f"Skipped {len(skipped)} unreadable files: {', '.join(skipped)}",
          file=sys.stderr)
    return EXIT_SKIPPED
  return 0


def _check_flags() -> None:
  if bool(FLAGS.saved_model) == bool(FLAGS.config_file):
    raise app.UsageError("Give either --saved_model or --config_file.")
  if FLAGS.config_file and not FLAGS.checkpoint_path:
    raise app.UsageError("--config_file needs --checkpoint_path.")
  if bool(FLAGS.image) == bool(FLAGS.input):
    raise app.UsageError("Give either --image or --input.")
  if FLAGS.input and not FLAGS.output_dir:
    raise app.UsageError("--input needs --output_dir.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  _check_flags()
  try:
    defines = config_loader.parse_defines(FLAGS.define)
    if FLAGS.saved_model and not os.path.isdir(FLAGS.saved_model):
      raise PredictError(f"{FLAGS.saved_model}: no such SavedModel directory")
    if FLAGS.image and not os.path.isfile(FLAGS.image):
      raise PredictError(f"{FLAGS.image}: no such image file")
    predictor = load_predictor(FLAGS.saved_model, FLAGS.config_file,
                               FLAGS.checkpoint_path, defines, FLAGS.dataset,
                               FLAGS.precision)
    if FLAGS.image:
      path = run(None, FLAGS.image, FLAGS.output, FLAGS.cluster_panels,
                 predictor=predictor)
      print(f"Wrote {path}")
      return
    status = run_input(predictor, FLAGS.input, FLAGS.output_dir,
                       FLAGS.overlays, FLAGS.video_frames)
  except ValueError as e:  # PredictError, ConfigError: the input is named.
    print(f"ERROR: {e}", file=sys.stderr)
    sys.exit(1)
  sys.exit(status)


if __name__ == "__main__":
  _define_flags()
  app.run(main)
