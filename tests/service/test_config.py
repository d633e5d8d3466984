"""Service configuration: safe defaults, strict YAML, and the caller/rate-limit rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from pdp.identity.spiffe_id import SpiffeIdPattern
from pdp.model import Limits
from pdp.service import (
    CallerBinding,
    ConfigError,
    DevIdentity,
    FileIdentity,
    RateLimit,
    ServiceConfig,
    WorkloadApiIdentity,
    load_config,
)
from pdp.service.cipher_suites import AEAD_TLS12_CIPHER_SUITES, check_cipher_suites
from pdp.service.commands import agent_trust_domains
from pdp.service.gate import CallerPolicy, RateLimiter


def test_defaults_are_safe() -> None:
    config = ServiceConfig()
    assert config.listen.startswith("127.0.0.1:")  # loopback until told otherwise
    assert config.callers == ()  # nobody may ask
    assert config.audit_watchers == ()  # nobody may watch
    assert isinstance(config.identity, WorkloadApiIdentity)
    assert config.rate_limit.enabled
    assert config.limits.request == Limits()
    assert config.server.max_connection_age_s <= 600


def test_full_yaml(tmp_path: Path) -> None:
    (tmp_path / "pdp.yaml").write_text(
        """
listen: 0.0.0.0:9443
policies: pol
identity:
  source: files
  cert: svid.pem
  key: svid.key
  bundles: {acme.test: acme.pem, partner.test: /etc/partner.json}
callers:
  - id: spiffe://acme.test/gateway/*
    agents: [spiffe://acme.test/agent/*]
audit_watchers: [spiffe://acme.test/siem/*]
limits:
  max_batch: 10
  max_watchers: 2
  watch_queue: 100
  request: {max_depth: 4, max_arguments_bytes: 1000}
rate_limit: {decisions_per_second: 5, burst: 10}
server: {threads: 4, max_connection_age_s: 60}
"""
    )
    config = load_config(tmp_path / "pdp.yaml")
    assert config.listen == "0.0.0.0:9443"
    assert config.policies == tmp_path / "pol"
    assert config.identity == FileIdentity(
        cert=tmp_path / "svid.pem",
        key=tmp_path / "svid.key",
        bundles={"acme.test": tmp_path / "acme.pem", "partner.test": Path("/etc/partner.json")},
    )
    assert config.callers == (
        CallerBinding("spiffe://acme.test/gateway/*", ("spiffe://acme.test/agent/*",)),
    )
    assert config.limits.max_batch == 10
    assert config.audit_watchers == ("spiffe://acme.test/siem/*",)
    assert (config.limits.max_watchers, config.limits.watch_queue) == (2, 100)
    assert config.limits.request == Limits(max_depth=4, max_arguments_bytes=1000)
    assert config.rate_limit == RateLimit(decisions_per_second=5.0, burst=10)
    assert config.server.threads == 4 and config.server.max_connection_age_s == 60.0


def test_dev_and_workload_api_identities(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("identity: {source: dev, state_dir: st}\n")
    assert load_config(tmp_path / "a.yaml").identity == DevIdentity(state_dir=tmp_path / "st")
    (tmp_path / "b.yaml").write_text("identity: {socket: unix:///run/agent.sock}\n")
    assert load_config(tmp_path / "b.yaml").identity == WorkloadApiIdentity(
        socket="unix:///run/agent.sock"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("listen: 8443\n", "listen: must be a string"),
        ("listen: localhost\n", "must be HOST:PORT"),
        ("lisen: 0.0.0.0:1\n", "lisen: unknown key"),
        ("server: {threads: 0}\n", "server.threads: must be greater than 0"),
        ("server: {workers: 0}\n", "server.workers: must be between 1 and 64"),
        ("server: {threads: true}\n", "server.threads: must be an integer, not a boolean"),
        ("limits: {request: {max_detph: 3}}\n", "limits.request.max_detph: unknown key"),
        ("identity: {source: vault}\n", "identity.source: 'vault' is not one of"),
        ("identity: {source: files, cert: a}\n", "needs cert, key and bundles"),
        ("callers: {id: x}\n", "callers: must be a list"),
        ("callers: [{id: 'spiffe://a.test/x'}]\n", "callers[0]: needs id"),
        (
            "callers: [{id: 'spiffe://A.test/x', agents: ['spiffe://a.test/*']}]\n",
            "callers[0]: 'spiffe://A.test/x' is not a SPIFFE ID pattern",
        ),
        ("audit_watchers: spiffe://a.test/x\n", "audit_watchers: must be a list"),
        ("audit_watchers: ['a.test/x']\n", "audit_watchers[0]: 'a.test/x' is not a SPIFFE"),
        ("limits: {watch_queue: 0}\n", "limits.watch_queue: must be greater than 0"),
        ("[1, 2]\n", "config: must be a mapping"),
        ("a: [\n", "not valid YAML"),
    ],
)
def test_bad_yaml_names_the_key(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "pdp.yaml").write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "pdp.yaml")
    assert message in str(info.value)


def test_caller_policy_unions_matching_bindings() -> None:
    policy = CallerPolicy(
        [
            CallerBinding("spiffe://a.test/gateway/*", ("spiffe://a.test/agent/*",)),
            CallerBinding("spiffe://a.test/gateway/edge", ("spiffe://b.test/agent/x",)),
        ]
    )
    edge = policy.agents_for("spiffe://a.test/gateway/edge")
    assert edge is not None and [p.text for p in edge] == [
        "spiffe://a.test/agent/*",
        "spiffe://b.test/agent/x",
    ]
    other = policy.agents_for("spiffe://a.test/gateway/other")
    assert other is not None and len(other) == 1
    assert policy.agents_for("spiffe://a.test/gateway") is None  # the prefix itself is not below
    assert policy.agents_for("spiffe://b.test/gateway/edge") is None  # other trust domain


def test_pattern_semantics_the_bindings_rely_on() -> None:
    everyone_in_acme = SpiffeIdPattern("spiffe://acme.test/*")
    assert everyone_in_acme.matches("spiffe://acme.test/agent/x")
    assert not everyone_in_acme.matches("spiffe://acme.testing/agent/x")
    assert not everyone_in_acme.matches("spiffe://acme.test")


def test_rate_limiter_refills_and_caps_cost() -> None:
    clock = [0.0]
    limiter = RateLimiter(RateLimit(decisions_per_second=2, burst=4), clock=lambda: clock[0])
    assert limiter.take("a", 4)
    assert not limiter.take("a")
    assert limiter.take("b")  # per caller
    clock[0] = 0.5
    assert limiter.take("a")  # one token back after half a second
    assert not limiter.take("a")
    clock[0] = 100.0
    assert limiter.take("a", 1000)  # a batch bigger than the burst costs the burst
    assert not limiter.take("a")


def test_rate_limiter_forgets_idle_callers_only_when_crowded() -> None:
    clock = [0.0]
    limiter = RateLimiter(
        RateLimit(decisions_per_second=1, burst=2), clock=lambda: clock[0], max_callers=3
    )
    for name in "abc":
        assert limiter.take(name, 2)
    clock[0] = 10.0  # all full again
    assert limiter.take("d")
    assert len(limiter._buckets) <= 3


def test_disabled_rate_limit() -> None:
    limiter = RateLimiter(RateLimit(decisions_per_second=1, burst=1, enabled=False))
    assert all(limiter.take("a") for _ in range(100))


def test_cipher_suite_check() -> None:
    assert check_cipher_suites(AEAD_TLS12_CIPHER_SUITES) == []
    assert check_cipher_suites(
        "ECDHE-RSA-AES128-SHA:AES128-GCM-SHA256:DHE-RSA-AES128-GCM-SHA256"
    ) == [
        "ECDHE-RSA-AES128-SHA",
        "AES128-GCM-SHA256",
        "DHE-RSA-AES128-GCM-SHA256",
    ]


def test_dev_binding_covers_the_inventory_trust_domains() -> None:
    entities = [
        {"uid": {"type": "Agent", "id": "spiffe://acme.test/agent/a"}},
        {"uid": {"type": "Agent", "id": "spiffe://partner.test/agent/b"}},
        {"uid": {"type": "Agent", "id": "spiffe://acme.test/agent/c"}},
        {"uid": {"type": "McpServer", "id": "crm"}},
    ]
    assert agent_trust_domains(entities) == ["acme.test", "partner.test"]
