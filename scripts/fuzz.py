"""Coverage-guided fuzzing of pdp's parsers with atheris (libFuzzer).

    .venv/bin/python scripts/fuzz.py request_json                 # until stopped
    .venv/bin/python scripts/fuzz.py check_request_bytes -max_total_time=600
    .venv/bin/python scripts/fuzz.py --list

Targets and their properties: tests/fuzz/targets.py. The run starts from
tests/fuzz/corpus/<target>/ and adds the inputs that reach new code to a scratch
corpus (``.fuzz/<target>``, not in git); a crash is written as ``crash-<sha1>`` in
the current directory: fix it, then move it to tests/fuzz/corpus/<target>/ so that
``make test`` replays it. Extra arguments go to libFuzzer (``-help=1`` lists them).
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main(argv: list[str]) -> int:
    sys.path.insert(0, str(REPO))
    try:
        import atheris
    except ImportError:
        print("atheris is not installed (pip install atheris; Linux x86-64 wheels)")
        return 2
    # Coverage of pdp's own code guides the search (instrumenting every library too
    # takes minutes at start and dilutes the signal).
    with atheris.instrument_imports(include=["pdp"]):
        from tests.fuzz.targets import TARGETS

    if len(argv) < 2 or argv[1] not in TARGETS:
        print(f"usage: {argv[0]} TARGET [libFuzzer options]; targets: {', '.join(TARGETS)}")
        return 0 if "--list" in argv else 2
    name = argv[1]
    target = TARGETS[name]
    scratch = REPO / ".fuzz" / name
    scratch.mkdir(parents=True, exist_ok=True)
    corpus = REPO / "tests" / "fuzz" / "corpus" / name
    target(b"")  # load the policies before fuzzing starts
    atheris.Setup([argv[0], *argv[2:], str(scratch), str(corpus)], target)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
