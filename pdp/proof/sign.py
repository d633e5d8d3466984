"""Making tokens: signed intents for tests and demos (``pdp intent sign``), and the dev
issuer whose key lives in the dev state beside the dev CA. Production intents come
from an approval service with its own keys; pdp only ever needs their public half.
"""

from __future__ import annotations

import fcntl
import json
import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from joserfc import jwt
from joserfc.jwk import ECKey, OKPKey, RSAKey

from pdp.identity.devca import DevState

PrivateKey = RSAKey | ECKey | OKPKey
DEFAULT_LIFETIME_S = 300


def sign_token(
    claims: Mapping[str, Any],
    key: PrivateKey,
    *,
    alg: str = "ES256",
    kid: str | None = None,
    typ: str | None = "JWT",
    extra_header: Mapping[str, Any] | None = None,
) -> str:
    """A compact JWS of ``claims`` (joserfc signs)."""
    header: dict[str, Any] = {"alg": alg, "kid": kid if kid is not None else key.kid}
    if typ:
        header["typ"] = typ
    if header["kid"] is None:
        del header["kid"]
    header.update(extra_header or {})
    return jwt.encode(header, dict(claims), key, algorithms=[alg])


def intent_claims(
    *,
    issuer: str,
    agent: str,
    audience: str,
    purpose: str,
    tools: Sequence[str],
    now: datetime,
    lifetime_s: int = DEFAULT_LIFETIME_S,
    jti: str | None = None,
) -> dict[str, Any]:
    issued = int(now.timestamp())
    return {
        "iss": issuer,
        "sub": agent,
        "aud": audience,
        "purpose": purpose,
        "tools": list(tools),
        "iat": issued,
        "exp": issued + lifetime_s,
        "jti": jti or str(uuid.uuid4()),
    }


@dataclass(frozen=True, slots=True)
class DevIssuer:
    """The dev state's intent issuer: ``issuer`` is its ``iss``, ``jwks_file`` its
    public keys (what a server is configured with), ``key`` its private key."""

    issuer: str
    jwks_file: Path
    key: PrivateKey


def dev_issuer_name(state: DevState) -> str:
    return f"spiffe://{state.trust_domain}/intent-issuer"


def ensure_dev_issuer(state: DevState) -> DevIssuer:
    """Creates the dev issuer's key pair in the dev state once (ES256), then reuses it.
    The dev state's lock serialises workers and concurrent commands."""
    key_file = state.state_dir / "intent-issuer.jwk"
    jwks_file = state.state_dir / "intent-issuer.jwks.json"
    state.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    key: PrivateKey
    with open(state.state_dir / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            key = ECKey.import_key(json.loads(key_file.read_text()))
        except (OSError, ValueError):
            key = ECKey.generate_key("P-256", parameters={"kid": f"dev-{uuid.uuid4().hex[:8]}"})
            _write(key_file, json.dumps(key.as_dict(private=True)), 0o600)
        public = {"keys": [{**key.as_dict(private=False), "use": "sig", "alg": "ES256"}]}
        text = json.dumps(public, indent=2)
        if not jwks_file.exists() or jwks_file.read_text() != text:
            _write(jwks_file, text, 0o644)
    return DevIssuer(dev_issuer_name(state), jwks_file, key)


def _write(path: Path, text: str, mode: int) -> None:
    temporary = path.with_name(path.name + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.replace(temporary, path)
