"""Map agreement against a brute-force search over instance-id renamings."""

import itertools

import numpy as np
import pytest

from deeplab2_kmax.evaluation import map_agreement

_DIVISOR = 100


def _best_renaming(first, second):
  """max over injective per-class renamings of second's ids of equal pixels.

  Each class's instance ids in `second` may be renamed to any distinct ids
  among those `first` uses for the class plus fresh ones (a fresh id never
  matches), every combination tried.
  """
  classes = np.unique(second // _DIVISOR)
  choices = []
  for category in classes:
    ids = [i for i in np.unique(second) if i // _DIVISOR == category]
    targets = [i for i in np.unique(first) if i // _DIVISOR == category]
    fresh = [category * _DIVISOR + 90 + k for k in range(len(ids))]
    choices.append([dict(zip(ids, perm)) for perm in
                    itertools.permutations(targets + fresh, len(ids))])
  best = 0
  for combination in itertools.product(*choices):
    renaming = {k: v for part in combination for k, v in part.items()}
    renamed = np.vectorize(renaming.get)(second)
    best = max(best, int(np.sum(renamed == first)))
  return best


def _random_map(rng, shape):
  """Up to three instances of two thing classes, stuff and void elsewhere."""
  labels = [1 * _DIVISOR + i for i in (1, 2, 3)] + [
      2 * _DIVISOR + i for i in (1, 2)] + [5 * _DIVISOR, 0]
  return rng.choice(labels, size=shape)


@pytest.mark.parametrize("seed", range(12))
def test_same_segment_equals_the_best_renaming(seed):
  rng = np.random.default_rng(seed)
  first = _random_map(rng, (6, 7))
  # A perturbed copy with some ids swapped and some pixels changed.
  second = first.copy()
  if seed % 2:
    swap = {101: 102, 102: 101, 201: 202, 202: 201}
    second = np.vectorize(lambda v: swap.get(v, v))(second)
  changed = rng.random(first.shape) < 0.3
  second[changed] = _random_map(rng, first.shape)[changed]
  result = map_agreement.agreement(first, second, _DIVISOR)
  assert result.total == first.size
  assert result.same_label == int(np.sum(first == second))
  assert result.same_segment == _best_renaming(first, second)


def test_swapped_instance_ids_agree_fully_as_segments_only():
  first = np.array([[101, 101, 102], [102, 500, 0]])
  second = np.array([[102, 102, 101], [101, 500, 0]])
  result = map_agreement.agreement(first, second, _DIVISOR)
  assert result == (6, 2, 6)
  assert result + result == (12, 4, 12)


def test_a_class_change_is_never_renamed_away():
  first = np.array([[101, 101], [500, 500]])
  second = np.array([[201, 201], [500, 500]])
  assert map_agreement.agreement(first, second, _DIVISOR) == (4, 2, 2)


def test_bad_input_is_named():
  with pytest.raises(ValueError, match="first has shape"):
    map_agreement.agreement(np.zeros((2, 3)), np.zeros((3, 2)), _DIVISOR)
  with pytest.raises(ValueError, match="label_divisor"):
    map_agreement.agreement(np.zeros(3), np.zeros(3), 0)
