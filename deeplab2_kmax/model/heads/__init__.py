"""Prediction heads: the MaX-DeepLab head and the auxiliary semantic branch."""
