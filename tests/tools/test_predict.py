"""Tests for the predict CLI on a stand-in SavedModel (any size, modes, errors)."""

import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from deeplab2_kmax import image_io
from deeplab2_kmax.tools import predict

DIVISOR = 256


class _StandIn(tf.Module):
  """Thresholds brightness: bright pixels are thing class 4 instance 1."""

  def __init__(self):
    super().__init__()
    self.dataset_name = tf.Variable("synthetic_panoptic", trainable=False)

  @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)])
  def serve(self, image):
    gray = tf.reduce_mean(tf.cast(image, tf.float32), -1)
    bright = tf.cast(gray > 127, tf.int32)
    panoptic = bright * (4 * DIVISOR + 1) + (1 - bright) * (1 * DIVISOR)
    small = tf.image.resize(gray[None, :, :, None], [8, 8], method="nearest")
    assignments = tf.cast(small[0, :, :, 0] > 127, tf.int32)
    scores = tf.fill(tf.shape(gray), 0.5)
    return {"panoptic_pred": panoptic[None],
            "semantic_pred": (panoptic // DIVISOR)[None],
            "instance_pred": (panoptic % DIVISOR)[None],
            "instance_scores": scores[None], "semantic_scores": scores[None],
            "cluster_assignments": tf.stack([assignments, 1 - assignments])[None]}


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("sm") / "model")
  module = _StandIn()
  tf.saved_model.save(module, path, signatures={"serving_default": module.serve})
  return path


def _image(path, mode, size=(37, 23)):
  rng = np.random.default_rng(0)
  channels = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
  array = rng.integers(0, 256, size=(size[1], size[0], channels), dtype=np.uint8)
  Image.fromarray(array.squeeze(-1) if channels == 1 else array, mode).save(path)
  return str(path)


@pytest.mark.parametrize("mode, suffix", [("RGB", ".png"), ("RGB", ".jpg"),
                                          ("L", ".png"), ("RGBA", ".png")])
def test_odd_sized_grayscale_and_rgba_images_work(tmp_path, saved_model, mode, suffix):
  image_path = _image(tmp_path / f"in{suffix}", mode)
  out = predict.run(saved_model, image_path, str(tmp_path / "out.png"),
                    str(tmp_path / "clusters.png"))
  rendered = np.asarray(Image.open(out))
  assert rendered.shape == (23, 2 * 37 + 4, 3)
  panels = np.asarray(Image.open(tmp_path / "clusters.png"))
  assert panels.shape == (23, 2 * 37 + 4, 3)


def test_rgba_is_composited_to_rgb(tmp_path):
  array = np.zeros((4, 4, 4), dtype=np.uint8)
  array[..., 0] = 200
  array[:2, :, 3] = 255  # Top half opaque red, bottom half transparent.
  Image.fromarray(array, "RGBA").save(tmp_path / "a.png")
  rgb = image_io.read_rgb_image(str(tmp_path / "a.png"))
  assert rgb.shape == (4, 4, 3)
  np.testing.assert_array_equal(rgb[0, 0], [200, 0, 0])
  np.testing.assert_array_equal(rgb[3, 0], [0, 0, 0])


def test_palette_images_use_their_colours_and_transparency(tmp_path):
  indices = np.array([[0, 1], [2, 1]], np.uint8)
  image = Image.fromarray(indices, "P")
  image.putpalette([10, 20, 30, 200, 0, 0, 0, 250, 5] + [0] * 759)
  image.save(tmp_path / "p.png")
  image.save(tmp_path / "pt.png", transparency=1)  # Index 1 transparent.
  np.testing.assert_array_equal(
      image_io.read_rgb_image(str(tmp_path / "p.png")),
      [[[10, 20, 30], [200, 0, 0]], [[0, 250, 5], [200, 0, 0]]])
  np.testing.assert_array_equal(
      image_io.read_rgb_image(str(tmp_path / "pt.png")),
      [[[10, 20, 30], [0, 0, 0]], [[0, 250, 5], [0, 0, 0]]])


def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path):
  values = np.array([[0, 257, 32768, 65535]], np.uint16)
  Image.fromarray(values).save(tmp_path / "deep.png")
  with Image.open(tmp_path / "deep.png") as stored:
    assert stored.mode.startswith("I")  # Pillow keeps the 16 bits.
  rgb = image_io.read_rgb_image(str(tmp_path / "deep.png"))
  expected = np.rint(values / 65535.0 * 255.0).astype(np.uint8)  # 0 1 128 255
  assert rgb.dtype == np.uint8 and rgb.shape == (1, 4, 3)
  for channel in range(3):
    np.testing.assert_array_equal(rgb[..., channel], expected)


def test_exif_orientation_is_applied(tmp_path):
  array = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 10
  exif = Image.Exif()
  exif[0x0112] = 6  # The camera was turned: display rotated 90° clockwise.
  Image.fromarray(array).save(tmp_path / "turned.png", exif=exif)
  rgb = image_io.read_rgb_image(str(tmp_path / "turned.png"))
  np.testing.assert_array_equal(rgb, np.rot90(array, k=-1))


def test_non_image_file_gives_a_clear_error(tmp_path, saved_model):
  bogus = tmp_path / "notes.png"
  bogus.write_text("this is not an image")
  result = subprocess.run(
      [sys.executable, "-m", "deeplab2_kmax.tools.predict",
       f"--saved_model={saved_model}", f"--image={bogus}"],
      capture_output=True, text=True, timeout=120)
  assert result.returncode != 0
  assert str(bogus) in result.stderr and "not a readable image" in result.stderr
  assert not os.path.exists(tmp_path / "notes_panoptic.png")


def test_missing_image_names_the_path(tmp_path, saved_model):
  with pytest.raises(predict.PredictError, match="missing.jpg"):
    predict.run(saved_model, str(tmp_path / "missing.jpg"), None)


def test_folder_run_names_skipped_files_and_exits_3(tmp_path, saved_model):
  folder = tmp_path / "in"
  folder.mkdir()
  _image(folder / "good.png", "RGB")
  (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
  out = tmp_path / "out"
  result = subprocess.run(
      [sys.executable, "-m", "deeplab2_kmax.tools.predict",
       f"--saved_model={saved_model}", f"--input={folder}",
       f"--output_dir={out}", "--overlays"],
      capture_output=True, text=True, timeout=120)
  assert result.returncode == predict.EXIT_SKIPPED, result.stderr
  assert "corrupt.png" in result.stderr
  with open(out / "panoptic.json") as f:
    annotations = json.load(f)["annotations"]
  assert [a["file_name"] for a in annotations] == ["good.png"]
  assert (out / "panoptic" / "good.png").is_file()
  assert (out / "overlays" / "good.png").is_file()
