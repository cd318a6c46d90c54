"""Initialising a model from `model_options.initial_checkpoint`.

The checkpoint is matched through TensorFlow's object graph under the key
`model` (what the trainer and tools/convert_deeplab2_checkpoint write).
Without its class-specific last layers
(`restore_semantic_last_layer_from_initial_checkpoint: false`), the restore
runs on a copy of the model's object graph that leaves those layers out, so
they keep their fresh initialisation whatever their shape in the checkpoint
(fine-tuning on another set of classes). The class-specific layers are the
ones whose outputs are classes: every transformer class head (the final one
and the one in each kMaX layer) and the auxiliary semantic head's last
convolution (DeepLab2's `semantic_last_layer`).

Every restore is reported by variable name in the log: restored,
re-initialised (class-specific, not restored) and, with a warning, any
variable the checkpoint does not hold (left initialised).
"""

from typing import Dict
from typing import List
from typing import Optional

from absl import logging
import tensorflow as tf
from tensorflow.core.protobuf import trackable_object_graph_pb2
import tf_keras

from deeplab2_kmax.model.heads import max_deeplab
from deeplab2_kmax.model.heads import semantic

_FIELD = "model_options.restore_semantic_last_layer_from_initial_checkpoint"


class InitialCheckpointError(ValueError):
  """The initial checkpoint does not fit the model; the message says why."""


def class_specific_layers(model) -> List[tf_keras.layers.Layer]:
  """The layers of `model` whose output channels are the classes."""
  layers = []
  for module in model.submodules:
    if isinstance(module, max_deeplab.MaXDeepLabHead):
      layers.append(module.transformer_class_head)
    elif isinstance(module, semantic.SemanticBranch):
      layers.append(module.head.final_conv)
  return layers


def _graph_without(root, skipped_ids):
  """`root`'s checkpoint graph minus the objects whose id is in `skipped_ids`.

  Subtrees without a skipped object are `root`'s own objects; the objects on
  the way to a skipped one are replaced by `tf.Module`s holding the same
  children under the same names, less the skipped ones.
  """
  leads_to_skipped: Dict[int, bool] = {}

  def leads(obj) -> bool:
    key = id(obj)
    if key not in leads_to_skipped:
      leads_to_skipped[key] = False  # Guards against cycles.
      leads_to_skipped[key] = key in skipped_ids or any(
          leads(child) for child in
          tf.train.TrackableView.children(obj).values())
    return leads_to_skipped[key]

  def copy(obj):
    if not leads(obj):
      return obj
    shadow = tf.Module()
    for name, child in tf.train.TrackableView.children(obj).items():
      if id(child) not in skipped_ids:
        setattr(shadow, name, copy(child))
    return shadow

  return copy(root)


def _checkpoint_shapes(model, path: str) -> Dict[int, Optional[List[int]]]:
  """{id(variable): its shape in the checkpoint} for the variables of `model`
  that the checkpoint holds, matched through the object graph as a restore
  matches them."""
  reader = tf.train.load_checkpoint(path)
  graph = trackable_object_graph_pb2.TrackableObjectGraph()
  graph.ParseFromString(reader.get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"))
  shapes = reader.get_variable_to_shape_map()
  found, visited = {}, set()

  def walk(obj, node_id: int):
    if id(obj) in visited:
      return
    visited.add(id(obj))
    node = graph.nodes[node_id]
    if isinstance(obj, tf.Variable):
      for attribute in node.attributes:
        if attribute.name == "VARIABLE_VALUE":
          found[id(obj)] = shapes.get(attribute.checkpoint_key)
      return
    children = {child.local_name: child.node_id for child in node.children}
    for name, child in tf.train.TrackableView.children(obj).items():
      if name in children:
        walk(child, children[name])

  root = {child.local_name: child.node_id for child in graph.nodes[0].children}
  if "model" in root:
    walk(model, root["model"])
  return found


def _report(model, path: str, skipped_ids) -> None:
  """Logs, by name, what the restore from `path` restored and what not."""
  try:
    in_checkpoint = _checkpoint_shapes(model, path)
  except (tf.errors.OpError, ValueError) as e:  # Reading worked; be lenient.
    logging.warning("Could not list the variables of %s: %s", path, e)
    return
  restored, missing = [], []
  for variable in model.variables:
    if id(variable) in skipped_ids:
      continue
    (restored if id(variable) in in_checkpoint else missing).append(
        variable.name)
  logging.info("Restored from %s (%d variables): %s", path, len(restored),
               ", ".join(restored))
  if missing:
    logging.warning("Not in %s, left initialised (%d variables): %s", path,
                    len(missing), ", ".join(missing))


def restore(model, path: str, restore_class_layers: bool = True) -> List[str]:
  """Restores `model` from the checkpoint `path`.

  Args:
    model: A built `KMaXDeepLab` (its variables exist).
    path: A checkpoint written with `tf.train.Checkpoint(model=...)`.
    restore_class_layers: False leaves `class_specific_layers` as they are.

  Returns:
    The names of the variables that were deliberately not restored.

  Raises:
    InitialCheckpointError: nothing of the model is in the checkpoint, or a
      restored variable's shape differs (e.g. other classes while the
      class-specific layers are restored).
  """
  skipped_variables, skipped_ids, root = [], set(), model
  if not restore_class_layers:
    layers = class_specific_layers(model)
    skipped_variables = [v.name for layer in layers for v in layer.variables]
    skipped_ids = {id(v) for layer in layers for v in layer.variables}
    root = _graph_without(model, {id(layer) for layer in layers})
  try:
    status = tf.train.Checkpoint(model=root).read(path)
    status.expect_partial().assert_nontrivial_match()
  except AssertionError:
    raise InitialCheckpointError(
        f"model_options.initial_checkpoint {path}: no variable of the model "
        "is in it") from None
  except ValueError as e:
    hint = (f" (trained with other classes? set {_FIELD}: false)"
            if restore_class_layers else "")
    raise InitialCheckpointError(
        f"model_options.initial_checkpoint {path}: {e}{hint}") from None
  _report(model, path, skipped_ids)
  if skipped_variables:
    logging.info("Re-initialised, not restored from %s (%s: false; %d "
                 "class-specific variables): %s", path, _FIELD,
                 len(skipped_variables), ", ".join(skipped_variables))
  return skipped_variables
