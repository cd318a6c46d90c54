"""Activation recomputation ("gradient checkpointing") of residual blocks.

Chen et al., "Training Deep Nets with Sublinear Memory Cost", 2016. With
`recompute="blocks"` each residual block of the pixel encoder and decoder
and each kMaX layer keeps only its inputs for the backward pass; its inner
activations are computed again there (`tf.recompute_grad`), one more forward
pass per block in exchange for activation memory. Inference is unchanged.

Two things of a block's forward pass must not happen twice:
* Batch-norm moving averages. The recomputation runs batch norm in training
  mode on the same inputs, hence with the same batch statistics (so the
  activations and gradients are those of the first pass), but with its
  moving-average updates off: the batch-norm classes of
  `convolutions.batch_norm_class` skip their updates while
  `updates_frozen()` is true.
* Random draws (drop path). The block draws its masks before the recomputed
  function and passes them in as inputs, so both passes use the same draw.
"""

import contextlib
import threading
from typing import Callable

import tensorflow as tf
import tf_keras

from deeplab2_kmax.model.layers import spec

MODES = spec.RECOMPUTE_MODES

# Per thread: a mirrored strategy traces each replica in its own thread.
_state = threading.local()


def updates_frozen() -> bool:
  """True while a block's forward pass is being recomputed."""
  return getattr(_state, "frozen", False)


@contextlib.contextmanager
def _frozen_updates():
  previous = updates_frozen()
  _state.frozen = True
  try:
    yield
  finally:
    _state.frozen = previous


_BATCH_NORMS = (tf_keras.layers.BatchNormalization,
                tf_keras.layers.experimental.SyncBatchNormalization)


def _check_batch_norms(layer: tf_keras.layers.Layer):
  for sublayer in layer.submodules:
    if isinstance(sublayer, _BATCH_NORMS) and not getattr(
        sublayer, "skips_updates_when_recomputed", False):
      raise ValueError(
          f"{layer.name}: recompute needs batch norms from "
          f"convolutions.batch_norm_class; {sublayer.name} is a "
          f"{type(sublayer).__name__}, whose moving averages would be "
          "updated twice.")


def recomputed_call(layer: tf_keras.layers.Layer, forward: Callable,
                    *tensors: tf.Tensor):
  """`forward(*tensors)`, its activations recomputed in the backward pass.

  `forward` must be deterministic given `tensors` (random draws are made by
  the caller and passed in) and take tensors only. Its first call is the
  forward pass; every later one (a gradient) is a recomputation and runs
  with batch-norm updates frozen.
  """
  _check_batch_norms(layer)
  calls = []

  def run(*args):
    if calls:
      with _frozen_updates():
        return forward(*args)
    calls.append(None)
    return forward(*args)

  return tf.recompute_grad(run)(*tensors)
