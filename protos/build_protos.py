"""Compiles protos/*.proto into Python modules with grpcio-tools.

Run at build/install time by setup.py (the generated `*_pb2.py` files are
never committed), and by the test that checks the installed modules match the
`.proto` sources. Usable standalone: `python protos/build_protos.py`.
"""

import glob
import os
import shutil
import sys
import tempfile

PROTO_PACKAGE = "deeplab2_kmax/protos"
PROTO_DIR = os.path.dirname(os.path.abspath(__file__))


def generate(proto_dir: str = PROTO_DIR, output_dir: str = PROTO_DIR) -> list:
  """Writes `<name>_pb2.py` for every `.proto` in `proto_dir` into `output_dir`.

  The protos import each other as "deeplab2_kmax/protos/<name>.proto", so the
  generated modules import `deeplab2_kmax.protos.<name>_pb2`.

  Returns:
    The paths written.
  """
  from grpc_tools import protoc  # pylint: disable=g-import-not-at-top

  sources = sorted(glob.glob(os.path.join(proto_dir, "*.proto")))
  written = []
  with tempfile.TemporaryDirectory() as staging:
    package_dir = os.path.join(staging, PROTO_PACKAGE)
    os.makedirs(package_dir)
    for source in sources:
      shutil.copy(source, package_dir)
    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    relative = [
        os.path.join(PROTO_PACKAGE, os.path.basename(s)) for s in sources
    ]
    status = protoc.main(
        ["protoc", f"-I{staging}", f"-I{include}", f"--python_out={staging}"]
        + relative)
    if status != 0:
      raise RuntimeError(f"protoc failed on {relative} (exit {status}).")
    os.makedirs(output_dir, exist_ok=True)
    for generated in sorted(glob.glob(os.path.join(package_dir, "*_pb2.py"))):
      shutil.copy(generated, output_dir)
      written.append(os.path.join(output_dir, os.path.basename(generated)))
  return written


if __name__ == "__main__":
  for path in generate(*sys.argv[1:3]):
    print(path)
