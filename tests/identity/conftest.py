"""Shared fixtures: three trust domains with their own dev CAs, on a fixed clock.

TD_A ``prod.example`` is ours, TD_B ``partner.example`` is federated, TD_X
``evil.example`` is not trusted at all (security-tests.md section 6 conventions).
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from pdp.identity.bundles import TrustDomainBundles
from pdp.identity.devca import DevCA

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
TD_A, TD_B, TD_X = "prod.example", "partner.example", "evil.example"
GOOD_ID = f"spiffe://{TD_A}/ns/app/sa/client"


@pytest.fixture
def ca_a() -> DevCA:
    return DevCA.create(TD_A, now=NOW)


@pytest.fixture
def ca_b() -> DevCA:
    return DevCA.create(TD_B, now=NOW)


@pytest.fixture
def ca_x() -> DevCA:
    return DevCA.create(TD_X, now=NOW)


@pytest.fixture
def bundles(ca_a: DevCA, ca_b: DevCA) -> TrustDomainBundles:
    """Both trusted trust domains loaded, each with only its own root."""
    return TrustDomainBundles({TD_A: [ca_a.root], TD_B: [ca_b.root]})
