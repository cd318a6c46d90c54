r"""Which features of a trained demo model know the things' shapes?

  python -m benchmarks.frozen_probe --checkpoint=demo_output/model/ckpt-1500 \
      [--config=configs/synthetic/kmax_tiny_r50_os32.textproto] \
      [--num_train=1000] [--num_val=200]

Runs the trained (frozen) encoder and pixel decoder on synthetic images
(regenerated from the data seed, no records needed), averages each feature
map inside every ground-truth thing mask, and fits a linear five-way
classifier (multinomial logistic regression, standardised inputs, L2) per
feature map on the training things; prints its accuracy on the training and
validation things (chance 0.2). `benchmarks.encoder_probe` trains an encoder
*for* this classifier; this asks what the kMaX losses taught the features.
docs/demo.md reports its output. Not a test.
"""

import argparse

import numpy as np
import tensorflow as tf

from deeplab2_kmax import builders
from deeplab2_kmax import config_loader
from deeplab2_kmax.data import synthetic

_DEFAULT_CONFIG = "configs/synthetic/kmax_tiny_r50_os32.textproto"
_FIRST_THING = 4  # Synthetic class ids 4..8 are the things.
_NUM_THINGS = 5
_BATCH = 16


def _pooled_features(features_fn, seed: int, split: str, count: int):
  """{feature name: [T, C]} mask-averaged features and [T] class indices."""
  pooled, classes = {}, []
  divisor = synthetic.INFO.panoptic_label_divisor
  for start in range(0, count, _BATCH):
    samples = [synthetic.generate(seed, split, i)
               for i in range(start, min(start + _BATCH, count))]
    features = {name: value.numpy() for name, value in features_fn(
        tf.constant(np.stack([s.image for s in samples]))).items()}
    for j, sample in enumerate(samples):
      for segment in np.unique(sample.panoptic):
        if segment // divisor < _FIRST_THING:
          continue
        mask = (sample.panoptic == segment).astype(np.float32)
        classes.append(segment // divisor - _FIRST_THING)
        for name, feature in features.items():
          size = feature.shape[1]
          stride = mask.shape[0] // size
          cover = mask.reshape(size, stride, size, stride).mean((1, 3))
          pooled.setdefault(name, []).append(
              np.einsum("hw,hwc->c", cover, feature[j]) /
              (cover.sum() + 1e-6))
  return {k: np.stack(v) for k, v in pooled.items()}, np.array(classes)


def fit_softmax_regression(x: np.ndarray, y: np.ndarray, num_classes: int,
                           l2: float = 1e-3, steps: int = 500,
                           learning_rate: float = 0.5) -> np.ndarray:
  """Weights [C + 1, K] of an L2-regularised multinomial logistic regression.

  Full-batch gradient descent on the mean cross-entropy; `x` standardised
  by the caller; the last weight row is the bias.
  """
  inputs = np.concatenate([x, np.ones((len(x), 1))], 1)
  targets = np.eye(num_classes)[y]
  weights = np.zeros((inputs.shape[1], num_classes))
  for _ in range(steps):
    logits = inputs @ weights
    logits -= logits.max(1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(1, keepdims=True)
    gradient = inputs.T @ (probs - targets) / len(x) + l2 * weights
    weights -= learning_rate * gradient
  return weights


def _accuracy(weights, x, y) -> float:
  inputs = np.concatenate([x, np.ones((len(x), 1))], 1)
  return float(np.mean(np.argmax(inputs @ weights, 1) == y))


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--checkpoint", required=True)
  parser.add_argument("--config", default=_DEFAULT_CONFIG)
  parser.add_argument("--num_train", type=int, default=1000)
  parser.add_argument("--num_val", type=int, default=200)
  parser.add_argument("--data_seed", type=int, default=0,
                      help="the seed the demo's data were built with")
  args = parser.parse_args()
  config = config_loader.load_config(args.config, {"DATA_DIR": "unused"})
  size = (synthetic.IMAGE_SIZE, synthetic.IMAGE_SIZE)
  model = builders.build_model(config, crop_size=size)
  tf.train.Checkpoint(model=model).read(args.checkpoint).expect_partial()

  @tf.function
  def features_fn(images):
    x = tf.cast(images, tf.float32) / 127.5 - 1.0
    endpoints = model.encoder(x, training=False)
    decoded = model.pixel_decoder(endpoints, training=False)
    named = {f"encoder/{k}": v for k, v in endpoints.items()
             if k.startswith("stage")}
    named.update({f"pixel_decoder/{k}": v for k, v in decoded.items()})
    return named

  train_x, train_y = _pooled_features(features_fn, args.data_seed, "train",
                                      args.num_train)
  val_x, val_y = _pooled_features(features_fn, args.data_seed, "val",
                                  args.num_val)
  print(f"{len(train_y)} training things, {len(val_y)} validation things; "
        f"chance {1 / _NUM_THINGS:.2f}")
  for name in sorted(train_x):
    mean, std = train_x[name].mean(0), train_x[name].std(0) + 1e-6
    weights = fit_softmax_regression((train_x[name] - mean) / std, train_y,
                                     _NUM_THINGS)
    print(f"{name:30s} channels {train_x[name].shape[1]:4d}  "
          f"train {_accuracy(weights, (train_x[name] - mean) / std, train_y):.2f}"
          f"  val {_accuracy(weights, (val_x[name] - mean) / std, val_y):.2f}",
          flush=True)


if __name__ == "__main__":
  main()
