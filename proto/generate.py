"""Regenerate the Python code for the ``.proto`` files in this folder.

Run from the repository root: ``python proto/generate.py``. The output
(``*_pb2.py``, ``*_pb2_grpc.py`` and their ``.pyi`` stubs) is committed; CI
runs this script again and fails if the result differs.
"""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc  # type: ignore[import-untyped]

PROTO_ROOT = Path(__file__).resolve().parent
PACKAGE_DIR = PROTO_ROOT / "liaison" / "v1"


def main() -> int:
    sources = sorted(p.relative_to(PROTO_ROOT).as_posix() for p in PACKAGE_DIR.glob("*.proto"))
    for stale in PACKAGE_DIR.glob("*_pb2*.py*"):
        stale.unlink()
    include = Path(protoc.__file__).resolve().parent / "_proto"
    scripts = Path(sys.executable).parent
    args = [
        "grpc_tools.protoc",
        f"--plugin=protoc-gen-mypy={scripts / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={scripts / 'protoc-gen-mypy_grpc'}",
        f"--proto_path={PROTO_ROOT}",
        f"--proto_path={include}",
        f"--python_out={PROTO_ROOT}",
        f"--grpc_python_out={PROTO_ROOT}",
        f"--mypy_out={PROTO_ROOT}",
        f"--mypy_grpc_out={PROTO_ROOT}",
        *sources,
    ]
    return protoc.main(args)


if __name__ == "__main__":
    sys.exit(main())
