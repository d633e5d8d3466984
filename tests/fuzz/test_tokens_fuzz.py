"""Fuzzing the token parsers: signed intents and JWT-SVIDs, arbitrary and mutated."""

from __future__ import annotations

import base64
import json
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from tests.fuzz import targets
from tests.fuzz.strategies import json_documents

b64_alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
segments = st.text(alphabet=b64_alphabet, max_size=60)
compactish = st.builds(lambda parts: ".".join(parts), st.lists(segments, min_size=1, max_size=5))


def b64(value: Any) -> str:
    data = json.dumps(value, default=str).encode()
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@given(st.text(max_size=200) | compactish)
@example("e30.e30.")
@example("eyJhbGciOiJub25lIn0.e30.")
def test_any_text_as_a_signed_intent_or_a_jwt_svid(text: str) -> None:
    targets.check_intent_token(text)
    targets.check_agent_svid(text)


@given(json_documents, json_documents, segments)
def test_any_header_and_claims(header: Any, claims: Any, signature: str) -> None:
    token = f"{b64(header)}.{b64(claims)}.{signature}"
    targets.check_intent_token(token)
    targets.check_agent_svid(token)


@given(st.sampled_from(["intent", "svid"]), st.data())
def test_a_valid_token_with_characters_changed(kind: str, data: st.DataObject) -> None:
    original = targets.valid_intent_token() if kind == "intent" else targets.valid_agent_svid()
    token = list(original)
    for _ in range(data.draw(st.integers(1, 3))):
        position = data.draw(st.integers(0, len(token) - 1))
        token[position] = data.draw(st.sampled_from([*b64_alphabet, ".", "=", " ", "\u00e9"]))
    mutated = "".join(token)
    check = targets.check_intent_token if kind == "intent" else targets.check_agent_svid
    check(mutated, original)


@given(st.sampled_from(["intent", "svid"]), st.dictionaries(st.text(max_size=8), json_documents))
def test_validly_signed_tokens_with_any_extra_claims(kind: str, extra: dict[str, Any]) -> None:
    """What an issuer's key signs is still checked: hostile claim values never crash."""
    if kind == "intent":
        token = targets.valid_intent_token(**extra)
        targets.check_intent_token(token, token)
    else:
        token = targets.valid_agent_svid(**extra)
        targets.check_agent_svid(token, token)


def test_the_valid_tokens_are_accepted() -> None:
    """The mutation properties are only meaningful if the originals pass."""
    token = targets.valid_intent_token()
    proven, denial = targets.prover().prove(targets._payment(intent={"token": token}), targets.NOW)
    assert denial is None and proven.proof.intent_issuer == targets.ISSUER
    svid = targets.valid_agent_svid()
    proven, denial = targets.prover().prove(
        targets._payment(agent_svid=svid, intent={"purpose": "p", "tools": ["payments/*"]}),
        targets.NOW,
    )
    assert denial is None and proven.proof.agent_proven
