"""Atrous convolutions on small maps skip the taps that only read padding."""

import numpy as np
import pytest
import tensorflow as tf

from deeplab2_kmax.model.layers import convolutions


def _numpy_same_dilated_conv(x, kernel, rate):
  """Direct 'same'-padded dilated convolution (odd kernel), NumPy float64."""
  batch, height, width, _ = x.shape
  size = kernel.shape[0]
  centre = size // 2
  out = np.zeros((batch, height, width, kernel.shape[-1]))
  for i in range(size):
    for j in range(size):
      dy, dx = (i - centre) * rate, (j - centre) * rate
      if abs(dy) >= height or abs(dx) >= width:
        continue  # The tap reads only padding.
      shifted = np.zeros_like(x)
      ys = slice(max(0, -dy), min(height, height - dy))
      xs = slice(max(0, -dx), min(width, width - dx))
      yt = slice(max(0, dy), min(height, height + dy))
      xt = slice(max(0, dx), min(width, width + dx))
      shifted[:, ys, xs] = x[:, yt, xt]
      out += np.einsum("bhwc,cd->bhwd", shifted, kernel[i, j])
  return out


@pytest.mark.parametrize("shape,rate", [((4, 4), 6), ((4, 4), 3), ((11, 11), 12),
                                        ((11, 7), 6), ((3, 9), 2), ((9, 9), 2)])
def test_atrous_conv_equals_the_full_dilated_conv(shape, rate):
  layer = convolutions.Conv2DBN(5, 3, name="conv", atrous_rate=rate,
                                use_bn=False, use_bias=True)
  x = tf.random.stateless_normal([2, *shape, 4], seed=[1, rate])
  layer(x)
  layer._conv.bias.assign(tf.random.stateless_normal([5], seed=[2, 0]))
  with tf.GradientTape() as tape:
    y = layer(x)
    loss = tf.reduce_sum(y * tf.cos(y))
  grad_kernel, grad_bias = tape.gradient(
      loss, [layer._conv.kernel, layer._conv.bias])
  kernel = layer._conv.kernel.numpy().astype(np.float64)
  expected = _numpy_same_dilated_conv(x.numpy().astype(np.float64), kernel,
                                      rate) + layer._conv.bias.numpy()
  np.testing.assert_allclose(y.numpy(), expected, rtol=1e-5, atol=1e-5)
  # Gradients equal those of the full-kernel convolution (dead taps get 0).
  with tf.GradientTape() as tape:
    full = layer._conv(x)
    full_loss = tf.reduce_sum(full * tf.cos(full))
  full_grads = tape.gradient(full_loss, [layer._conv.kernel, layer._conv.bias])
  np.testing.assert_allclose(grad_kernel.numpy(), full_grads[0].numpy(),
                             rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(grad_bias.numpy(), full_grads[1].numpy(),
                             rtol=1e-4, atol=1e-4)


def test_live_taps():
  # 3x3 at rate 6 on 4 pixels: only the centre; on 7 pixels: all three.
  assert convolutions._live_taps(3, 6, 4) == slice(1, 2)
  assert convolutions._live_taps(3, 6, 7) == slice(0, 3)
  assert convolutions._live_taps(5, 2, 4) == slice(1, 4)
  assert convolutions._live_taps(3, 2, None) == slice(0, 3)
