"""Colour operations against PIL (the tool AutoAugment was defined with)."""

import numpy as np
from PIL import Image
from PIL import ImageEnhance
from PIL import ImageOps
import pytest
import tensorflow as tf

from deeplab2_kmax.data import autoaugment


@pytest.fixture(scope="module")
def image():
  rng = np.random.default_rng(0)
  base = rng.integers(30, 200, (1, 1, 3))
  noise = rng.integers(-30, 31, (24, 20, 3))
  return np.clip(base + noise + np.arange(20)[None, :, None] * 2, 0,
                 255).astype(np.uint8)


@pytest.mark.parametrize("op,enhancer", [
    (autoaugment.color, ImageEnhance.Color),
    (autoaugment.contrast, ImageEnhance.Contrast),
    (autoaugment.brightness, ImageEnhance.Brightness),
    (autoaugment.sharpness, ImageEnhance.Sharpness),
])
@pytest.mark.parametrize("factor", [0.46, 1.0, 1.9])
def test_enhance_ops_match_pil(image, op, enhancer, factor):
  expected = np.asarray(enhancer(Image.fromarray(image)).enhance(factor))
  actual = op(tf.constant(image), factor).numpy()
  diff = np.abs(actual.astype(int) - expected.astype(int))
  assert diff.max() <= 2 and diff.mean() < 0.6


def test_equalize_matches_pil(image):
  expected = np.asarray(ImageOps.equalize(Image.fromarray(image)))
  np.testing.assert_array_equal(autoaugment.equalize(tf.constant(image)),
                                expected)


def test_solarize_matches_pil(image):
  expected = np.asarray(ImageOps.solarize(Image.fromarray(image), 179))
  np.testing.assert_array_equal(
      autoaugment.solarize(tf.constant(image), tf.constant(179, tf.uint8)),
      expected)


def test_distort_is_seeded_and_applies_some_policy(image):
  outputs = []
  for s in range(12):
    seed = tf.constant([s, 3], tf.int64)
    first = autoaugment.distort(tf.constant(image), "simple_classification",
                                seed).numpy()
    again = autoaugment.distort(tf.constant(image), "simple_classification",
                                seed).numpy()
    np.testing.assert_array_equal(first, again)
    assert first.shape == image.shape and first.dtype == np.uint8
    outputs.append(first)
  assert any(np.array_equal(o, image) for o in outputs)
  assert any(not np.array_equal(o, image) for o in outputs)


def test_unknown_policy_is_named():
  with pytest.raises(ValueError, match="nope"):
    autoaugment.distort(tf.zeros([4, 4, 3], tf.uint8), "nope",
                        tf.constant([0, 0], tf.int64))
