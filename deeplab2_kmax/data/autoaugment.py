"""Colour augmentation: the "simple classification" AutoAugment policy.

kMaX-DeepLab (paper §4, implementation details) trains with AutoAugment
(Cubuk et al., CVPR 2019) restricted to photometric operations, so labels are
untouched. Each image gets one sub-policy drawn uniformly; each of its two
operations fires with its probability. Magnitudes (0..10) map to PIL
enhancement factors `m / 10 * 1.8 + 0.1` and a solarize threshold
`m / 10 * 256`, as in DeepLab2.
"""

from typing import Tuple

import tensorflow as tf

_MAX_LEVEL = 10.0

# (operation, probability, magnitude) pairs, DeepLab2's policy table.
SIMPLE_CLASSIFICATION_POLICY = (
    (("Sharpness", 0.4, 7), ("Brightness", 0.2, 10)),
    (("Equalize", 0.0, 9), ("Contrast", 0.2, 10)),
    (("Sharpness", 0.2, 9), ("Color", 0.2, 9)),
    (("Solarize", 0.2, 7), ("Equalize", 0.6, 9)),
    (("Sharpness", 0.2, 1), ("Equalize", 0.2, 7)),
)


def _scale_magnitudes(policy, scale: float):
  return tuple(tuple((name, prob, magnitude * scale)
                     for name, prob, magnitude in ops) for ops in policy)


# Both our short names and DeepLab2's config names are accepted.
POLICIES = {
    "simple_classification": SIMPLE_CLASSIFICATION_POLICY,
    "simple_classification_policy": SIMPLE_CLASSIFICATION_POLICY,
    "simple_classification_policy_magnitude_scale_0.2": _scale_magnitudes(
        SIMPLE_CLASSIFICATION_POLICY, 0.2),
}


def blend(degenerate: tf.Tensor, image: tf.Tensor, factor) -> tf.Tensor:
  """PIL ImageEnhance blend: `degenerate + factor * (image - degenerate)`."""
  a = tf.cast(degenerate, tf.float32)
  b = tf.cast(image, tf.float32)
  out = a + tf.cast(factor, tf.float32) * (b - a)
  return tf.cast(tf.clip_by_value(tf.round(out), 0.0, 255.0), tf.uint8)


def _grayscale(image: tf.Tensor) -> tf.Tensor:
  """ITU-R 601 luma (as PIL's "L" mode), [H, W, 1] float32."""
  weights = tf.constant([0.299, 0.587, 0.114], tf.float32)
  return tf.reduce_sum(tf.cast(image, tf.float32) * weights, -1,
                       keepdims=True)


def color(image, factor):
  gray = tf.round(_grayscale(image))
  return blend(tf.tile(gray, [1, 1, 3]), image, factor)


def contrast(image, factor):
  mean = tf.round(tf.reduce_mean(tf.round(_grayscale(image))))
  return blend(tf.fill(tf.shape(image), mean), image, factor)


def brightness(image, factor):
  return blend(tf.zeros_like(image), image, factor)


def sharpness(image, factor):
  """Blends with a 3x3 smoothed copy (PIL SMOOTH kernel); borders unchanged."""
  kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32) / 13.0
  kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
  x = tf.cast(image, tf.float32)[None]
  smooth = tf.nn.depthwise_conv2d(x, kernel, [1, 1, 1, 1], "VALID")[0]
  smooth = tf.clip_by_value(tf.round(smooth), 0.0, 255.0)
  interior = tf.pad(tf.ones_like(smooth), [[1, 1], [1, 1], [0, 0]])
  degenerate = tf.pad(smooth, [[1, 1], [1, 1], [0, 0]])
  degenerate = tf.where(interior > 0, degenerate, tf.cast(image, tf.float32))
  return blend(degenerate, image, factor)


def solarize(image, threshold):
  return tf.where(image < threshold, image, 255 - image)


def equalize(image):
  """Per-channel histogram equalisation with PIL's rounding."""

  def channel(c):
    c = tf.cast(c, tf.int32)
    hist = tf.math.bincount(c, minlength=256, maxlength=256)
    nonzero = tf.gather(hist, tf.where(hist > 0)[:, 0])
    step = (tf.reduce_sum(nonzero) - nonzero[-1]) // 255
    lut = (tf.cumsum(hist) + step // 2) // tf.maximum(step, 1)
    lut = tf.clip_by_value(tf.concat([[0], lut[:-1]], 0), 0, 255)
    return tf.cond(step == 0, lambda: c, lambda: tf.gather(lut, c))

  channels = [channel(image[..., i]) for i in range(3)]
  return tf.cast(tf.stack(channels, -1), tf.uint8)


def _apply(name: str, image: tf.Tensor, magnitude: float) -> tf.Tensor:
  factor = magnitude / _MAX_LEVEL * 1.8 + 0.1
  if name == "Equalize":
    return equalize(image)
  if name == "Solarize":
    threshold = min(int(magnitude / _MAX_LEVEL * 256), 255)
    return solarize(image, tf.constant(threshold, tf.uint8))
  return {"Sharpness": sharpness, "Brightness": brightness,
          "Contrast": contrast, "Color": color}[name](image, factor)


def distort(image: tf.Tensor, policy_name: str, seed: tf.Tensor) -> tf.Tensor:
  """Applies one random sub-policy of `policy_name` to a uint8 [H, W, 3]."""
  if policy_name not in POLICIES:
    raise ValueError(f"Unknown autoaugment_policy {policy_name!r}; known: "
                     f"{sorted(POLICIES)}.")
  policy = POLICIES[policy_name]
  seeds = tf.random.experimental.stateless_split(seed, 2)
  choice = tf.random.stateless_uniform([], seeds[0], 0, len(policy), tf.int32)
  draws = tf.random.stateless_uniform([2], seeds[1])

  def sub_policy(ops: Tuple) -> callable:
    def run():
      out = image
      for i, (name, prob, magnitude) in enumerate(ops):
        out = tf.cond(draws[i] < prob,
                      lambda o=out, n=name, m=magnitude: _apply(n, o, m),
                      lambda o=out: o)
      return out
    return run

  return tf.switch_case(choice, [sub_policy(ops) for ops in policy])
