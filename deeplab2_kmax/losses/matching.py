"""Hungarian matching between ground-truth masks and mask slots.

MaX-DeepLab's PQ-style loss ("Mask matching") assigns each ground-truth mask the
predicted mask slot that maximises the total similarity, one slot per mask;
kMaX-DeepLab (§4.1, "Training and testing") matches on the final output only.
The implementations are registered by name in `MATCHING_IMPLEMENTATIONS`
(`matching_registry`), which is also the list of names a config may use:
  * "scipy": `scipy.optimize.linear_sum_assignment` on the host through
    `tf.numpy_function` (fast on CPU/GPU; not usable on TPU or inside XLA);
  * "tensorflow": an in-graph O(n^3) Hungarian algorithm (shortest augmenting
    paths with potentials) in pure TensorFlow, usable under `tf.function`,
    XLA and TPU;
  * "auto": "scipy", or "tensorflow" under a TPU strategy.
All return the same optimal assignment. Adding one is a function here with
the signature of `scipy_matching` and a line in the registry.

Costs are [B, M, N] with M ground-truth rows (padded ones masked out by
`valid_rows`) and N slots; both return a 0/1 matrix [B, M, N] with at most
one 1 per row and column, matching every valid row when M_valid <= N.

The host matcher rejects a NaN/Inf cost of a valid row with the library's
`NonFiniteLossError` (SciPy's own "invalid numeric entries" would not say
where it came from). Inside `tf.numpy_function` that error reaches Python as
a TensorFlow error whose message holds `NON_FINITE_COST`; the trainer turns
it back into `NonFiniteLossError` (`KMaXTrainer.train`).
"""

import numpy as np
from scipy import optimize
import tensorflow as tf

from deeplab2_kmax.losses.matching_registry import MATCHING_IMPLEMENTATIONS
from deeplab2_kmax.trainer import checkpoint_guard

# In the matcher's error message, so the host can recognise it in a TF error.
NON_FINITE_COST = "non-finite Hungarian matching cost"


def _scipy_one(cost: np.ndarray, valid: np.ndarray) -> np.ndarray:
  permutation = np.zeros(cost.shape, np.float32)
  rows = np.flatnonzero(valid)
  if rows.size:
    row_idx, col_idx = optimize.linear_sum_assignment(cost[rows])
    permutation[rows[row_idx], col_idx] = 1.0
  return permutation


def check_finite_cost(cost: np.ndarray, valid: np.ndarray):
  """Raises NonFiniteLossError if a valid row of cost [B, M, N] is NaN/Inf."""
  bad = ~np.isfinite(cost) & valid[:, :, np.newaxis]
  if bad.any():
    images = sorted(set(np.nonzero(bad)[0].tolist()))
    raise checkpoint_guard.NonFiniteLossError(
        f"{NON_FINITE_COST}: {int(bad.sum())} of {bad.size} entries are "
        f"NaN/Inf (batch images {images}); the model outputs went "
        "non-finite")


def _scipy_batch(cost: np.ndarray, valid: np.ndarray) -> np.ndarray:
  check_finite_cost(cost, valid)
  return np.stack([_scipy_one(c.astype(np.float64), v)
                   for c, v in zip(cost, valid)]).astype(np.float32)


def scipy_matching(cost: tf.Tensor, valid_rows: tf.Tensor) -> tf.Tensor:
  """Host matching; cost [B, M, N] float, valid_rows [B, M] bool."""
  permutation = tf.numpy_function(_scipy_batch, [cost, valid_rows], tf.float32,
                                  stateful=False)
  return tf.ensure_shape(permutation, cost.shape)


def _hungarian_square(cost: tf.Tensor) -> tf.Tensor:
  """Min-cost perfect matching of a square [n, n] float64 cost; row -> col.

  The classic shortest-augmenting-path algorithm with row/column potentials
  (Jonker-Volgenant style), written with tf.while_loop so it traces once.
  Dynamic reads use tf.gather: under XLA, `x[k]` inside the loops made the
  loop state, and so the cost itself, compile-time constants, which
  recompiled the program for every new cost.
  """
  n = cost.shape[0]
  inf = tf.constant(np.inf, tf.float64)
  # Index 0 is a virtual column; columns 1..n are real.
  u0 = tf.zeros([n + 1], tf.float64)
  v0 = tf.zeros([n + 1], tf.float64)
  p0 = tf.zeros([n + 1], tf.int32)  # p[j]: row matched to column j (1-based).
  padded = tf.pad(cost, [[1, 0], [1, 0]])

  def add_row(i, u, v, p):
    p = tf.tensor_scatter_nd_update(p, [[0]], [i])
    minv = tf.fill([n + 1], inf)
    used = tf.zeros([n + 1], tf.bool)
    way = tf.zeros([n + 1], tf.int32)

    def search_cond(j0, u, v, p, minv, used, way):
      return tf.not_equal(tf.gather(p, j0), 0)

    def search_body(j0, u, v, p, minv, used, way):
      used = tf.tensor_scatter_nd_update(used, [[j0]], [True])
      i0 = tf.gather(p, j0)
      current = tf.gather(padded, i0) - tf.gather(u, i0) - v
      better = tf.logical_and(tf.logical_not(used), current < minv)
      minv = tf.where(better, current, minv)
      way = tf.where(better, tf.fill([n + 1], j0), way)
      masked = tf.where(used, tf.fill([n + 1], inf), minv)
      masked = tf.tensor_scatter_nd_update(masked, [[0]], [inf])
      j1 = tf.cast(tf.argmin(masked), tf.int32)
      delta = tf.gather(masked, j1)
      # u[p[j]] += delta and v[j] -= delta for used columns; minv -= delta else.
      u = tf.tensor_scatter_nd_add(
          u, tf.expand_dims(p, -1),
          tf.where(used, delta, tf.zeros([n + 1], tf.float64)))
      v = tf.where(used, v - delta, v)
      minv = tf.where(used, minv, minv - delta)
      return j1, u, v, p, minv, used, way

    j0, u, v, p, minv, used, way = tf.while_loop(
        search_cond, search_body, (0, u, v, p, minv, used, way))

    def augment_cond(j0, p):
      return tf.not_equal(j0, 0)

    def augment_body(j0, p):
      j1 = tf.gather(way, j0)
      p = tf.tensor_scatter_nd_update(p, [[j0]], [tf.gather(p, j1)])
      return j1, p

    _, p = tf.while_loop(augment_cond, augment_body, (j0, p))
    return i + 1, u, v, p

  _, _, _, p = tf.while_loop(lambda i, *_: i <= n, add_row,
                             (tf.constant(1), u0, v0, p0))
  # p[j] = row for column j (1-based); invert to row -> column.
  columns = tf.range(n, dtype=tf.int32)
  row_to_col = tf.scatter_nd(tf.expand_dims(p[1:] - 1, -1), columns, [n])
  return row_to_col


def tensorflow_matching(cost: tf.Tensor, valid_rows: tf.Tensor) -> tf.Tensor:
  """In-graph matching with the same contract as `scipy_matching`."""
  num_rows, num_cols = cost.shape[1], cost.shape[2]
  size = max(num_rows, num_cols)
  cost = tf.cast(cost, tf.float64)
  # Invalid rows cost the same everywhere (they cannot change the optimum of
  # the valid rows); padded rows/columns likewise.
  cost = tf.where(valid_rows[:, :, tf.newaxis], cost, tf.zeros_like(cost))
  # Ties with padded columns must not steal valid rows: a padded column costs
  # more than any real one for valid rows.
  square = tf.pad(cost, [[0, 0], [0, size - num_rows], [0, size - num_cols]])
  pad_column = tf.range(size) >= num_cols
  big = tf.reduce_max(tf.abs(cost)) * 2 + 1
  valid_square = tf.pad(valid_rows, [[0, 0], [0, size - num_rows]])
  square = square + tf.cast(
      tf.logical_and(valid_square[:, :, tf.newaxis],
                     pad_column[tf.newaxis, tf.newaxis, :]), tf.float64) * big
  row_to_col = tf.map_fn(_hungarian_square, square,
                         fn_output_signature=tf.int32)
  permutation = tf.one_hot(row_to_col, size, dtype=tf.float32)
  permutation = permutation[:, :num_rows, :num_cols]
  return permutation * tf.cast(valid_rows[:, :, tf.newaxis], tf.float32)


def auto_matching(cost: tf.Tensor, valid_rows: tf.Tensor) -> tf.Tensor:
  """`scipy_matching`, or `tensorflow_matching` under a TPU strategy."""
  on_tpu = isinstance(tf.distribute.get_strategy(), tf.distribute.TPUStrategy)
  if on_tpu:
    return tensorflow_matching(cost, valid_rows)
  return scipy_matching(cost, valid_rows)


def match(cost: tf.Tensor, valid_rows: tf.Tensor,
          implementation: str = "auto") -> tf.Tensor:
  """Runs the matching function registered as `implementation`."""
  if implementation not in MATCHING_IMPLEMENTATIONS:
    raise ValueError(f"matching_implementation must be one of "
                     f"{tuple(MATCHING_IMPLEMENTATIONS)}, got "
                     f"{implementation!r}.")
  return globals()[MATCHING_IMPLEMENTATIONS[implementation]](cost, valid_rows)
