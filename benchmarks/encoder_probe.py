r"""Can a pixel encoder learn the synthetic things' shapes? A linear probe.

  python -m benchmarks.encoder_probe --data_dir=demo_output/data \
      [--encoder=resnet50 --width=0.25 --blocks=1,1,1,1] [--upsample=1] \
      [--endpoints=res2,res3,res4,res5] [--steps=600]

Trains the encoder (from scratch) together with a linear five-way classifier
that reads the encoder's endpoints average-pooled inside each ground-truth
thing mask, on the demo's training images (batch 8, Adam 1e-3, no
augmentation), and prints the classifier's accuracy on the validation
things (chance: 0.2) every 200 steps. It separates "the encoder cannot see
shape" from "the kMaX head does not learn classes" (docs/demo.md). Not a
test.
"""

import argparse
import glob
import os
import time

import numpy as np
import tensorflow as tf
import tf_keras

from deeplab2_kmax.data import synthetic
from deeplab2_kmax.data import tfrecord
from deeplab2_kmax.model import pixel_encoders

_MAX_THINGS = synthetic.MAX_THINGS
_FIRST_THING = 4  # Synthetic class ids 4..8 are the things.
_DIVISOR = 256


def _load(pattern: str, count: int):
  images, labels = [], []
  for record in tf.data.TFRecordDataset(sorted(glob.glob(pattern))).take(count):
    example = tfrecord.decode_example(record)
    images.append(example["image"].numpy())
    labels.append(np.squeeze(example["label"].numpy()))
  if not images:
    raise SystemExit(f"--data_dir: no records match {pattern}")
  return np.stack(images), np.stack(labels)


def _thing_masks(panoptic: np.ndarray):
  """[B, K, H, W] masks, [B, K] class index 0..4 and [B, K] validity."""
  batch = panoptic.shape[0]
  masks = np.zeros((batch, _MAX_THINGS) + panoptic.shape[1:], np.float32)
  classes = np.zeros((batch, _MAX_THINGS), np.int32)
  valid = np.zeros((batch, _MAX_THINGS), np.float32)
  for b in range(batch):
    ids = [i for i in np.unique(panoptic[b]) if i // _DIVISOR >= _FIRST_THING]
    for k, segment in enumerate(ids[:_MAX_THINGS]):
      masks[b, k] = panoptic[b] == segment
      classes[b, k] = segment // _DIVISOR - _FIRST_THING
      valid[b, k] = 1.0
  return masks, classes, valid


class _Probe:
  """Encoder + mask pooling + linear classifier."""

  def __init__(self, args):
    blocks = tuple(int(b) for b in args.blocks.split(",")) if args.blocks else None
    self.encoder = pixel_encoders.build_pixel_encoder(
        args.encoder, width_multiplier=args.width, blocks_per_stage=blocks,
        use_sync_batch_norm=False)
    self.head = tf_keras.layers.Dense(5)
    self.endpoints = args.endpoints.split(",")
    self.upsample = args.upsample
    self.optimizer = tf_keras.optimizers.Adam(1e-3)

  def logits(self, images, masks, training):
    x = tf.cast(images, tf.float32) / 127.5 - 1.0
    if self.upsample != 1:
      size = [int(round(d * self.upsample)) for d in x.shape[1:3]]
      x = tf.image.resize(x, size)
    endpoints = self.encoder(x, training=training)
    masks = tf.transpose(masks, [0, 2, 3, 1])
    pooled = []
    for name in self.endpoints:
      feature = endpoints[name]
      resized = tf.image.resize(masks, feature.shape[1:3], method="area")
      total = tf.einsum("bhwk,bhwc->bkc", resized, feature)
      area = tf.reduce_sum(resized, [1, 2])[..., None] + 1e-6
      pooled.append(total / area)
    return self.head(tf.concat(pooled, -1))

  @tf.function
  def train_step(self, images, masks, classes, valid):
    with tf.GradientTape() as tape:
      losses = tf_keras.losses.sparse_categorical_crossentropy(
          classes, self.logits(images, masks, True), from_logits=True)
      loss = tf.reduce_sum(losses * valid) / tf.reduce_sum(valid)
    variables = (self.encoder.trainable_variables +
                 self.head.trainable_variables)
    self.optimizer.apply_gradients(
        zip(tape.gradient(loss, variables), variables))
    return loss

  @tf.function
  def predict(self, images, masks):
    return tf.argmax(self.logits(images, masks, False), -1,
                     output_type=tf.int32)

  def accuracy(self, images, labels, batch: int = 20) -> float:
    right = total = 0.0
    for start in range(0, len(images), batch):
      masks, classes, valid = _thing_masks(labels[start:start + batch])
      predicted = self.predict(images[start:start + batch], masks).numpy()
      right += float(((predicted == classes) * valid).sum())
      total += float(valid.sum())
    return right / total


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--data_dir", required=True)
  parser.add_argument("--encoder", default="resnet50")
  parser.add_argument("--width", type=float, default=0.25)
  parser.add_argument("--blocks", default="1,1,1,1",
                      help="Blocks of stages 2..5 ('' for the variant's).")
  parser.add_argument("--upsample", type=float, default=1.0)
  parser.add_argument("--endpoints", default="res2,res3,res4,res5")
  parser.add_argument("--steps", type=int, default=600)
  args = parser.parse_args()
  tf.random.set_seed(0)
  train_images, train_labels = _load(
      os.path.join(args.data_dir, "train-*.tfrecord"), 2000)
  val_images, val_labels = _load(
      os.path.join(args.data_dir, "val-*.tfrecord"), 200)
  probe = _Probe(args)
  rng = np.random.default_rng(0)
  start = time.time()
  for step in range(1, args.steps + 1):
    index = rng.choice(len(train_images), 8, replace=False)
    masks, classes, valid = _thing_masks(train_labels[index])
    loss = probe.train_step(train_images[index], masks, classes, valid)
    if step % 200 == 0:
      print(f"step {step}  loss {float(loss):.3f}  "
            f"val accuracy {probe.accuracy(val_images, val_labels):.3f}  "
            f"train accuracy "
            f"{probe.accuracy(train_images[:200], train_labels[:200]):.3f}  "
            f"{time.time() - start:.0f} s", flush=True)


if __name__ == "__main__":
  main()
