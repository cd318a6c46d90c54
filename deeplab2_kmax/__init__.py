"""kMaX-DeepLab: k-means Mask Transformer for panoptic segmentation.

Yu et al., "k-means Mask Transformer", ECCV 2022. A TensorFlow / tf_keras
implementation in the style of DeepLab2.
"""

__version__ = "0.1.0"
