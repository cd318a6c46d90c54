"""Installs the `deeplab2_kmax` package.

The design card's top-level folders `protos/`, `trainer/` and `evaluation/`
are installed as `deeplab2_kmax.protos`, `deeplab2_kmax.trainer` and
`deeplab2_kmax.evaluation`, so nothing generic lands in site-packages.
Python code for the protos is generated here, at build time, with
grpcio-tools; it is never committed.
"""

import importlib.util
import os

import setuptools
from setuptools.command.build_py import build_py
from setuptools.command.develop import develop

_HERE = os.path.dirname(os.path.abspath(__file__))


def generate_protos():
  """Runs protos/build_protos.py (grpcio-tools) before packaging."""
  spec = importlib.util.spec_from_file_location(
      "build_protos", os.path.join(_HERE, "protos", "build_protos.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  module.generate()


class BuildPyWithProtos(build_py):

  def run(self):
    generate_protos()
    super().run()


class DevelopWithProtos(develop):

  def run(self):
    generate_protos()
    super().run()


_PACKAGES = setuptools.find_packages(include=["deeplab2_kmax", "deeplab2_kmax.*"])
_MAPPED = {"protos": "protos", "trainer": "trainer", "evaluation": "evaluation"}

setuptools.setup(
    name="deeplab2_kmax",
    version="0.1.0",
    description="kMaX-DeepLab (k-means Mask Transformer) in TensorFlow, DeepLab2 style.",
    long_description=open(os.path.join(_HERE, "README.md"), encoding="utf-8").read()
    if os.path.exists(os.path.join(_HERE, "README.md")) else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=_PACKAGES + [f"deeplab2_kmax.{name}" for name in _MAPPED],
    package_dir={"deeplab2_kmax": "deeplab2_kmax",
                 **{f"deeplab2_kmax.{name}": path for name, path in _MAPPED.items()}},
    package_data={"deeplab2_kmax.protos": ["*.proto"]},
    install_requires=[
        "tensorflow~=2.20.0",
        "tf-keras~=2.20.0",
        "tf-models-official~=2.20.0",
        "numpy",
        "scipy",
        "pycocotools",
        "absl-py",
        "protobuf",
        "Pillow",
        "tqdm",
    ],
    extras_require={
        # panopticapi-lite and cityscapesscripts are installed --no-deps by
        # `make install-test` (their pins clash with numpy 2); pyquaternion is
        # the one import cityscapesscripts' evaluation needs.
        # ONNX / LiteRT export (`export_model --format=onnx|tflite`).
        "export": ["tf2onnx", "onnxruntime", "ai-edge-litert"],
        # Video input and output for `predict --input=VIDEO`.
        "video": ["imageio", "imageio-ffmpeg"],
        "test": ["pytest", "pytest-timeout", "pytest-xdist", "ruff",
                 "grpcio-tools", "pyquaternion",
                 "tf2onnx", "onnxruntime", "ai-edge-litert",
                 "imageio", "imageio-ffmpeg"],
    },
    cmdclass={"build_py": BuildPyWithProtos, "develop": DevelopWithProtos},
)
