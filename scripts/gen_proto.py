#!/usr/bin/env python3
"""Generates the Python gRPC code for proto/ into pdp/_proto/ (or --out DIR).

protoc writes ``from pdp.v1 import decision_pb2``, which only works with ``pdp/_proto``
on sys.path; the imports are rewritten to ``from pdp._proto.pdp.v1 import ...`` so the
generated modules are an ordinary subpackage. The generated files are committed (an
install needs no grpcio-tools) and tests/service/test_proto.py fails when they are stale.

Usage: python scripts/gen_proto.py [--out DIR]
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO / "proto"
DEFAULT_OUT = REPO / "pdp" / "_proto"
PACKAGE_PREFIX = "pdp._proto"

# Top-level proto packages that we generate (google.* comes from the protobuf runtime).
_OWN_IMPORT_RE = re.compile(r"^(from|import) (pdp\.v\d+)\b", re.MULTILINE)
# protoc's stubs are not mypy --strict clean (bare Mapping, ...); mypy reads them for the
# types but reports nothing in them. Excluding the directory is not enough: imports of it
# are still followed and checked.
_MYPY_HEADER = "# mypy: ignore-errors\n"
# The module name protoc passes to the message builder becomes each class's __module__.
_OWN_MODULE_RE = re.compile(r"'(pdp\.v\d+\.\w+_pb2)'")


def proto_files() -> list[Path]:
    return sorted(PROTO_ROOT.rglob("*.proto"))


def generate(out_dir: Path) -> list[Path]:
    """Runs protoc for every file under proto/ and returns the files written."""
    import grpc_tools
    from grpc_tools import protoc

    include = Path(grpc_tools.__file__).resolve().parent / "_proto"
    out_dir.mkdir(parents=True, exist_ok=True)
    sources = [str(p.relative_to(PROTO_ROOT)) for p in proto_files()]
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *sources,
    ]
    if protoc.main(args) != 0:
        raise SystemExit(f"protoc failed for {sources}")
    written: list[Path] = []
    for path in sorted(out_dir.rglob("*.py*")):
        if path.suffix not in (".py", ".pyi") or path.name == "__init__.py":
            continue
        text = path.read_text(encoding="utf-8")
        fixed = _OWN_IMPORT_RE.sub(rf"\1 {PACKAGE_PREFIX}.\2", text)
        fixed = _OWN_MODULE_RE.sub(rf"'{PACKAGE_PREFIX}.\1'", fixed)
        if not fixed.startswith(_MYPY_HEADER):
            fixed = _MYPY_HEADER + fixed
        if fixed != text:
            path.write_text(fixed, encoding="utf-8")
        written.append(path)
    # Packages for every generated directory, so `import pdp._proto.pdp.v1` works.
    for directory in {out_dir, *(p.parent for p in written)}:
        while True:
            init = directory / "__init__.py"
            if not init.exists():
                init.write_text("", encoding="utf-8")
            written.append(init)
            if directory == out_dir:
                break
            directory = directory.parent
    return sorted(set(written))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
