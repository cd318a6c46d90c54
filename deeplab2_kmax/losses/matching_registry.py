"""The names of the Hungarian matching implementations (`matching`).

Each name a config may give as `matching_implementation`, mapped to the
function of `deeplab2_kmax.losses.matching` that implements it. This table
is the one list of those names: `matching.match` dispatches through it and
config validation reads it; it lives apart from `matching` so that reading
it imports neither TensorFlow nor SciPy. Adding an implementation is a
function in `matching` (signature of `matching.scipy_matching`) and a line
here.
"""

MATCHING_IMPLEMENTATIONS = {
    "auto": "auto_matching",  # "scipy", or "tensorflow" under TPUStrategy.
    "scipy": "scipy_matching",  # SciPy on the host (tf.numpy_function).
    "tensorflow": "tensorflow_matching",  # In-graph; XLA and TPU.
}
