r"""Mask-wise merging and bilinear resize, old and new forms (not a test).

  python -m benchmarks.bench_post_processing [--crop_size=641,641] \
      [--num_slots=128] [--repeats=7]

COCO-sized post-processing (mask logits at os4 of the crop, 133 classes):
the slot-by-slot paste loop vs the pairwise-overlap form, with and without
XLA, and the bilinear resize of the mask logits to the crop with
TensorFlow's kernel vs row/column gathers. Checks that each pair returns the
same panoptic map. Figures in docs/performance.md.
"""

import argparse

import numpy as np
import tensorflow as tf

from benchmarks import harness
from deeplab2_kmax import common
from deeplab2_kmax.model.layers import resized_fuse
from deeplab2_kmax.post_processing import max_deeplab


class _SlotBySlot(max_deeplab.MaskWiseMerging):
  """The merging with the direct paste loop at every threshold."""

  def _paste_by_pair_counts(self, probs, order, confident):
    return self._paste_slot_by_slot(probs, order, confident)


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--crop_size", default="641,641")
  parser.add_argument("--num_slots", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=7)
  args = parser.parse_args()
  crop = tuple(int(v) for v in args.crop_size.split(","))
  low = tuple((n - 1) // 4 + 1 for n in crop)
  rng = np.random.default_rng(0)
  outputs = {
      common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY: tf.constant(
          4 * rng.standard_normal((1, *low, args.num_slots)), tf.float32),
      common.PRED_TRANSFORMER_CLASS_LOGITS_KEY: tf.constant(
          4 * rng.standard_normal((1, args.num_slots, 134)), tf.float32)}
  # Class thresholds 0: every slot takes part in the paste decisions.
  settings = dict(thing_class_ids=list(range(80)),
                  stuff_class_ids=list(range(80, 133)), label_divisor=1000,
                  void_label=255,
                  transformer_class_confidence_threshold_thing=0.0,
                  transformer_class_confidence_threshold_stuff=0.0)
  sync = lambda r: r[common.PRED_PANOPTIC_KEY].numpy()
  print(f"mask logits {low} x {args.num_slots} -> {crop}")
  for jit in (False, True):
    maps = {}
    for name, merging in (("slot by slot", _SlotBySlot(**settings)),
                          ("pair counts", max_deeplab.MaskWiseMerging(
                              **settings))):
      fn = tf.function(lambda o, m=merging: m(o, crop), jit_compile=jit)
      timing = harness.time_call(lambda fn=fn: fn(outputs),
                                 repeats=args.repeats, sync=sync)
      maps[name] = sync(fn(outputs))
      print(f"merging, {name:12s} XLA={jit!s:5s}: "
            f"{timing.median_s * 1e3:7.1f} ms ({timing.spread})", flush=True)
    same = np.mean(maps["slot by slot"] == maps["pair counts"])
    print(f"  same panoptic map on {100 * same:.2f}% of pixels, "
          f"{len(np.unique(maps['pair counts']))} segments")

  logits = outputs[common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY]
  for jit in (False, True):
    for name, resize in (
        ("TF kernel", lambda x: tf.raw_ops.ResizeBilinear(
            images=x, size=crop, align_corners=True)),
        ("gathers", lambda x: resized_fuse.resize_by_gathers(x, crop))):
      fn = tf.function(lambda x, r=resize: tf.reduce_max(r(x), -1),
                       jit_compile=jit)
      timing = harness.time_call(lambda fn=fn: fn(logits),
                                 repeats=args.repeats, sync=lambda r: r.numpy())
      print(f"resize, {name:9s} XLA={jit!s:5s}: "
            f"{timing.median_s * 1e3:7.1f} ms ({timing.spread})", flush=True)


if __name__ == "__main__":
  main()
