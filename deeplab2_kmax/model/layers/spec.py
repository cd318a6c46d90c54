"""Hyperparameters shared by every layer of the model (no TensorFlow)."""

import dataclasses

from deeplab2_kmax.model import spec_checks

# How training may recompute activations (`recompute.py`): "none", or
# "blocks": every residual block of the pixel encoder and decoder and every
# kMaX layer.
RECOMPUTE_MODES = ("none", "blocks")


@dataclasses.dataclass(frozen=True)
class BatchNormSpec:
  """Every batch norm of the model (`convolutions.batch_norm_class`).

  Attributes:
    use_sync_batch_norm: Synchronised batch norm: statistics averaged over
      all replicas of a distribution strategy (equal to plain batch norm on
      one replica).
    momentum: Moving-average momentum (the Keras default).
    epsilon: Variance epsilon (the Keras default).
  """
  use_sync_batch_norm: bool = True
  momentum: float = 0.99
  epsilon: float = 1e-3

  def __post_init__(self):
    checks = spec_checks.Checks(self)
    checks.require(0.0 <= self.momentum <= 1.0, "momentum",
                   f"{self.momentum} is not in [0, 1]")
    checks.positive("epsilon")
    checks.raise_if_any()
