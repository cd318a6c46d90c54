"""Every config field is read by the library, or rejected when set.

The fields are every field of every message reachable from
`ExperimentOptions` (walked through the descriptors, so a field added to any
.proto is covered). "Read" is decided by a static scan of the library code
(`field_reads`: typed reads through `config`, local variables and `self`
attributes; untyped `.name` reads only count for names no other message
uses). A field the library deliberately does not implement must be listed in
`REJECTED` with a value that validation refuses: the test then sets it, in
every place the message occurs, and checks that loading fails naming it.
"""

import pathlib

import field_reads
import pytest

from deeplab2_kmax import config_loader
from deeplab2_kmax.protos import config_pb2

REPO = pathlib.Path(__file__).resolve().parents[2]
DEMO = REPO / "configs" / "synthetic" / "kmax_tiny_r50_os32.textproto"

# (message, field) -> (a value validation rejects, why it is not implemented).
REJECTED = {
    ("DatasetOptions", "decode_groundtruth_label"):
        (False, "kMaX trains and evaluates on the panoptic ground truth"),
    ("DatasetOptions", "thing_id_mask_annotations"):
        (False, "the kMaX losses need the thing-id masks"),
    ("EvaluatorOptions", "use_tf_function"):
        (False, "evaluation always runs in a tf.function"),
    ("EvaluatorOptions", "transformer_post_processing"):
        ("pixelwise", "only DeepLab2's 'maskwise' merging is implemented"),
    ("SingleLossOptions", "name"):
        ("focal_loss", "each loss is fixed by its field; the semantic loss "
                       "is softmax cross-entropy"),
}

_FIELDS = field_reads.config_fields()


@pytest.fixture(scope="module")
def reads():
  return field_reads.scan(REPO, _FIELDS)


def _paths(message: str, prefix="", descriptor=None):
  """Every field path from ExperimentOptions to a `message` sub-message."""
  descriptor = descriptor or config_pb2.ExperimentOptions.DESCRIPTOR
  if descriptor.name == message:
    yield prefix
  for field in descriptor.fields:
    if field.message_type is not None and not field.is_repeated:
      yield from _paths(message, f"{prefix}{field.name}.", field.message_type)


def _set(config, path: str, value):
  *parents, name = path.split(".")
  message = config
  for parent in parents:
    message = getattr(message, parent)
  setattr(message, name, value)


def test_the_walk_reaches_every_message():
  messages = {message for message, _ in _FIELDS}
  assert {"ExperimentOptions", "ModelOptions", "BackboneOptions",
          "SingleLossOptions", "PanopticCopyPasteOptions",
          "MaskwisePostprocessingOptions", "ExportOptions"} <= messages
  assert len(_FIELDS) > 100


def test_every_field_is_read_or_rejected(reads):
  unread = [f"{message}.{name}" for message, name in sorted(_FIELDS)
            if (message, name) not in REJECTED and
            not field_reads.is_read((message, name), reads, _FIELDS)]
  assert not unread, (
      "config fields the library never reads: " + ", ".join(unread) +
      ". Use them, remove them from protos/, or reject non-default values "
      "in config_loader and list them in REJECTED.")


def test_rejected_fields_exist_and_are_not_read(reads):
  for field in REJECTED:
    assert field in _FIELDS, f"REJECTED lists an unknown field {field}"
    assert not field_reads.is_read(field, reads, _FIELDS), (
        f"{field} is read by the library: take it off REJECTED")


@pytest.mark.parametrize("field", sorted(REJECTED),
                         ids=lambda f: ".".join(f))
def test_rejected_fields_fail_validation_naming_the_field(field):
  message, name = field
  value, _ = REJECTED[field]
  assert _FIELDS[field].default_value != value
  paths = list(_paths(message))
  assert paths, f"{message} is not reachable without a repeated field"
  for prefix in paths:
    config = config_loader.load_config(str(DEMO), {"DATA_DIR": "/data"})
    _set(config, prefix + name, value)
    with pytest.raises(config_loader.ConfigError,
                       match=f"'{prefix}{name}'"):
      config_loader.validate(config, str(DEMO))


def test_the_scan_sees_typed_reads_and_tells_shared_names_apart(reads):
  """Reads through locals and `self` are typed; `jit_compile` is per message."""
  typed = reads.typed
  assert ("SolverOptions", "adamw_epsilon") in typed  # optimization(solver).
  assert ("EvaluatorOptions", "num_vis_samples") in typed  # self._options.
  assert ("LowLevelOptions", "channels_project") in typed  # Comprehension.
  for message in ("TrainerOptions", "EvaluatorOptions", "ExportOptions"):
    assert (message, "jit_compile") in typed
  fields = dict(_FIELDS)
  unread = field_reads.Reads(typed=typed - {("ExportOptions", "jit_compile")},
                             untyped=reads.untyped | {"jit_compile"})
  assert not field_reads.is_read(("ExportOptions", "jit_compile"), unread,
                                 fields)
