"""End-to-end input pipeline on a tiny synthetic TFRecord set."""

import os

import numpy as np
import pytest

from deeplab2_kmax import common
from deeplab2_kmax.data import build_synthetic_data
from deeplab2_kmax.data import dataset_registry
from deeplab2_kmax.data import input_pipeline
from deeplab2_kmax.data import synthetic

INFO = dataset_registry.get("synthetic_panoptic")
SEED = 11


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("synthetic"))
  build_synthetic_data.build(out, num_train=8, num_val=3, seed=SEED,
                             num_shards=2, progress=False)
  return out


def _train(data_dir, seed, copy_paste=True, batches=3):
  options = input_pipeline.PipelineOptions(
      batch_size=4, crop_size=(96, 112), min_scale_factor=0.5,
      max_scale_factor=1.5, scale_factor_step=0.25,
      autoaugment_policy="simple_classification", copy_paste=copy_paste,
      max_thing_id=40)
  ds = input_pipeline.build_dataset(
      INFO, os.path.join(data_dir, "train-*"), options, is_training=True,
      seed=seed)
  return [{k: v.numpy() for k, v in b.items()} for b in ds.take(batches)]


@pytest.fixture(scope="module")
def batches(data_dir):
  return _train(data_dir, 1)


def test_training_batches_are_deterministic_given_a_seed(data_dir, batches):
  first, again, other = batches, _train(data_dir, 1), _train(data_dir, 2)
  for a, b in zip(first, again):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  assert not np.array_equal(first[0][common.IMAGE], other[0][common.IMAGE])


def test_training_targets_are_consistent(batches):
  for batch in batches:
    image = batch[common.IMAGE]
    assert image.shape == (4, 96, 112, 3) and image.dtype == np.float32
    assert image.min() >= 0 and image.max() <= 255
    for i in range(4):
      panoptic = batch[common.GT_PANOPTIC_KEY][i]
      semantic = batch[common.GT_SEMANTIC_KEY][i]
      thing_ids = batch[common.GT_THING_ID_MASK_KEY][i]
      classes = batch[common.GT_THING_ID_CLASS_KEY][i]
      np.testing.assert_array_equal(semantic, panoptic // 256)
      num_things = int(np.sum(classes >= 0))
      assert np.all(classes[num_things:] == -1)
      assert set(np.unique(thing_ids)) - {-1} == set(range(num_things))
      for thing in range(num_things):
        values = np.unique(panoptic[thing_ids == thing])
        assert len(values) == 1 and values[0] // 256 == classes[thing]
      is_instance = (np.isin(semantic, INFO.thing_class_ids) &
                     (panoptic % 256 > 0))
      np.testing.assert_array_equal(thing_ids >= 0, is_instance)
      np.testing.assert_array_equal(batch[common.SEMANTIC_LOSS_WEIGHT_KEY][i],
                                    1.0)


def test_copy_paste_adds_mirrored_instances(data_dir, batches):
  instances = np.concatenate([
      (b[common.GT_PANOPTIC_KEY] % 256).ravel() for b in batches])
  assert np.any(instances >= 128)  # Pasted (mirrored) ids.
  assert np.any((instances > 0) & (instances < 128))  # Canvas ids.
  without = np.concatenate([
      (b[common.GT_PANOPTIC_KEY] % 256).ravel()
      for b in _train(data_dir, 1, copy_paste=False)])
  assert not np.any(without >= 128)


def test_eval_keeps_raw_panoptic_and_size(data_dir):
  ds = input_pipeline.build_dataset(
      INFO, os.path.join(data_dir, "val-*"),
      input_pipeline.PipelineOptions(batch_size=2, crop_size=(136, 136),
                                     max_thing_id=16),
      is_training=False)
  names = []
  for batch in ds:
    for i, name in enumerate(batch[common.IMAGE_NAME].numpy()):
      name = name.decode()
      names.append(name)
      sample = synthetic.generate(SEED, "val", int(name.split("_")[1]))
      np.testing.assert_array_equal(batch[common.GT_SIZE_RAW][i], [128, 128])
      np.testing.assert_array_equal(batch[common.GT_PANOPTIC_RAW][i],
                                    sample.panoptic)
      image = batch[common.IMAGE][i].numpy()
      np.testing.assert_array_equal(image[:128, :128], sample.image)
      assert np.all(image[128:] == 127.5)
      np.testing.assert_array_equal(
          batch[common.GT_PANOPTIC_KEY][i][:128, :128], sample.panoptic)
      assert np.all(batch[common.GT_PANOPTIC_KEY][i][128:] == 0)
  assert names == ["val_000000", "val_000001", "val_000002"]


def test_validate_records_names_a_corrupt_file(data_dir, tmp_path):
  assert input_pipeline.validate_records(
      os.path.join(data_dir, "val-*")) == 3
  with open(os.path.join(data_dir, "val-00000-of-00002.tfrecord"),
            "rb") as f:
    data = f.read()
  broken = str(tmp_path / "broken.tfrecord")
  with open(broken, "wb") as f:
    f.write(data[:len(data) // 2])
  with pytest.raises(ValueError, match="broken.tfrecord"):
    input_pipeline.validate_records(broken)
