"""Generate the committed Python code for protos/xinhe/v1 (python -m ...).

The generated modules live beside their .proto files so that their import
path, ``xinhe.v1``, follows the proto package. A test regenerates into a
temporary directory and fails when the committed files differ.
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parents[2] / "protos"
PROTO_DIR = PROTO_ROOT / "xinhe" / "v1"


def proto_files() -> list[Path]:
    return sorted(PROTO_DIR.glob("*.proto"))


def generate(out_dir: Path) -> None:
    """Run protoc for every proto of xinhe.v1, writing into ``out_dir``."""
    from grpc_tools import protoc

    well_known = str(resources.files("grpc_tools") / "_proto")
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(str(p.relative_to(PROTO_ROOT)) for p in proto_files()),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed: " + " ".join(args))


def main() -> int:
    generate(PROTO_ROOT)
    print(f"generated {len(proto_files())} protos into {PROTO_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
