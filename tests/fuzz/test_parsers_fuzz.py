"""Fuzzing SPIFFE ID parsing and audit line parsing."""

from __future__ import annotations

import json

from hypothesis import example, given
from hypothesis import strategies as st

from pdp.audit.chain import encode_body, seal
from tests.fuzz import targets
from tests.fuzz.strategies import json_values, spiffe_ids

# Text close to SPIFFE IDs: the grammar's own characters and the ones it forbids.
near_spiffe = st.builds(
    lambda prefix, rest: prefix + rest,
    st.sampled_from(["spiffe://", "SPIFFE://", "spiffe:/", "spiffe://acme.test", ""]),
    st.text(alphabet="abcAZ09.-_/:%@?#*\u00e9\x00 ", max_size=40),
)


@given(st.text(max_size=80) | near_spiffe | spiffe_ids)
@example("spiffe://acme.test/a/%2e%2e")
@example("spiffe://acme.test/" + "a" * 3000)
@example("spiffe://acme.test/agent/*")
def test_spiffe_ids_parse_or_raise_invalid_spiffe_id(text: str) -> None:
    targets.spiffe_id_text(text)


@given(spiffe_ids)
def test_valid_spiffe_ids_round_trip(text: str) -> None:
    targets.spiffe_id_text(text)
    from pdp.identity.spiffe_id import parse_spiffe_id

    assert str(parse_spiffe_id(text, require_path=True)) == text


@given(st.binary(max_size=300))
def test_arbitrary_bytes_as_an_audit_line(raw: bytes) -> None:
    targets.audit_line(raw)


@given(json_values, st.data())
def test_sealed_lines_with_any_body_and_any_tampering(body: object, data: st.DataObject) -> None:
    """A hash-correct line around any JSON value (what someone with the hash function
    could write), then the same line with bytes changed."""
    record = body if isinstance(body, dict) else {"v": body}
    try:
        encoded = encode_body({str(k): v for k, v in record.items()})
    except (ValueError, TypeError):
        encoded = json.dumps({"kind": "decision"}).encode()
    line, _ = seal(encoded, data.draw(st.integers(-1, 3)), "0" * 64)
    line = line.rstrip(b"\n")
    targets.audit_line(line)
    tampered = bytearray(line)
    position = data.draw(st.integers(0, len(tampered) - 1))
    tampered[position] = data.draw(st.integers(0, 255))
    targets.audit_line(bytes(tampered))
