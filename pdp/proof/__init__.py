"""Proof instead of assertion: signed intents and JWT-SVIDs, verified before deciding.

A gateway may send an intent as a token signed by an issuer pdp is configured with
(``intent.token``), and the agent's JWT-SVID for pdp's audience (``agent_svid``).
:class:`Prover` verifies both (pdp.proof.jose over joserfc), fills the request's
:class:`pdp.model.Proof`, which the Cedar context exposes (``context.intent.signed``,
``context.intent.issuer``, ``context.agent.proven``), and denies with a reason of its
own when a token fails or a proof the configuration requires is missing.
"""

from pdp.proof.config import IntentIssuer, ProofConfig, ProofConfigError, Requirement
from pdp.proof.verify import (
    REASON_AGENT_UNPROVEN,
    REASON_CODES,
    REASON_INTENT_UNSIGNED,
    Denial,
    JwtBundles,
    NoJwtBundles,
    Prover,
)

__all__ = [
    "REASON_AGENT_UNPROVEN",
    "REASON_CODES",
    "REASON_INTENT_UNSIGNED",
    "Denial",
    "IntentIssuer",
    "JwtBundles",
    "NoJwtBundles",
    "ProofConfig",
    "ProofConfigError",
    "Prover",
    "Requirement",
]
