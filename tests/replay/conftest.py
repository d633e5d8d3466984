"""Fixtures for replay tests: one synthesized audit log per worker, candidate policy dirs."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.replay.helpers import Synthesized, copy_policies, synthesize, write_log


@pytest.fixture(scope="session")
def synthesized() -> Synthesized:
    return synthesize()


@pytest.fixture(scope="session")
def shared_log(tmp_path_factory: pytest.TempPathFactory, synthesized: Synthesized) -> Path:
    """The synthesized log as rotated files (read only: copy it with ``audit_log``)."""
    log_dir = tmp_path_factory.mktemp("audit") / "log"
    files = write_log(synthesized.records, log_dir)
    assert len(files) > 3, "the log should be rotated into several files"
    return log_dir


@pytest.fixture
def audit_log(shared_log: Path, tmp_path: Path) -> Path:
    """A private, writable copy of the synthesized log directory."""
    return Path(shutil.copytree(shared_log, tmp_path / "log"))


CandidateFactory = Callable[[str], Path]


@pytest.fixture
def candidate(tmp_path: Path) -> CandidateFactory:
    """Copies the example policies to ``tmp_path/<name>`` for a test to modify."""

    def make(name: str) -> Path:
        return copy_policies(tmp_path / name)

    return make
