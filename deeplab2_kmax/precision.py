"""Inference precision: float32, or bfloat16 under Keras' mixed precision.

'bfloat16' builds the model under the Keras policy "mixed_bfloat16"
(Micikevicius et al., "Mixed Precision Training", ICLR 2018; Keras'
mixed-precision guide): variables stay float32 (a float32 checkpoint loads
unchanged), layers compute in bfloat16, and the numerically sensitive steps
stay in float32: the prediction heads' mask and class logits
(`MaXDeepLabHead`, so the k-means argmax of paper Eq. 5 and the merging's
softmax and thresholds see float32 logits), softmax and batch-norm
statistics. The model's
outputs are cast back to float32 before the mask-wise merging (paper §3.4 /
DeepLab2's post-processing), so thresholds and the merge order are decided
in float32.

bfloat16 is only faster where the hardware multiplies it natively: a GPU, a
TPU, or a CPU with AMX (`amx_bf16`) or AVX512_BF16 (`avx512_bf16`). On any
other CPU it is emulated and slower than float32, so `resolve` warns and
falls back to float32; the precision it returns is the one that runs.

The global policy is set only while the model is built (`policy_scope`):
each Keras layer keeps the policy it was built under, so nothing leaks to
later models.

Imports TensorFlow only when a function needs it, so `config_loader` can
read PRECISIONS without it.
"""

import contextlib
from typing import FrozenSet

from absl import logging

FLOAT32 = "float32"
BFLOAT16 = "bfloat16"
PRECISIONS = (FLOAT32, BFLOAT16)
# The Keras policy each precision builds the model under.
_POLICIES = {FLOAT32: "float32", BFLOAT16: "mixed_bfloat16"}
# CPU flags (Linux /proc/cpuinfo) of native bfloat16 matrix multiplies.
BFLOAT16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


class PrecisionError(ValueError):
  """An unknown precision; the message names the field and allowed values."""


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> FrozenSet[str]:
  """The CPU feature flags Linux reports (empty where it reports none)."""
  try:
    with open(cpuinfo, encoding="utf-8") as f:
      for line in f:
        if line.startswith("flags"):
          return frozenset(line.split(":", 1)[1].split())
  except OSError:
    pass
  return frozenset()


def bfloat16_is_fast() -> bool:
  """Whether bfloat16 runs natively here: a GPU / TPU, or AMX / AVX512_BF16."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  if tf.config.list_logical_devices("GPU") or (
      tf.config.list_logical_devices("TPU")):
    return True
  return bool(cpu_flags() & set(BFLOAT16_CPU_FLAGS))


def check(precision: str, field: str) -> str:
  """Returns `precision` if known, else raises PrecisionError naming `field`."""
  if precision not in PRECISIONS:
    raise PrecisionError(
        f"{field}: {precision!r} is not one of "
        f"{', '.join(map(repr, PRECISIONS))}")
  return precision


def resolve(precision: str, field: str) -> str:
  """The precision that will run: `precision`, or float32 with a warning.

  Args:
    precision: The requested precision (one of PRECISIONS; '' is float32).
    field: The config field or flag it came from, for messages.

  Raises:
    PrecisionError: `precision` is unknown (named with `field`).
  """
  precision = check(precision or FLOAT32, field)
  if precision == BFLOAT16 and not bfloat16_is_fast():
    logging.warning(
        "%s: bfloat16 asked for, but this machine has no GPU or TPU and its "
        "CPU lacks AMX (amx_bf16) and AVX512_BF16 (avx512_bf16), so bfloat16 "
        "would be emulated and slower; running float32 instead", field)
    return FLOAT32
  return precision


@contextlib.contextmanager
def policy_scope(precision: str):
  """Sets the Keras global policy of `precision`; restores the previous one."""
  import tf_keras  # pylint: disable=g-import-not-at-top

  previous = tf_keras.mixed_precision.global_policy()
  tf_keras.mixed_precision.set_global_policy(_POLICIES[precision])
  try:
    yield
  finally:
    tf_keras.mixed_precision.set_global_policy(previous)


def build_model(config, crop_size, precision: str):
  """`builders.build_model` under `precision`'s policy (variables created)."""
  from deeplab2_kmax import builders  # pylint: disable=g-import-not-at-top

  with policy_scope(precision):
    return builders.build_model(config, crop_size=crop_size)


def model_precision(model) -> str:
  """The dtype a Keras model computes in ('float32', 'bfloat16', ...).

  'float32' for a callable without a dtype policy (a stand-in model).
  """
  return getattr(model, "compute_dtype", None) or FLOAT32


def outputs_to_float32(outputs):
  """Casts every floating tensor of a nested output structure to float32.

  Integer tensors (the cluster assignments) are left as they are; float32
  tensors pass through unchanged (tf.cast returns them as is).
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  return tf.nest.map_structure(
      lambda x: tf.cast(x, tf.float32) if x.dtype.is_floating else x,
      outputs)
