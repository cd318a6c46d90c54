"""Shared pytest setup: quiet TensorFlow logs, paths to the repo and fixtures."""

import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
# CI places the shared reference data beside the checkout.
REFERENCE_DIR = REPO_ROOT.parent / "shared" / "reference"


@pytest.fixture
def repo_root():
  return REPO_ROOT


@pytest.fixture
def reference_dir():
  if not REFERENCE_DIR.is_dir():
    pytest.skip(f"reference data not found at {REFERENCE_DIR}")
  return REFERENCE_DIR
