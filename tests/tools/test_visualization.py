"""Tests for the panoptic and cluster-assignment renderings."""

import numpy as np

from deeplab2_kmax import visualization


def test_cluster_assignment_is_the_argmax_over_centres():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(5, 7, 6))
  assignment = visualization.cluster_assignment(logits)
  for i in range(5):
    for j in range(7):
      assert assignment[i, j] == max(range(6), key=lambda n: logits[i, j, n])


def test_each_centre_gets_its_own_colour():
  palette = visualization.cluster_palette(128)
  assert palette.shape == (128, 3) and palette.dtype == np.uint8
  assert len({tuple(c) for c in palette}) == 128


def test_panel_pixels_identify_the_assigned_centre():
  rng = np.random.default_rng(1)
  layers = [rng.normal(size=(4, 4, 8)) for _ in range(3)]
  strip = visualization.cluster_panels(layers, output_size=(8, 8))
  gap = 4
  assert strip.shape == (8, 3 * 8 + 2 * gap, 3)
  palette = visualization.cluster_palette(8)
  for k, logits in enumerate(layers):
    panel = strip[:, k * (8 + gap):k * (8 + gap) + 8]
    expected = np.argmax(logits, -1).repeat(2, 0).repeat(2, 1)
    np.testing.assert_array_equal(panel, palette[expected])


def test_colorize_panoptic_separates_instances_and_blanks_void():
  divisor = 256
  panoptic = np.array([[5 * divisor + 1, 5 * divisor + 2],
                       [0, 2 * divisor]])
  colormap = [(10 * i, 20, 30) for i in range(9)]
  rgb = visualization.colorize_panoptic(panoptic, divisor, colormap, ignore_label=0)
  assert tuple(rgb[1, 0]) == (0, 0, 0)
  assert tuple(rgb[1, 1]) == colormap[2]
  assert tuple(rgb[0, 0]) != tuple(rgb[0, 1])


def test_segment_boundaries_mark_label_changes():
  panoptic = np.array([[1, 1, 2], [1, 1, 2], [3, 3, 3]])
  edges = visualization.segment_boundaries(panoptic)
  expected = np.array([[0, 1, 0], [1, 1, 1], [0, 0, 0]], dtype=bool)
  np.testing.assert_array_equal(edges, expected)
