"""The base of the pixel encoders: a chain of stages with named endpoints.

A subclass sets `endpoint_channels` ("stage1" .. "stage5" in computation
order) and `_activation_fn`, and implements `call_stage`, which runs one
stage alone (so each stage can also be fed a recorded input, e.g. in the
DeepLab2 parity tests).
"""

from typing import Dict
from typing import Sequence

import tf_keras


class StagedEncoder(tf_keras.layers.Layer):
  """Runs its stages in order; endpoints plus activated "res" copies."""

  endpoint_channels: Dict[str, int]

  @property
  def stage_names(self) -> Sequence[str]:
    """Endpoint names in computation order ("stage1" .. "stage5")."""
    return tuple(self.endpoint_channels)

  def call_stage(self, name: str, inputs, training=False):
    """Stage `name` alone: "stage1" on the normalised image, a later stage on
    the previous stage's (non-activated) output."""
    raise NotImplementedError

  def with_activated_copies(self, endpoints):
    """`endpoints` plus "res<k>" = activation("stage<k>") for each stage."""
    endpoints = dict(endpoints)
    for level, name in enumerate(self.stage_names, start=1):
      endpoints[f"res{level}"] = self._activation_fn(endpoints[name])
    return endpoints

  def call(self, inputs, training=False):
    endpoints = {}
    x = inputs
    for name in self.stage_names:
      x = endpoints[name] = self.call_stage(name, x, training=training)
    return self.with_activated_copies(endpoints)
