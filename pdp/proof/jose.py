"""Reading and verifying compact JWS tokens (signed intents, JWT-SVIDs) with joserfc.

pdp writes no signature code: joserfc verifies, with the one algorithm the token names
passed as its allow-list and the one key the token's ``kid`` selects from the keys pdp
was configured with. What happens before that is pdp's: the token's size, its shape,
and its header, read without trusting it, so that each known attack is refused by name
rather than as a generic bad signature:

* ``alg: none`` (any case) -> ``alg_none``;
* ``HS256``/``HS384``/``HS512`` -> ``alg_confusion``: every key pdp holds is a public
  key, and an HMAC "signature" made with a public key as its secret proves nothing;
* any other algorithm outside :data:`ALGORITHMS` -> ``alg_not_allowed``;
* a ``crit`` header -> ``malformed`` (pdp understands no extension);
* no ``kid``, or a ``kid`` none of the keys has -> ``unknown_key``.

Claims (expiry, audience, subject) are checked by the callers, each with its own code.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, OKPKey, RSAKey

# JWT-SVID.md section 3 (RS/ES/PS) plus EdDSA for intent issuers. Never HS*, never none.
ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512", "EdDSA"}
)
_HMAC = frozenset({"HS256", "HS384", "HS512"})
_KEY_TYPES = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}
# A compact JWS of a few claims is well under 2 KiB; the limit is configurable.
DEFAULT_MAX_TOKEN_BYTES = 8 * 1024

PublicKey = RSAKey | ECKey | OKPKey
_KEY_MEMBERS = frozenset({"kty", "crv", "x", "y", "n", "e"})
KEY_CLASSES: dict[str, type[RSAKey] | type[ECKey] | type[OKPKey]] = {
    "RSA": RSAKey,
    "EC": ECKey,
    "OKP": OKPKey,
}


class TokenRejected(Exception):
    """A token failed a check. ``code`` is short and stable (``expired``,
    ``alg_none``…); callers prefix it (``intent_``, ``agent_svid_``) into a reason code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class UnverifiedToken:
    """A token's header and claims as read, before any signature check."""

    text: str
    header: Mapping[str, Any]
    claims: Mapping[str, Any]
    sha256: str  # of the token's text: what the audit log keeps

    @property
    def alg(self) -> str:
        return str(self.header.get("alg", ""))

    @property
    def kid(self) -> str:
        kid = self.header.get("kid")
        return kid if isinstance(kid, str) else ""


def token_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _b64json(part: str, what: str) -> Any:
    try:
        raw = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError):
        raise TokenRejected("malformed", f"the {what} is not base64url") from None

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise TokenRejected("malformed", f"the {what} repeats the member {key!r}")
            out[key] = value
        return out

    try:
        value = json.loads(raw, object_pairs_hook=no_duplicates)
    except (ValueError, RecursionError) as exc:
        if isinstance(exc, TokenRejected):
            raise
        raise TokenRejected("malformed", f"the {what} is not JSON") from None
    if not isinstance(value, dict):
        raise TokenRejected("malformed", f"the {what} is not a JSON object")
    return value


def read_token(text: object, max_bytes: int = DEFAULT_MAX_TOKEN_BYTES) -> UnverifiedToken:
    """Splits a compact JWS and reads its header and claims; checks the header's
    algorithm. Raises :class:`TokenRejected`; never verifies the signature."""
    if not isinstance(text, str):
        raise TokenRejected("malformed", "a token must be a string (compact JWS)")
    if len(text) > max_bytes or len(text.encode("utf-8", "surrogatepass")) > max_bytes:
        raise TokenRejected("too_large", f"the token is longer than {max_bytes} bytes")
    if not text.isascii():
        raise TokenRejected("malformed", "a compact JWS is ASCII (base64url parts and dots)")
    parts = text.split(".")
    if len(parts) != 3:
        raise TokenRejected(
            "malformed", f"a compact JWS has 3 dot-separated parts, this has {len(parts)}"
        )
    header = _b64json(parts[0], "JOSE header")
    claims = _b64json(parts[1], "claims set")
    token = UnverifiedToken(text, header, claims, token_sha256(text))
    alg = header.get("alg")
    if not isinstance(alg, str) or not alg:
        raise TokenRejected("malformed", "the header has no 'alg'")
    if alg.lower() == "none":
        raise TokenRejected("alg_none", "'alg: none' (an unsigned token) is never accepted")
    if alg in _HMAC:
        raise TokenRejected(
            "alg_confusion",
            f"'{alg}' (HMAC) is refused: pdp holds only public keys, and an HMAC made with"
            " a public key proves nothing",
        )
    if alg not in ALGORITHMS:
        raise TokenRejected(
            "alg_not_allowed",
            f"algorithm {alg[:20]!r} is not one of {', '.join(sorted(ALGORITHMS))}",
        )
    if "crit" in header:
        raise TokenRejected(
            "malformed", "the header has 'crit' extensions, which pdp does not support"
        )
    if not parts[2]:
        raise TokenRejected("malformed", "the token has an empty signature")
    return token


def verify_signature(token: UnverifiedToken, keys: Mapping[str, PublicKey]) -> None:
    """Checks the signature with the key named by the token's ``kid``, for its ``alg``
    only. Raises :class:`TokenRejected` (``unknown_key``, ``alg_confusion``,
    ``bad_signature``)."""
    if not token.kid:
        raise TokenRejected("unknown_key", "the token has no 'kid' naming its signing key")
    key = keys.get(token.kid)
    if key is None:
        raise TokenRejected("unknown_key", f"no trusted key has kid {token.kid[:64]!r}")
    expected_type = _KEY_TYPES.get(token.alg[:2])
    if key.key_type != expected_type:
        raise TokenRejected(
            "alg_confusion",
            f"'{token.alg}' does not fit key {token.kid[:64]!r}, a {key.key_type} key",
        )
    try:
        jws.deserialize_compact(token.text, key, algorithms=[token.alg])
    except JoseError as exc:
        raise TokenRejected(
            "bad_signature", f"the signature does not verify ({exc.error})"
        ) from None
    except (ValueError, TypeError):
        raise TokenRejected("bad_signature", "the signature does not verify") from None


def parse_jwks(data: Any, source: str, *, use: str | None = None) -> dict[str, PublicKey]:
    """The public keys of a JWK Set by ``kid``. Keys with a ``use`` other than ``use``
    (when given) are skipped, as the SPIFFE bundle format requires; a key without a
    ``kid``, a private or symmetric key, or a repeated ``kid`` rejects the whole set."""
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise ValueError(f'{source}: a JWK Set is a JSON object with a "keys" array')
    keys: dict[str, PublicKey] = {}
    for index, entry in enumerate(data["keys"]):
        where = f"{source}: keys[{index}]"
        if not isinstance(entry, dict):
            raise ValueError(f"{where} is not an object")
        if use is not None and entry.get("use") != use:
            continue
        kid = entry.get("kid")
        if not isinstance(kid, str) or not kid:
            raise ValueError(f"{where} has no 'kid'")
        if kid in keys:
            raise ValueError(f"{where}: kid {kid!r} appears twice")
        kty = entry.get("kty")
        key_class = KEY_CLASSES.get(str(kty))
        if key_class is None:
            raise ValueError(f"{where}: key type {kty!r} is not RSA, EC or OKP (no symmetric keys)")
        if any(member in entry for member in ("d", "p", "q", "k")):
            raise ValueError(f"{where} ({kid}) is a private key: publish only public keys")
        try:
            # Only the key's own members: SPIFFE's ``use: jwt-svid`` is not a JOSE ``use``.
            material = {k: v for k, v in entry.items() if k in _KEY_MEMBERS}
            keys[kid] = key_class.import_key(material, parameters={"kid": kid})
        except (JoseError, ValueError, TypeError) as exc:
            raise ValueError(f"{where} ({kid}) is not a usable public key: {exc}") from None
    return keys
