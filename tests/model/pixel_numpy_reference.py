"""Small, loop-based NumPy references for the pixel-path layers."""

import numpy as np
from scipy import special

MAX_SPAN = 255


def batch_norm(x, gamma, beta, mean, variance, epsilon=1e-3):
  return (x - mean) / np.sqrt(variance + epsilon) * gamma + beta


def gelu(x):
  return 0.5 * x * (1.0 + special.erf(x / np.sqrt(2.0)))


def relu(x):
  return np.maximum(x, 0.0)


def softmax(x, axis=-1):
  e = np.exp(x - x.max(axis=axis, keepdims=True))
  return e / e.sum(axis=axis, keepdims=True)


def conv2d(x, kernel, stride=1, rate=1):
  """[B,H,W,C] x [k,k,C,D]; 'same' for stride 1, DeepLab symmetric pad else.

  `rate` is the dilation of the kernel taps.
  """
  # For odd k, 'same' (stride 1) and DeepLab's strided padding coincide.
  k = kernel.shape[0]
  span = (k - 1) * rate + 1
  begin = (span - 1) // 2
  end = span - 1 - begin
  x = np.pad(x, [(0, 0), (begin, end), (begin, end), (0, 0)])
  batch, height, width, _ = x.shape
  out_h = (height - span) // stride + 1
  out_w = (width - span) // stride + 1
  out = np.zeros([batch, out_h, out_w, kernel.shape[-1]])
  for i in range(out_h):
    for j in range(out_w):
      patch = x[:, i * stride:i * stride + span:rate,
                j * stride:j * stride + span:rate, :]
      out[:, i, j, :] = np.einsum("bhwc,hwcd->bd", patch, kernel)
  return out


def axial_attention_1d(x, qkv_kernel, query_rpe, key_rpe, value_rpe,
                       key_depth, value_depth, heads, bn_qkv, bn_similarity,
                       bn_retrieved, query_block=None, memory_flange=0):
  """Position-sensitive attention over [B, L, C], written pixel by pixel.

  bn_* are (gamma, beta, mean, variance) tuples broadcastable as in the
  layer: qkv [2K+V]; similarity [3, heads]; retrieved [2, heads, V/heads].
  With `query_block`, query o only sees keys within its block of
  `query_block` positions widened by `memory_flange` on both sides.
  """
  batch, length, _ = x.shape
  qkv = batch_norm(x @ qkv_kernel, *bn_qkv)
  q = qkv[..., :key_depth].reshape(batch, length, heads, -1)
  k = qkv[..., key_depth:2 * key_depth].reshape(batch, length, heads, -1)
  v = qkv[..., 2 * key_depth:].reshape(batch, length, heads, -1)
  sim_gamma, sim_beta, sim_mean, sim_var = bn_similarity
  ret_gamma, ret_beta, ret_mean, ret_var = bn_retrieved
  out = np.zeros([batch, length, heads, value_depth // heads])
  for b in range(batch):
    for h in range(heads):
      logits = np.zeros([length, length])
      for o in range(length):
        for p in range(length):
          row = np.clip(p - o + MAX_SPAN - 1, 0, 2 * MAX_SPAN - 2)
          terms = [q[b, o, h] @ k[b, p, h], q[b, o, h] @ query_rpe[row],
                   k[b, p, h] @ key_rpe[row]]
          logits[o, p] = sum(
              (terms[t] - sim_mean[t, h]) / np.sqrt(sim_var[t, h] + 1e-3) *
              sim_gamma[t, h] + sim_beta[t, h] for t in range(3))
      if query_block is not None:
        for o in range(length):
          start = (o // query_block) * query_block - memory_flange
          stop = start + query_block + 2 * memory_flange
          outside = (np.arange(length) < start) | (np.arange(length) >= stop)
          logits[o, outside] = -np.inf
      weights = softmax(logits)
      for o in range(length):
        content = sum(weights[o, p] * v[b, p, h] for p in range(length))
        position = sum(
            weights[o, p] * value_rpe[np.clip(p - o + MAX_SPAN - 1, 0, 508)]
            for p in range(length))
        out[b, o, h] = sum(
            batch_norm(term, ret_gamma[t, h], ret_beta[t, h], ret_mean[t, h],
                       ret_var[t, h])
            for t, term in enumerate([content, position]))
  return out.reshape(batch, length, value_depth)


def resize_bilinear_align_corners(x, size):
  """[B,H,W,C] -> [B,h,w,C], corners aligned."""
  _, height, width, _ = x.shape
  out_h, out_w = size

  def coords(n_in, n_out):
    if n_out == 1:
      return np.zeros(1)
    return np.arange(n_out) * (n_in - 1) / (n_out - 1)

  ys, xs = coords(height, out_h), coords(width, out_w)
  out = np.zeros([x.shape[0], out_h, out_w, x.shape[3]])
  for i, y in enumerate(ys):
    y0 = int(np.floor(y))
    y1 = min(y0 + 1, height - 1)
    wy = y - y0
    for j, xx in enumerate(xs):
      x0 = int(np.floor(xx))
      x1 = min(x0 + 1, width - 1)
      wx = xx - x0
      out[:, i, j] = ((1 - wy) * (1 - wx) * x[:, y0, x0] +
                      (1 - wy) * wx * x[:, y0, x1] +
                      wy * (1 - wx) * x[:, y1, x0] + wy * wx * x[:, y1, x1])
  return out


def layer_norm(x, gamma, beta, epsilon=1e-6):
  mean = x.mean(-1, keepdims=True)
  variance = x.var(-1, keepdims=True)
  return (x - mean) / np.sqrt(variance + epsilon) * gamma + beta
