"""What proof costs a decision: verifying a signed intent and a JWT-SVID, per request.

    .venv/bin/python bench/proof.py [--requests 2000] [--rounds 3]

In one run, over the example policies, the same payment request decided through the
decision core's steps (parse, prove, decide) four ways:

- plain:   an unsigned intent (the prover has nothing to check)
- intent:  a signed intent (ES256): read, verify, claims, jti remembered
- svid:    an unsigned intent and the agent's JWT-SVID (ES256), the same token with
           every call as an agent sends it: its signature is verified once per key
           set, its claims at every call
- both:    a signed intent and a JWT-SVID

and prints requests/s (best of the rounds) and each ratio to plain. Tokens are signed
before timing starts; every signed intent has its own jti (one decision per intent).
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from joserfc.jwk import ECKey  # noqa: E402

from pdp.engine import Engine, load_policies  # noqa: E402
from pdp.model import parse_request  # noqa: E402
from pdp.proof import ProofConfig, Prover  # noqa: E402
from pdp.proof.sign import intent_claims, sign_token  # noqa: E402

ISSUER = "https://approvals.acme.test"
AUDIENCE = "spiffe://acme.test/pdp"
AGENT = "spiffe://acme.test/agent/finance-bot"


class _Keys:
    def __init__(self, keys: dict[str, Any]) -> None:
        self._keys = keys

    def keys_for(self, name: str) -> Any:
        return self._keys.get(name)

    def close(self) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    engine = Engine(load_policies(REPO / "policies"))
    issuer_key = ECKey.generate_key("P-256", parameters={"kid": "i1"})
    agent_key = ECKey.generate_key("P-256", parameters={"kid": "a1"})
    now = datetime.now(UTC)

    def prover() -> Prover:
        return Prover(
            ProofConfig(max_remembered_jtis=10 * args.requests * args.rounds),
            audience=lambda: AUDIENCE,
            issuers=_Keys({ISSUER: {"i1": issuer_key}}),
            jwt_bundles=_Keys({"acme.test": {"a1": agent_key}}),
        )

    base = {
        "agent": AGENT,
        "server": "payments",
        "tool": "create_payment",
        "arguments": {"amount_cents": 900000, "currency": "EUR", "payee": "ACME"},
    }
    plain_intent = {"purpose": "pay", "tools": ["payments/create_payment"]}
    issued = int(now.timestamp())
    svid = sign_token({"sub": AGENT, "aud": [AUDIENCE], "exp": issued + 3600}, agent_key)

    def intents(count: int) -> list[dict[str, Any]]:
        claims = intent_claims(
            issuer=ISSUER, agent=AGENT, audience=AUDIENCE, purpose="pay",
            tools=["payments/create_payment"], now=now,
        )  # fmt: skip
        return [{"token": sign_token({**claims, "jti": f"j{i}"}, issuer_key)} for i in range(count)]

    kinds = {
        "plain": lambda n: [{**base, "intent": plain_intent} for _ in range(n)],
        "intent": lambda n: [{**base, "intent": t} for t in intents(n)],
        "svid": lambda n: [{**base, "intent": plain_intent, "agent_svid": svid} for _ in range(n)],
        "both": lambda n: [{**base, "intent": t, "agent_svid": svid} for t in intents(n)],
    }
    print("machine shared with other work: compare ratios, not absolute figures")
    best: dict[str, float] = {}
    for kind, make in kinds.items():
        rates = []
        for _ in range(args.rounds):
            datas = make(args.requests)
            checker = prover()
            started = time.perf_counter()
            for data in datas:
                request = parse_request(data, now=now)
                request, denial = checker.prove(request, now, engine.groups_of)
                assert denial is None, denial
                engine.decide(request)
            rates.append(args.requests / (time.perf_counter() - started))
        best[kind] = max(rates)
    for kind, rate in best.items():
        print(f"{kind:7s} {rate:10,.0f} requests/s   {rate / best['plain']:.2f} of plain")


if __name__ == "__main__":
    main()
