"""Whether the model may compute differently from DeepLab2 for speed.

The rewrites equal DeepLab2's operations up to float rounding but round in
another order: at inference, batch norms folded into kernels and attention
projections and the pixel decoder's LayerNorm in fewer passes
(`convolutions.fast_inference`); everywhere, GELU in the erf form that
TensorFlow's CPU graph rewrite fuses into a preceding matmul
(`activations`). Checks against DeepLab2's recorded outputs (the
stage-wise parity fixture, whose rule weights amplify a 1e-6 input change
about a thousandfold) compare the same operations in the same order: they
run inside `deeplab2_order_of_operations`.
"""

import contextlib

_ENABLED = [True]


@contextlib.contextmanager
def deeplab2_order_of_operations():
  """Inside, layers run DeepLab2's operations, without the rewrites.

  Read when a layer is called (or traced): a tf.function traced outside
  keeps the rewrites.
  """
  _ENABLED.append(False)
  try:
    yield
  finally:
    _ENABLED.pop()


def enabled() -> bool:
  """False inside `deeplab2_order_of_operations`, else True."""
  return _ENABLED[-1]
