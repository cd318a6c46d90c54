"""The Cityscapes class table against cityscapesscripts' own `labels.py`."""

import pytest

from deeplab2_kmax.data import cityscapes_classes
from deeplab2_kmax.data import dataset_registry

labels = pytest.importorskip("cityscapesscripts.helpers.labels")


def test_rows_are_the_benchmarks_evaluated_classes_by_train_id():
  expected = sorted(
      (label.trainId, label.id, label.name, label.hasInstances,
       tuple(label.color))
      for label in labels.labels if 0 <= label.trainId < 255)
  assert list(cityscapes_classes.ROWS) == expected


def test_label_ids_round_trip_through_train_ids():
  to_label = cityscapes_classes.TRAIN_ID_TO_LABEL_ID
  assert [cityscapes_classes.LABEL_ID_TO_TRAIN_ID[label_id]
          for label_id in to_label] == list(range(len(to_label)))
  assert all(labels.id2label[label_id].trainId == train_id
             for train_id, label_id in enumerate(to_label))


def test_registry_takes_its_classes_from_the_table():
  info = dataset_registry.get("cityscapes_panoptic")
  assert info.num_classes == 19
  assert info.class_names == cityscapes_classes.NAMES
  assert info.class_has_instances == cityscapes_classes.HAS_INSTANCES
  assert info.colormap == cityscapes_classes.COLORMAP
  assert info.thing_class_ids == tuple(range(11, 19))
