"""Bilinear resize (align_corners) by gathers against TensorFlow's kernel."""

import numpy as np
import pytest
import tensorflow as tf

from deeplab2_kmax.model.layers import resized_fuse

# Up, down, odd, one-pixel and unchanged-axis cases.
SIZES = [((5, 7), (17, 25)), ((41, 41), (161, 161)), ((33, 20), (9, 7)),
         ((6, 6), (1, 4)), ((1, 3), (5, 3)), ((12, 9), (12, 30))]


def _kernel(x, size):
  return tf.raw_ops.ResizeBilinear(images=x, size=size, align_corners=True)


def _numpy_resize(x, size):
  """Textbook align-corners bilinear interpolation in float64."""
  def weights(n_in, n_out):
    pos = np.arange(n_out) * ((n_in - 1) / (n_out - 1) if n_out > 1 else 0)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    matrix = np.zeros((n_out, n_in))
    matrix[np.arange(n_out), lo] += 1 - (pos - lo)
    matrix[np.arange(n_out), hi] += pos - lo
    return matrix
  return np.einsum("yh,bhwc,xw->byxc", weights(x.shape[1], size[0]),
                   x.astype(np.float64), weights(x.shape[2], size[1]))


@pytest.mark.parametrize("in_size,out_size", SIZES)
def test_gathers_equal_the_kernel_bit_for_bit(in_size, out_size):
  x = np.random.default_rng(0).standard_normal(
      (2, *in_size, 3)).astype(np.float32)
  ours = resized_fuse.resize_by_gathers(tf.constant(x), out_size).numpy()
  np.testing.assert_array_equal(ours, _kernel(x, out_size).numpy())
  np.testing.assert_allclose(ours, _numpy_resize(x, out_size), atol=1e-5)


def test_xla_takes_the_gather_form():
  x = np.random.default_rng(1).standard_normal((1, 11, 13, 4)).astype(
      np.float32)
  resize = lambda t: resized_fuse.resize_bilinear_align_corners(t, (31, 40))
  compiled = tf.function(resize, jit_compile=True)
  ops = {op.type for op in compiled.get_concrete_function(
      tf.TensorSpec(x.shape)).graph.get_operations()}
  assert "ResizeBilinear" not in ops and "GatherV2" in ops
  plain = tf.function(resize).get_concrete_function(tf.TensorSpec(x.shape))
  assert "ResizeBilinear" in {op.type for op in plain.graph.get_operations()}
  np.testing.assert_allclose(compiled(x).numpy(), _kernel(x, (31, 40)).numpy(),
                             atol=1e-5)
