"""Predictor (SavedModel and config + checkpoint) and folder / video predict."""

import dataclasses
import json
import logging
import pathlib
import sys

from google.protobuf import text_format
import numpy as np
from panopticapi import evaluation as panoptic_evaluation
from panopticapi.utils import rgb2id
from PIL import Image
import pytest
import tensorflow as tf

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "trainer"))
import trainer_test_utils as utils  # pylint: disable=g-import-not-at-top,wrong-import-position

from deeplab2_kmax import Predictor  # pylint: disable=g-import-not-at-top,wrong-import-position
from deeplab2_kmax import PredictorError  # pylint: disable=g-import-not-at-top,wrong-import-position
from deeplab2_kmax import builders  # pylint: disable=g-import-not-at-top,wrong-import-position
from deeplab2_kmax import image_io  # pylint: disable=g-import-not-at-top,wrong-import-position
from deeplab2_kmax.data import dataset_registry  # pylint: disable=g-import-not-at-top,wrong-import-position
from deeplab2_kmax.tools import predict  # pylint: disable=g-import-not-at-top,wrong-import-position
from deeplab2_kmax.trainer import export_lib  # pylint: disable=g-import-not-at-top,wrong-import-position

SYNTHETIC = dataset_registry.get("synthetic_panoptic")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  """A tiny untrained model: its textproto, checkpoint and SavedModel.

  One kMaX layer and no auxiliary semantic decoder (inference does not use
  it) keep the export short. Every slot passes the class thresholds and no
  area limit applies, so even random weights give several segments.
  """
  root = tmp_path_factory.mktemp("predictor")
  config = utils.tiny_config(str(root / "no_data"))
  kmax = config.model_options.max_deeplab
  kmax.use_auxiliary_semantic_decoder = False
  kmax.transformer_decoder.num_blocks[:] = [1, 0, 0]
  utils.accept_every_segment(config)
  tf.keras.utils.set_random_seed(0)
  model = builders.build_model(config, crop_size=(64, 64))
  checkpoint = tf.train.Checkpoint(model=model).save(str(root / "ckpt"))
  config_file = root / "tiny.textproto"
  config_file.write_text(text_format.MessageToString(config))
  saved = str(root / "saved_model")
  export_lib.export_from_model(model, config, saved)
  return {"config_file": str(config_file), "checkpoint": checkpoint,
          "saved_model": saved,
          "predictor": Predictor.from_saved_model(saved)}


def _image(height=40, width=70, seed=0):
  rng = np.random.default_rng(seed)
  return rng.integers(0, 256, (height, width, 3)).astype(np.uint8)


def test_saved_model_and_config_give_the_same_prediction(exported, tmp_path):
  image = _image()
  served = exported["predictor"](image)
  built = Predictor.from_config(exported["config_file"],
                                exported["checkpoint"])(image)
  for field in ("panoptic", "semantic", "instance", "semantic_argmax",
                "cluster_assignments"):
    np.testing.assert_array_equal(getattr(served, field),
                                  getattr(built, field), err_msg=field)
  assert [(s["id"], s["area"]) for s in served.segments] == [
      (s["id"], s["area"]) for s in built.segments]
  np.testing.assert_allclose([s["score"] for s in served.segments],
                             [s["score"] for s in built.segments], atol=1e-6)
  # A path is read as the same picture.
  Image.fromarray(image).save(tmp_path / "image.png")
  from_path = exported["predictor"](str(tmp_path / "image.png"))
  np.testing.assert_array_equal(from_path.panoptic, served.panoptic)


def test_prediction_fields_agree_with_each_other(exported):
  result = exported["predictor"](_image(33, 51, seed=3))
  divisor = SYNTHETIC.panoptic_label_divisor
  assert result.dataset.name == "synthetic_panoptic"  # Recorded at export.
  for field in ("panoptic", "semantic", "instance", "semantic_argmax"):
    assert getattr(result, field).shape == (33, 51), field
  # Segments: every non-void panoptic id once, area = its pixel count.
  ids, counts = np.unique(result.panoptic, return_counts=True)
  expected = {int(i): int(c) for i, c in zip(ids, counts)
              if i // divisor != SYNTHETIC.ignore_label}
  assert len(expected) >= 2
  assert {s["id"]: s["area"] for s in result.segments} == expected
  for segment in result.segments:
    assert segment["category_id"] == segment["id"] // divisor
    assert segment["isthing"] == SYNTHETIC.class_has_instances[
        segment["category_id"]]
    assert 0.0 <= segment["score"] <= 1.0
  # panoptic = semantic * divisor + instance; stuff and void have instance 0.
  np.testing.assert_array_equal(
      result.panoptic, result.semantic * divisor + result.instance)
  assert np.all(result.instance < divisor) and np.all(result.instance >= 0)
  is_thing = np.asarray(SYNTHETIC.class_has_instances)[result.semantic]
  assert np.all(result.instance[~is_thing] == 0)
  rendered = result.render()
  assert rendered.shape == (33, 51, 3) and rendered.dtype == np.uint8
  layers = result.cluster_assignments.shape[0]
  assert result.render_clusters().shape == (33, layers * 51 + 4 * (layers - 1),
                                            3)
  with pytest.raises(dataclasses.FrozenInstanceError):
    result.panoptic = None
  with pytest.raises(ValueError, match="read-only"):
    result.panoptic[0, 0] = 1


def test_bad_inputs_are_named(exported, tmp_path):
  predictor = exported["predictor"]
  with pytest.raises(PredictorError, match=r"image: .*\[H, W, 3\].*\[40, 70\]"):
    predictor(np.zeros((40, 70), np.uint8))
  with pytest.raises(PredictorError, match=r"shape \[40, 70, 4\]"):
    predictor(np.zeros((40, 70, 4), np.uint8))
  with pytest.raises(PredictorError, match="uint8.*float32"):
    predictor(np.zeros((40, 70, 3), np.float32))
  with pytest.raises(image_io.ImageReadError, match="nothere.jpg"):
    predictor(str(tmp_path / "nothere.jpg"))
  with pytest.raises(PredictorError, match=f"{tmp_path}.*saved_model.pb"):
    Predictor.from_saved_model(str(tmp_path))
  with pytest.raises(PredictorError, match="ckpt-9.index"):
    Predictor.from_config(exported["config_file"], str(tmp_path / "ckpt-9"))
  # A config whose model has a second kMaX layer the checkpoint lacks.
  text = pathlib.Path(exported["config_file"]).read_text()
  bigger = tmp_path / "bigger.textproto"
  bigger.write_text(text.replace("num_blocks: 0\n", "num_blocks: 1\n", 1))
  assert bigger.read_text() != text
  with pytest.raises(PredictorError,
                     match=f"{exported['checkpoint']}: .*does not fit.*"
                     f"{bigger}.*kmax_layer_1"):
    Predictor.from_config(str(bigger), exported["checkpoint"])


def test_folder_skips_a_corrupt_file_and_writes_the_others(exported, tmp_path,
                                                           caplog):
  folder = tmp_path / "in"
  folder.mkdir()
  for index, size in enumerate([(24, 30), (41, 17)]):
    Image.fromarray(_image(*size, seed=index)).save(folder / f"im{index}.png")
  (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a JPEG")
  (folder / "notes.txt").write_text("not an image, not an image name")
  out = tmp_path / "out"
  with caplog.at_level(logging.WARNING):
    status = predict.run_input(exported["predictor"], str(folder), str(out),
                               overlays=True)
  assert status == predict.EXIT_SKIPPED != 0
  assert "broken.jpg" in caplog.text and "notes.txt" not in caplog.text

  with open(out / "panoptic.json") as f:
    written = json.load(f)
  assert [a["image_id"] for a in written["annotations"]] == ["im0", "im1"]
  categories = {c["id"]: c for c in written["categories"]}
  for annotation in written["annotations"]:
    ids = rgb2id(np.asarray(Image.open(out / "panoptic" /
                                       annotation["file_name"]), np.uint32))
    expected = exported["predictor"](str(folder / (annotation["image_id"] +
                                                   ".png")))
    assert ids.shape == expected.panoptic.shape
    present, counts = np.unique(ids[ids > 0], return_counts=True)
    segments = annotation["segments_info"]
    assert sorted(s["id"] for s in segments) == present.tolist()
    assert {s["id"]: s["area"] for s in segments} == dict(
        zip(present.tolist(), counts.tolist()))
    # The same partition as the Predictor's panoptic map, same categories.
    assert sorted((s["category_id"], s["area"]) for s in segments) == sorted(
        (s["category_id"], s["area"]) for s in expected.segments)
    for segment in segments:
      assert bool(categories[segment["category_id"]]["isthing"]) == (
          SYNTHETIC.class_has_instances[segment["category_id"]])
    overlay = np.asarray(Image.open(out / "overlays" /
                                    annotation["file_name"]))
    assert overlay.shape == ids.shape + (3,)
  # panopticapi reads the files: against themselves every segment matches.
  stat = panoptic_evaluation.pq_compute_single_core(
      0, [(a, a) for a in written["annotations"]], str(out / "panoptic"),
      str(out / "panoptic"), categories)
  result, _ = stat.pq_average(categories, isthing=None)
  assert result["pq"] == pytest.approx(1.0)
  assert not (out / "panoptic" / "broken.png").exists()


def test_video_gives_an_overlay_video_frame_by_frame(exported, tmp_path):
  import imageio.v2 as imageio  # pylint: disable=g-import-not-at-top

  video = str(tmp_path / "clip.mp4")
  writer = imageio.get_writer(video, format="FFMPEG", fps=5,
                              macro_block_size=1)
  for seed in range(3):
    writer.append_data(_image(32, 48, seed=seed))
  writer.close()
  out = tmp_path / "out"
  assert predict.run_input(exported["predictor"], video, str(out),
                           video_frames=True) == 0
  reader = imageio.get_reader(str(out / "clip_overlay.mp4"), format="FFMPEG")
  frames = [frame for frame in reader]  # list() asks len(): infinite.
  reader.close()
  assert len(frames) == 3
  assert all(frame.shape == (32, 48, 3) for frame in frames)
  with open(out / "panoptic.json") as f:
    names = [a["file_name"] for a in json.load(f)["annotations"]]
  assert names == [f"clip_{i:06d}.png" for i in range(3)]
