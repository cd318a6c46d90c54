"""kMaX-DeepLab: k-means Mask Transformer for panoptic segmentation.

Yu et al., "k-means Mask Transformer", ECCV 2022. A TensorFlow / tf_keras
implementation in the style of DeepLab2.

`from deeplab2_kmax import Predictor` gives the Python prediction API
(`predictor.py`); it is imported on first use, so importing the package
stays light.
"""

__version__ = "0.1.0"

__all__ = ["Prediction", "Predictor", "PredictorError"]

_LAZY = frozenset(__all__)


def __getattr__(name):
  """Imports the prediction API on first access (PEP 562)."""
  if name in _LAZY:
    from deeplab2_kmax import predictor  # pylint: disable=g-import-not-at-top
    return getattr(predictor, name)
  raise AttributeError(f"module 'deeplab2_kmax' has no attribute {name!r}")


def __dir__():
  return sorted(list(globals()) + list(__all__))
