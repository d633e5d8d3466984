"""The strict SPIFFE ID grammar (security-tests.md section 6.3, go-spiffe's id_test cases)."""

from __future__ import annotations

import pytest

from pdp.identity.spiffe_id import (
    InvalidSpiffeId,
    SpiffeIdPattern,
    parse_spiffe_id,
    parse_trust_domain,
)


def _id_of_length(total: int) -> str:
    prefix = "spiffe://prod.example/"
    return prefix + "a" * (total - len(prefix))


VALID = [
    "spiffe://prod.example/app",
    "spiffe://prod.example/ns/app/sa/client",
    "spiffe://prod.example/.path",  # only exact '.' and '..' are dot segments
    "spiffe://prod.example/..path",
    "spiffe://prod.example/...",
    "spiffe://prod.example/a/.b/c..",
    "spiffe://prod.example/A-Z_0.9",  # path is case-sensitive and may hold uppercase
    "spiffe://10.0.0.1/app",  # IPv4-looking trust domains are ordinary names
    "spiffe://a_b-c.d/x",
    _id_of_length(2048),
    "spiffe://" + "t" * 255 + "/x",
]


@pytest.mark.parametrize("value", VALID)
def test_valid_ids_round_trip(value: str) -> None:
    parsed = parse_spiffe_id(value, require_path=True)
    assert str(parsed) == value


INVALID = {
    "root ID as workload": ("spiffe://prod.example", "must have a path"),
    "trailing slash": ("spiffe://prod.example/", "'/'"),
    "trailing slash in path": ("spiffe://prod.example/a/", "empty segment"),
    "empty segment": ("spiffe://prod.example/a//b", "empty segment"),
    "leading empty segment": ("spiffe://prod.example//a", "empty segment"),
    "dot segment": ("spiffe://prod.example/a/./b", "'.' or '..'"),
    "dot-dot segment": ("spiffe://prod.example/a/../admin", "'.' or '..'"),
    "only dot-dot": ("spiffe://prod.example/..", "'.' or '..'"),
    "only dot": ("spiffe://prod.example/.", "'.' or '..'"),
    "trailing newline in path": ("spiffe://prod.example/admin\n", "letters, digits"),
    "newline in trust domain": ("spiffe://prod.example\n/admin", "trust domain"),
    "uppercase trust domain": ("spiffe://Prod.Example/app", "lowercase"),
    "uppercase scheme": ("SPIFFE://prod.example/app", "lowercase scheme"),
    "kelvin sign": ("spiffe://\u212aprod.example/a", "non-ASCII"),
    "non-ASCII path": ("spiffe://prod.example/caf\u00e9", "non-ASCII"),
    "percent-encoded path": ("spiffe://prod.example/%61dmin", "percent"),
    "percent-encoded TD": ("spiffe://prod%2Eexample/app", "percent"),
    "encoded traversal": ("spiffe://prod.example/a%2F..%2Fadmin", "percent"),
    "userinfo": ("spiffe://user@prod.example/app", "userinfo"),
    "port": ("spiffe://prod.example:443/app", "port"),
    "IPv6": ("spiffe://[::1]/app", "trust domain must not be an IP literal"),
    "query": ("spiffe://prod.example/app?admin=1", "query"),
    "fragment": ("spiffe://prod.example/app#x", "fragment"),
    "https scheme": ("https://prod.example/app", "spiffe://"),
    "one slash": ("spiffe:/prod.example/app", "spiffe://"),
    "empty trust domain": ("spiffe:///app", "empty"),
    "scheme only": ("spiffe://", "empty"),
    "empty": ("", "spiffe://"),
    "NUL": ("spiffe://prod.example/a\x00b", "letters, digits"),
    "space": ("spiffe://prod.example/a b", "letters, digits"),
    "tab": ("spiffe://prod.example/a\tb", "letters, digits"),
    "carriage return": ("spiffe://prod.example/a\rb", "letters, digits"),
    "dollar": ("spiffe://prod.example/a$", "letters, digits"),
    "2049 bytes": (_id_of_length(2049), "longer than 2048"),
    "64 KiB": (_id_of_length(65536), "longer than 2048"),
    "256-byte trust domain": ("spiffe://" + "t" * 256 + "/x", "longer than 255"),
}


@pytest.mark.parametrize(("value", "rule"), INVALID.values(), ids=INVALID.keys())
def test_invalid_ids_name_the_broken_rule(value: str, rule: str) -> None:
    with pytest.raises(InvalidSpiffeId) as info:
        parse_spiffe_id(value, require_path=True)
    assert rule in str(info.value)


def test_root_id_is_a_valid_trust_domain_id() -> None:
    assert parse_spiffe_id("spiffe://prod.example").is_root


@pytest.mark.parametrize("value", ["Prod.example", "prod.example\n", "", "a/b", "spiffe://a"])
def test_parse_trust_domain_rejects(value: str) -> None:
    with pytest.raises(InvalidSpiffeId):
        parse_trust_domain(value)


def test_pattern_prefix_stays_inside_its_trust_domain() -> None:
    pattern = SpiffeIdPattern("spiffe://prod.example/gateway/*")
    assert pattern.matches("spiffe://prod.example/gateway/a")
    assert pattern.matches("spiffe://prod.example/gateway/a/b")
    assert not pattern.matches("spiffe://prod.example/gateway")
    assert not pattern.matches("spiffe://prod.example/gatewayx/a")
    assert not pattern.matches("spiffe://prod.example.evil/gateway/a")
    assert SpiffeIdPattern("spiffe://prod.example/a").matches("spiffe://prod.example/a")
