"""Budgets for the property-based fuzzing in this directory.

``make test`` runs the ``default`` profile (a few hundred examples per property, a few
seconds in all). For a longer hunt::

    HYPOTHESIS_PROFILE=fuzz .venv/bin/pytest tests/fuzz -p no:xdist

(``fuzz``: 20,000 examples per property; Hypothesis keeps what it found in
``.hypothesis/``). Coverage-guided fuzzing with atheris: ``scripts/fuzz.py``. Every input
that ever broke a property is kept under ``tests/fuzz/corpus/`` and replayed here.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_COMMON = {
    "deadline": None,
    "suppress_health_check": (HealthCheck.too_slow, HealthCheck.data_too_large),
    "derandomize": False,
}
settings.register_profile("default", max_examples=150, **_COMMON)  # type: ignore[arg-type]
settings.register_profile("fuzz", max_examples=20_000, **_COMMON)  # type: ignore[arg-type]
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
