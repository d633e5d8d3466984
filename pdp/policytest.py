"""Policy unit tests (`pdp test`), in the spirit of `opa test` and Cerbos test suites.

A suite is a YAML or JSON file named ``*.test.yaml``, ``*.test.yml`` or ``*.test.json``::

    name: support bot
    defaults:                       # merged into every case's request (optional)
      agent: spiffe://acme.test/agent/support-bot
      time: "2026-11-23T10:00:00Z"
    cases:
      - name: reads a ticket
        request: {server: crm, tool: get_ticket, arguments: {ticket_id: T-1},
                  intent: {purpose: triage, tools: [crm/get_ticket]}}
        expect: allow               # allow | deny
        policies: [support.read_tickets]   # optional: exactly these reason ids
      - name: pays under a signed intent, proven
        request: {server: payments, tool: create_payment, ...}
        proof: {intent_issuer: https://approvals.acme.test, agent_proven: true}
        expect: allow

``proof`` stands for tokens pdp verified (pdp.proof): the request's intent counts as
signed by ``intent_issuer`` and the agent as proven by its JWT-SVID. The signatures
themselves are tested by pdp's own suite; a policy suite tests what policies make of
them.

Cases without a ``time`` use a fixed instant, so suites are deterministic.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from pdp.engine import Engine
from pdp.model import NO_PROOF, Decision, Proof, RequestError, parse_request

SUITE_PATTERNS = ("*.test.yaml", "*.test.yml", "*.test.json")
FIXED_TIME = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


class SuiteError(ValueError):
    """A test file cannot be read or does not follow the format."""


@dataclass(frozen=True, slots=True)
class CaseResult:
    suite: str
    name: str
    passed: bool
    expected: dict[str, Any]
    actual: dict[str, Any]

    def diff(self) -> str:
        want = json.dumps(self.expected, indent=2, sort_keys=True).splitlines()
        got = json.dumps(self.actual, indent=2, sort_keys=True).splitlines()
        return "\n".join(difflib.unified_diff(want, got, "expected", "actual", lineterm="", n=2))


def discover(directory: Path) -> list[Path]:
    found: set[Path] = set()
    for pattern in SUITE_PATTERNS:
        found.update(directory.rglob(pattern))
    return sorted(found)


def _load(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as exc:
        raise SuiteError(f"{path}: cannot read test suite: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("cases"), list):
        raise SuiteError(f"{path}: a test suite is an object with a 'cases' list")
    return data


def _summary(decision: Decision, with_policies: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"decision": decision.effect.value}
    if with_policies:
        out["policies"] = sorted(r.policy for r in decision.reasons)
    return out


def _proof(path: Path, name: str, value: Any) -> Proof:
    if value is None:
        return NO_PROOF
    if not isinstance(value, dict) or set(value) - {"intent_issuer", "agent_proven"}:
        raise SuiteError(
            f"{path}: case {name!r}: 'proof' is {{intent_issuer: ISSUER, agent_proven: BOOL}}"
        )
    issuer, proven = value.get("intent_issuer", ""), value.get("agent_proven", False)
    if not isinstance(issuer, str) or not isinstance(proven, bool):
        raise SuiteError(
            f"{path}: case {name!r}: proof.intent_issuer is a string,"
            " proof.agent_proven true or false"
        )
    return Proof(intent_issuer=issuer, agent_proven=proven)


def _decide(engine: Engine, data: dict[str, Any], proof: Proof) -> Decision:
    try:
        request = parse_request(data, now=FIXED_TIME, limits=engine.limits)
    except RequestError as exc:
        return engine.invalid(exc)
    if proof != NO_PROOF:
        request = dataclasses.replace(request, proof=proof)
    return engine.decide(request)


def run_suite(engine: Engine, path: Path) -> Iterator[CaseResult]:
    data = _load(path)
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise SuiteError(f"{path}: 'defaults' must be an object")
    suite = str(data.get("name") or path.name)
    for index, case in enumerate(data["cases"]):
        if not isinstance(case, dict) or not isinstance(case.get("request"), dict):
            raise SuiteError(f"{path}: case {index} needs a 'request' object")
        name = str(case.get("name") or f"case {index}")
        expect = case.get("expect")
        if expect not in ("allow", "deny"):
            raise SuiteError(f"{path}: case {name!r}: 'expect' must be 'allow' or 'deny'")
        policies = case.get("policies")
        if policies is not None and not (
            isinstance(policies, list) and all(isinstance(p, str) for p in policies)
        ):
            raise SuiteError(f"{path}: case {name!r}: 'policies' must be a list of @id strings")
        request = {**defaults, **case["request"]}
        decision = _decide(engine, request, _proof(path, name, case.get("proof")))
        expected: dict[str, Any] = {"decision": expect}
        if policies is not None:
            expected["policies"] = sorted(policies)
        actual = _summary(decision, policies is not None)
        if decision.errors or actual != expected:
            actual = {**actual, "reasons": [r.to_json() for r in decision.reasons]}
            if decision.errors:
                actual["errors"] = list(decision.errors)
        passed = actual.get("decision") == expected["decision"] and actual.get(
            "policies"
        ) == expected.get("policies")
        yield CaseResult(suite, name, passed, expected, actual)


def run_suites(engine: Engine, paths: Iterable[Path]) -> list[CaseResult]:
    results: list[CaseResult] = []
    for path in paths:
        results.extend(run_suite(engine, path))
    return results
