"""ONNX and TFLite exports beside the SavedModel (`export_model --format`).

The SavedModel (`export_lib`) takes a uint8 image of any size and does all
the work in its graph. ONNX and TFLite graphs take one fixed size, so the
work is split:
  in the exported graph: the network and the mask-wise merging at the export
    crop, for one preprocessed image (float32 [1, crop_h, crop_w, 3], RGB in
    [0, 255], resized to fit the crop and padded with 127.5), giving the
    SavedModel's five maps at the crop (`undo_preprocessing.PER_PIXEL_KEYS`)
    plus the raw `pixel_space_mask_logits` and `transformer_class_logits`;
  on the host (`ExportedModel`): the evaluation resize and padding before,
    and after it the crop and nearest-neighbour resize back to the image
    (`undo_preprocessing.to_original_size`), both with the library's
    TensorFlow functions, so the maps are the SavedModel's for any image
    size.
What could not be expressed, and the form used instead:
  ONNX (tf2onnx): TensorFlow's exact GELU lowers to `Erfc`, which tf2onnx
    does not convert ("Tensorflow op [...Gelu/Erfc: Erfc] is not
    supported"); it is written as 1 - Erf(x) (`_erfc_as_one_minus_erf`),
    exact in ONNX's opset. tf2onnx's `UnsortedSegmentSum` (the merging's
    areas and pair overlaps) is a one-hot scatter ten times slower than the
    rest of the graph; it is written as ScatterElements with reduction "add"
    (`_segment_sum_as_scatter_add`). Everything else converts, the
    relative-position gathers of the axial blocks (constant indices at a
    fixed size) and the area limits too.
  TFLite: the area limits count segment areas with `tf.DenseBincount`, which
    is no TFLite builtin ("'tf.DenseBincount' op is neither a custom op nor
    a flex op", ERROR_NEEDS_FLEX_OPS; flex ops would need TensorFlow's
    kernels in the interpreter). The TFLite graph therefore merges without
    area limits, and `apply_area_limits` (NumPy) applies them on the host at
    the crop, before the resize back, exactly where the graph applies them.
Each export is a folder: `model.onnx` or `model.tflite` and `export.json`
(format, crop, resize bounds, area limits, label divisor, void label).
"""

import json
import os
from typing import Dict

from absl import logging
import numpy as np
import tensorflow as tf

from deeplab2_kmax import builders
from deeplab2_kmax import common
from deeplab2_kmax import precision
from deeplab2_kmax.data import preprocessing
from deeplab2_kmax.post_processing import max_deeplab
from deeplab2_kmax.post_processing import undo_preprocessing
from deeplab2_kmax.trainer import export_lib

FORMATS = ("saved_model", "onnx", "tflite")
MODEL_FILES = {"onnx": "model.onnx", "tflite": "model.tflite"}
INFO_FILE = "export.json"
INPUT_NAME = "image"
RAW_KEYS = (common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY,
            common.PRED_TRANSFORMER_CLASS_LOGITS_KEY)
ONNX_OPSET = 17


def network_function(model, post_processor, crop_size):
  """The exported graph: padded image at the crop -> maps at the crop."""
  crop = tuple(int(v) for v in crop_size)

  @tf.function(input_signature=[
      tf.TensorSpec([1, crop[0], crop[1], 3], tf.float32, name=INPUT_NAME)])
  def network(image):
    outputs = model(image, training=False)
    maps = post_processor(outputs, crop)
    results = {key: maps[key] for key in undo_preprocessing.PER_PIXEL_KEYS}
    results.update({key: outputs[key] for key in RAW_KEYS})
    return results

  return network


def apply_area_limits(maps: Dict[str, np.ndarray], *, thing_area_limit: int,
                      stuff_area_limit: int, label_divisor: int,
                      void_label: int) -> Dict[str, np.ndarray]:
  """The merging's step 5 in NumPy, on maps merged without area limits.

  Thing segments (instance > 0) under `thing_area_limit` pixels and stuff
  classes (instance 0, not void) under `stuff_area_limit` pixels of each
  image become void in `panoptic_pred` and `instance_pred`; the other maps
  are left as they are (`max_deeplab.MaskWiseMerging` applies the limits to
  these two maps only, at the same resolution).

  Args:
    maps: [B, H, W] maps at the crop, as `network_function` returns them.
    thing_area_limit: Minimum pixels of a thing segment (0: no limit).
    stuff_area_limit: Minimum pixels of a stuff class (0: no limit).
    label_divisor: Panoptic label divisor.
    void_label: Semantic label of unassigned pixels.

  Returns:
    A copy of `maps` with the limits applied.
  """
  panoptic = np.asarray(maps[common.PRED_PANOPTIC_KEY])
  instance = np.asarray(maps[common.PRED_INSTANCE_KEY])
  semantic = panoptic // label_divisor
  dropped = np.zeros(panoptic.shape, bool)
  for b in range(panoptic.shape[0]):
    things = instance[b] > 0
    stuff = (instance[b] == 0) & (semantic[b] != void_label)
    for pixels, ids, limit in ((things, panoptic[b], thing_area_limit),
                               (stuff, semantic[b], stuff_area_limit)):
      if limit <= 0:
        continue
      values, counts = np.unique(ids[pixels], return_counts=True)
      small = values[counts < limit]
      dropped[b] |= pixels & np.isin(ids, small)
  result = dict(maps)
  result[common.PRED_PANOPTIC_KEY] = np.where(
      dropped, void_label * label_divisor, panoptic).astype(panoptic.dtype)
  result[common.PRED_INSTANCE_KEY] = np.where(dropped, 0, instance).astype(
      instance.dtype)
  return result


def _erfc_as_one_minus_erf(ctx, node, name, args):
  """tf2onnx handler: Erfc(x) = 1 - Erf(x) (ONNX has Erf, not Erfc)."""
  del name, args  # Part of tf2onnx's handler signature.
  from tf2onnx import utils as onnx_utils  # pylint: disable=g-import-not-at-top

  erf = ctx.make_node("Erf", [node.input[0]], op_name_scope=node.name)
  dtype = onnx_utils.map_onnx_to_numpy_type(ctx.get_dtype(node.input[0]))
  one = ctx.make_const(onnx_utils.make_name(node.name + "/one"),
                       np.ones([], dtype))
  ctx.replace_inputs(node, [one.output[0], erf.output[0]])
  node.type = "Sub"


def _segment_sum_as_scatter_add(ctx, node, name, args):
  """tf2onnx handler: 1-D UnsortedSegmentSum as ScatterElements(add).

  tf2onnx's own conversion builds a [segments, elements] one-hot scatter
  (1024 x 32768 for the demo's pair overlaps): about 105 ms per image,
  against 10 ms for the rest of the graph.
  """
  del name, args  # Part of tf2onnx's handler signature.
  from onnx import TensorProto  # pylint: disable=g-import-not-at-top
  from onnx import numpy_helper  # pylint: disable=g-import-not-at-top
  from tf2onnx import utils as onnx_utils  # pylint: disable=g-import-not-at-top

  data, ids, num_segments = node.input
  if ctx.get_rank(data) != 1 or ctx.get_rank(ids) != 1:
    raise export_lib.ExportError(
        f"{node.name}: only 1-D unsorted_segment_sum converts to ONNX here")
  as_int64 = lambda x: ctx.make_node(  # pylint: disable=g-long-lambda
      "Cast", [x], attr={"to": TensorProto.INT64}).output[0]
  one = ctx.make_const(onnx_utils.make_name(node.name + "/shape"),
                       np.array([1], np.int64)).output[0]
  size = ctx.make_node("Reshape", [as_int64(num_segments), one]).output[0]
  dtype = onnx_utils.map_onnx_to_numpy_type(ctx.get_dtype(data))
  zeros = ctx.make_node("ConstantOfShape", [size], attr={
      "value": numpy_helper.from_array(np.zeros([1], dtype))}).output[0]
  ctx.replace_inputs(node, [zeros, as_int64(ids), data])
  node.type = "ScatterElements"
  node.set_attr("axis", 0)
  node.set_attr("reduction", "add")


def _write_onnx(network, path: str) -> None:
  try:
    import tf2onnx  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise export_lib.ExportError(
        f"--format onnx needs tf2onnx ({e}); pip install "
        "'deeplab2_kmax[export]'") from e

  tf2onnx.convert.from_function(
      network, input_signature=network.input_signature, opset=ONNX_OPSET,
      output_path=path,
      custom_op_handlers={
          "Erfc": (_erfc_as_one_minus_erf, []),
          "UnsortedSegmentSum": (_segment_sum_as_scatter_add, [])})


def _write_tflite(network, model, path: str) -> None:
  # The converter saves the function with an object that tracks its
  # variables; a bare holder of the weights saves in seconds, the Keras
  # model in a minute.
  holder = tf.Module()
  holder.weights = list(model.variables)
  converter = tf.lite.TFLiteConverter.from_concrete_functions(
      [network.get_concrete_function()], holder)
  # Builtin ops only: a graph that needs TensorFlow kernels fails here,
  # naming the op, instead of at load time in the interpreter.
  converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
  with open(path, "wb") as f:
    f.write(converter.convert())


def export_from_model(model, config, output_path: str, fmt: str) -> str:
  """Writes `model` (built at the export crop, loaded) in format `fmt`."""
  _check_format(fmt)
  if fmt == "saved_model":
    return export_lib.export_from_model(model, config, output_path)
  export_lib.check_output_path(output_path)
  crop = (tuple(config.export_options.crop_size) or
          tuple(config.eval_dataset_options.crop_size))
  merging = builders.post_processor_kwargs(config)
  limits_in_graph = fmt == "onnx"
  graph_merging = dict(merging) if limits_in_graph else dict(
      merging, thing_area_limit=0, stuff_area_limit=0)
  network = network_function(
      model, max_deeplab.MaskWiseMerging(**graph_merging), crop)
  os.makedirs(output_path, exist_ok=True)
  model_path = os.path.join(output_path, MODEL_FILES[fmt])
  if fmt == "onnx":
    _write_onnx(network, model_path)
  else:
    _write_tflite(network, model, model_path)
  resize = export_lib.resize_options(config.eval_dataset_options, crop)
  info = {
      "format": fmt, "model_file": MODEL_FILES[fmt],
      "input": {"name": INPUT_NAME, "shape": [1, crop[0], crop[1], 3],
                "dtype": "float32"},
      "crop_size": list(crop),
      "resize": {key: list(value) if isinstance(value, tuple) else value
                 for key, value in resize.items()},
      "area_limits_in_graph": limits_in_graph,
      "thing_area_limit": merging["thing_area_limit"],
      "stuff_area_limit": merging["stuff_area_limit"],
      "label_divisor": merging["label_divisor"],
      "void_label": merging["void_label"],
      "dataset_name": builders.dataset_info(config).name,
  }
  with open(os.path.join(output_path, INFO_FILE), "w") as f:
    json.dump(info, f, indent=2)
  logging.info("Wrote %s export to %s", fmt, output_path)
  return output_path


def export(config, checkpoint_path: str, output_path: str,
           fmt: str = "saved_model") -> str:
  """Builds the model at the export crop, restores it, exports as `fmt`."""
  _check_format(fmt)
  export_lib.check_output_path(output_path)
  # ONNX and TFLite exports are float32 (export_options.precision is the
  # SavedModel's).
  model = export_lib.restore_model(
      config, checkpoint_path,
      None if fmt == "saved_model" else precision.FLOAT32)
  return export_from_model(model, config, output_path, fmt)


def _check_format(fmt: str) -> None:
  if fmt not in FORMATS:
    raise export_lib.ExportError(
        f"--format {fmt!r}: unknown; expected one of {', '.join(FORMATS)}")


class ExportedModel:
  """Runs an ONNX or TFLite export like the SavedModel's `serving_default`.

  `model(image)` takes a uint8 [H, W, 3] image of any size (H, W > 0) and
  returns the SavedModel's five maps as NumPy [1, H, W] arrays. The exported
  graph itself only takes float32 [1, crop_h, crop_w, 3] (`export.json`).
  """

  def __init__(self, export_dir: str, num_threads: int = 0):
    """Loads `export_dir`; `num_threads` 0 lets the runtime choose."""
    self.export_dir = export_dir
    info_path = os.path.join(export_dir, INFO_FILE)
    if not os.path.exists(info_path):
      raise export_lib.ExportError(
          f"{export_dir}: no {INFO_FILE}; not an ONNX / TFLite export")
    with open(info_path) as f:
      self.info = json.load(f)
    self._crop = tuple(self.info["crop_size"])
    self._resize = dict(
        {key: tuple(value) if isinstance(value, list) else value
         for key, value in self.info["resize"].items()},
        crop_size=self._crop)
    self._run = _load_runner(self.info["format"],
                             os.path.join(export_dir, self.info["model_file"]),
                             num_threads)

  def network(self, padded: np.ndarray) -> Dict[str, np.ndarray]:
    """The exported graph on float32 [1, crop_h, crop_w, 3]: maps at crop."""
    maps = self._run(np.asarray(padded, np.float32))
    if not self.info["area_limits_in_graph"]:
      maps = apply_area_limits(
          maps, thing_area_limit=self.info["thing_area_limit"],
          stuff_area_limit=self.info["stuff_area_limit"],
          label_divisor=self.info["label_divisor"],
          void_label=self.info["void_label"])
    return maps

  def __call__(self, image: np.ndarray) -> Dict[str, np.ndarray]:
    image = np.asarray(image)
    if (image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3
        or 0 in image.shape):
      raise ValueError("image must be a uint8 [H, W, 3] array with H, W > 0; "
                       f"got {image.dtype} of shape {image.shape}")
    padded = preprocessing.eval_resize_and_pad(
        tf.cast(image, tf.float32), None, label_pad_value=0,
        **self._resize)[0]
    maps = self.network(padded.numpy()[np.newaxis])
    resized = preprocessing.eval_resized_size(image.shape[:2], **self._resize)
    restored = undo_preprocessing.to_original_size(
        {key: maps[key] for key in undo_preprocessing.PER_PIXEL_KEYS},
        resized, image.shape[:2])
    return {key: value.numpy() for key, value in restored.items()}


def _load_runner(fmt: str, path: str, num_threads: int):
  """A function: float32 [1, crop_h, crop_w, 3] -> dict of NumPy outputs."""
  if fmt == "onnx":
    import onnxruntime  # pylint: disable=g-import-not-at-top

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = num_threads
    session = onnxruntime.InferenceSession(
        path, options, providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    input_name = session.get_inputs()[0].name
    return lambda x: dict(zip(names, session.run(None, {input_name: x})))
  if fmt == "tflite":
    from ai_edge_litert import interpreter  # pylint: disable=g-import-not-at-top

    runner = interpreter.Interpreter(
        model_path=path, num_threads=num_threads or None
    ).get_signature_runner()
    return lambda x: runner(**{INPUT_NAME: x})
  raise export_lib.ExportError(f"{path}: unknown export format {fmt!r}")
