"""How far two panoptic maps of the same image agree, pixel by pixel.

Two counts, for comparing one model run two ways (float32 and bfloat16,
before and after a rewrite):

* `same_label`: pixels with the same panoptic label.
* `same_segment`: pixels in segments matched one to one between the maps,
  up to the renaming of instance ids. A thing's instance id is only a name:
  DeepLab2's merging numbers instances by the rank of their slot's score,
  so two runs that find the same instances can number them differently
  when two scores are close. Segments of the same class (label //
  label_divisor) are matched to maximise the pixels they share (an
  assignment problem, scipy's `linear_sum_assignment`), and a pixel agrees
  when its segment in one map is matched to its segment in the other. Stuff
  and void have one segment per class, so for them the two counts are the
  same.

Equivalently, `same_segment` is the largest `same_label` over all renamings
of the second map's instance ids that keep each class's ids distinct.
"""

from typing import NamedTuple

import numpy as np
from scipy import optimize

from deeplab2_kmax.evaluation import panoptic_quality


class Agreement(NamedTuple):
  """Pixel counts: `total`, `same_label` and `same_segment` (see module)."""
  total: int
  same_label: int
  same_segment: int

  def __add__(self, other: "Agreement") -> "Agreement":
    return Agreement(*(a + b for a, b in zip(self, other)))


def agreement(first: np.ndarray, second: np.ndarray,
              label_divisor: int) -> Agreement:
  """Counts the pixels where panoptic maps `first` and `second` agree.

  Args:
    first: Integer panoptic map (class x label_divisor + instance), any shape.
    second: The same image's other map, same shape.
    label_divisor: The maps' panoptic label divisor.

  Raises:
    ValueError: The shapes differ (both are named), or label_divisor < 1.
  """
  first, second = np.asarray(first), np.asarray(second)
  if first.shape != second.shape:
    raise ValueError(f"agreement: first has shape {first.shape}, second "
                     f"{second.shape}; they must be the same image's maps.")
  if label_divisor < 1:
    raise ValueError(f"agreement: label_divisor={label_divisor} must be >= 1.")
  first_ids, first_index, _ = panoptic_quality.dense_ids(first)
  second_ids, second_index, _ = panoptic_quality.dense_ids(second)
  # overlap[i, j]: pixels in segment i of the first map and j of the second.
  overlap = np.bincount(
      first_index * len(second_ids) + second_index,
      minlength=len(first_ids) * len(second_ids)).reshape(
          len(first_ids), len(second_ids))
  first_class = first_ids // label_divisor
  second_class = second_ids // label_divisor
  matched = 0
  for category in np.intersect1d(first_class, second_class):
    shared = overlap[np.ix_(first_class == category,
                            second_class == category)]
    rows, cols = optimize.linear_sum_assignment(shared, maximize=True)
    matched += int(shared[rows, cols].sum())
  return Agreement(total=int(first.size),
                   same_label=int(np.sum(first == second)),
                   same_segment=matched)
