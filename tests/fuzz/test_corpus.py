"""Replays the fuzzing corpus: seeds, and every input that ever broke a property.

A crash found by Hypothesis or by ``scripts/fuzz.py`` is saved under
``tests/fuzz/corpus/<target>/crash-<what>`` (atheris writes ``crash-<sha1>``; rename it
to say what it was) and stays here as a regression case once fixed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fuzz.targets import TARGETS

CORPUS = Path(__file__).parent / "corpus"
CASES = sorted(
    (target, path) for target in TARGETS for path in (CORPUS / target).glob("*") if path.is_file()
)


def test_every_target_has_a_corpus() -> None:
    assert {target for target, _ in CASES} == set(TARGETS)


@pytest.mark.parametrize(("target", "path"), CASES, ids=[f"{t}/{p.name}" for t, p in CASES])
def test_corpus_case(target: str, path: Path) -> None:
    TARGETS[target](path.read_bytes())
