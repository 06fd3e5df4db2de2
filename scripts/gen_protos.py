"""Generate the Python gRPC package `flickrhub.v1` from protos/ into gen/.

The proto path mirrors the import path (protos/flickrhub/v1/jobs.proto →
`from flickrhub.v1 import jobs_pb2`), so no generated import is rewritten.

gen/ is not committed, so there is nothing for it to go stale against: make regenerates it
whenever a proto, this script or the pinned tools (constraints.txt, through the venv stamp)
change, and the image build always regenerates it.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from importlib import resources
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
GEN = ROOT / "gen"
DESCRIPTOR_SET = Path("flickrhub/v1/descriptor_set.binpb")


def _include_dirs() -> list[str]:
    import google.api  # googleapis-common-protos ships annotations.proto and http.proto

    googleapis_root = Path(next(iter(google.api.__path__))).parent.parent
    wkt_root = Path(str(resources.files("grpc_tools") / "_proto"))
    return [str(PROTOS), str(googleapis_root), str(wkt_root)]


def generate(out: Path) -> None:
    """Run protoc over every proto under protos/ into `out`."""
    from grpc_tools import protoc

    sources = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    out.mkdir(parents=True, exist_ok=True)
    args = ["protoc", *(f"-I{d}" for d in _include_dirs())]
    args += [f"--python_out={out}", f"--grpc_python_out={out}"]
    bindir = Path(sys.executable).parent  # mypy-protobuf's plugins sit beside this interpreter
    args += [f"--plugin=protoc-gen-mypy={bindir / 'protoc-gen-mypy'}", f"--mypy_out={out}"]
    args += [f"--plugin=protoc-gen-mypy_grpc={bindir / 'protoc-gen-mypy_grpc'}"]
    args += [f"--mypy_grpc_out={out}"]
    # The descriptors with their comments (Python's run-time descriptors drop source info): the edge's
    # OpenAPI document takes its descriptions from this file.
    descriptor_set = out / DESCRIPTOR_SET
    descriptor_set.parent.mkdir(parents=True, exist_ok=True)
    args += [f"--descriptor_set_out={descriptor_set}", "--include_source_info", "--include_imports"]
    if protoc.main([*args, *sources]) != 0:
        raise SystemExit("protoc failed")
    for folder in {out / Path(s).parent for s in sources} | {out / "flickrhub"}:
        (folder / "__init__.py").touch()
        (folder / "py.typed").touch()


def main() -> int:
    argparse.ArgumentParser(description=__doc__).parse_args()
    shutil.rmtree(GEN, ignore_errors=True)
    generate(GEN)
    print(f"generated {sum(1 for _ in GEN.rglob('*_pb2*.py'))} modules into {GEN}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
