"""Both Hungarian implementations find SciPy's optimum; the registry."""

import itertools
import subprocess
import sys

import numpy as np
import pytest
from scipy import optimize
import tensorflow as tf

from deeplab2_kmax.losses import matching


def _brute_force_cost(cost, valid):
  rows = np.flatnonzero(valid)
  best = 0.0 if rows.size == 0 else np.inf
  for columns in itertools.permutations(range(cost.shape[1]), rows.size):
    best = min(best, cost[rows, list(columns)].sum())
  return best


def _random_problem(rng, batch, rows, cols, ties):
  if ties:
    cost = rng.integers(-2, 3, size=(batch, rows, cols)).astype(np.float32)
  else:
    cost = rng.standard_normal((batch, rows, cols)).astype(np.float32)
  valid = rng.random((batch, rows)) < 0.8
  for b in range(batch):  # At most `cols` valid rows (K <= N).
    extra = np.flatnonzero(valid[b])[cols:]
    valid[b, extra] = False
  return cost, valid


@pytest.fixture(scope="module")
def in_graph():
  return tf.function(matching.tensorflow_matching)


def test_small_problems_match_brute_force(in_graph):
  rng = np.random.default_rng(0)
  for trial in range(200):
    rows, cols = rng.integers(1, 6), rng.integers(1, 6)
    cost, valid = _random_problem(rng, 2, rows, cols, ties=trial % 2 == 0)
    for implementation in (matching.scipy_matching, in_graph):
      permutation = implementation(tf.constant(cost), tf.constant(valid))
      permutation = permutation.numpy()
      np.testing.assert_array_equal(permutation.sum(-1), valid)
      assert (permutation.sum(1) <= 1).all()
      for b in range(2):
        total = (permutation[b] * cost[b]).sum()
        assert total == pytest.approx(_brute_force_cost(cost[b], valid[b]),
                                      abs=1e-4)


def test_larger_problems_agree_with_scipy(in_graph):
  rng = np.random.default_rng(1)
  for trial in range(100):
    rows, cols = rng.integers(1, 30), rng.integers(1, 30)
    cost, valid = _random_problem(rng, 2, rows, cols, ties=trial % 3 == 0)
    ours = in_graph(tf.constant(cost), tf.constant(valid)).numpy()
    for b in range(2):
      r = np.flatnonzero(valid[b])
      if r.size == 0:
        assert ours[b].sum() == 0
        continue
      ri, ci = optimize.linear_sum_assignment(cost[b][r])
      assert (ours[b] * cost[b]).sum() == pytest.approx(
          cost[b][r][ri, ci].sum(), abs=1e-3)
      if trial % 3:  # Continuous costs: the optimum is unique.
        expected = np.zeros_like(ours[b])
        expected[r[ri], ci] = 1
        np.testing.assert_array_equal(ours[b], expected)


def test_coco_sized_problem_and_xla(in_graph):
  rng = np.random.default_rng(2)
  cost, valid = _random_problem(rng, 2, 133, 128, ties=False)
  valid[:, 100:] = False  # 100 real masks (K = 100 <= N = 128).
  scipy_result = matching.scipy_matching(cost, valid).numpy()
  xla = tf.function(matching.tensorflow_matching, jit_compile=True)
  for result in (in_graph(cost, valid).numpy(), xla(cost, valid).numpy()):
    np.testing.assert_allclose((result * cost).sum(), (scipy_result * cost).sum(),
                               rtol=1e-5)


def test_no_ground_truth_gives_empty_matching(in_graph):
  cost = tf.random.normal([3, 5, 4])
  valid = tf.zeros([3, 5], tf.bool)
  for result in (matching.scipy_matching(cost, valid), in_graph(cost, valid)):
    assert result.numpy().sum() == 0


def test_unknown_implementation_is_an_error():
  with pytest.raises(ValueError, match="matching_implementation"):
    matching.match(tf.zeros([1, 2, 2]), tf.ones([1, 2], tf.bool), "greedy")


def test_xla_matching_takes_the_cost_as_a_runtime_argument():
  """A cost that XLA must treat as a compile-time constant (dynamic scalar
  indexing inside the while loops did that) recompiles the training step for
  every batch: ~50x slower. The compiled HLO must read the cost as a
  parameter, and new costs must reuse the compiled program."""
  xla = tf.function(matching.tensorflow_matching, jit_compile=True)
  cost = tf.random.normal([2, 5, 7])
  valid = tf.ones([2, 5], tf.bool)
  hlo = xla.experimental_get_compiler_ir(cost, valid)(stage="hlo")
  signature = hlo[hlo.index("ENTRY"):].split("{", 1)[0]
  assert ": f32[2,5,7]" in signature, signature  # Not folded into a constant.
  for seed in range(3):
    cost = tf.random.stateless_normal([2, 5, 7], [seed, 0]).numpy()
    result = xla(cost, valid).numpy()
    expected = matching.scipy_matching(cost, valid).numpy()
    np.testing.assert_allclose((result * cost).sum(), (expected * cost).sum(),
                               rtol=1e-5)


def test_registry_names_the_implementations_without_tensorflow():
  """The registry is the list a config may use, readable without TF."""
  assert tuple(matching.MATCHING_IMPLEMENTATIONS) == ("auto", "scipy",
                                                      "tensorflow")
  for function in matching.MATCHING_IMPLEMENTATIONS.values():
    assert callable(getattr(matching, function))
  check = ("import sys; from deeplab2_kmax.losses import matching_registry; "
           "assert 'tensorflow' not in sys.modules, 'tensorflow imported'; "
           "assert 'scipy' not in sys.modules, 'scipy imported'")
  subprocess.run([sys.executable, "-c", check], check=True)
