"""Evaluation: streaming PQ / AP / mIoU, prediction writers, offline CLI."""
