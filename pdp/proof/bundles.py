"""JWT bundles per trust domain, for verifying JWT-SVIDs: from files or the Workload API.

Keys are always taken from the bundle of the JWT-SVID's *own* trust domain (the trust
domain of its ``sub``), never pooled: a key of ``partner.test`` can never vouch for an
agent of ``acme.test`` (JWT-SVID.md section 4; py-spiffe leaves that choice to its
caller, see pdp.proof.verify).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from cryptography.hazmat.primitives import serialization
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, OKPKey, RSAKey
from spiffe import JwtSource, TrustDomain
from spiffe.errors import PySpiffeError

from pdp.proof.jose import PublicKey
from pdp.proof.keys import Keys
from pdp.proof.verify import NoJwtBundles

log = logging.getLogger(__name__)


def _joserfc_key(kid: str, key: Any) -> PublicKey | None:
    """A cryptography public key as a joserfc key, or None for a kind pdp does not use."""
    pem = key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for key_class in (ECKey, RSAKey, OKPKey):
        try:
            return key_class.import_key(pem, parameters={"kid": kid})
        except (JoseError, ValueError, TypeError):
            continue
    return None


class WorkloadApiJwtBundles:
    """The JWT bundles the SPIFFE Workload API pushes (py-spiffe's ``JwtSource``): the
    agent's trust domain and every federated one, updated as the agent rotates keys.

    The constructor waits up to ``timeout`` seconds for the first bundles. While the
    stream is down the last bundles stay in force (py-spiffe retries); a source that
    gave up answers no trust domain, so every JWT-SVID is denied, never accepted.
    """

    def __init__(self, socket: str | None = None, *, timeout: float = 10.0) -> None:
        if socket is not None and "://" not in socket and not socket.startswith("unix:"):
            socket = f"unix:{socket}"
        try:
            self._source = JwtSource(socket_path=socket, timeout_in_seconds=timeout)
        except PySpiffeError as exc:
            raise ValueError(f"Workload API JWT bundles: {exc}") from None
        self._lock = threading.Lock()
        self._converted: dict[str, tuple[object, Keys]] = {}

    def keys_for(self, trust_domain: str) -> Keys | None:
        try:
            bundle = self._source.get_bundle_for_trust_domain(TrustDomain(trust_domain))
        except (PySpiffeError, ValueError) as exc:
            log.error("Workload API JWT bundles unavailable: %s", exc)
            return None
        if bundle is None:
            return None
        with self._lock:
            cached = self._converted.get(trust_domain)
            if cached is not None and cached[0] is bundle:
                return cached[1]
        keys: dict[str, PublicKey] = {}
        for kid, public_key in bundle.jwt_authorities.items():
            converted = _joserfc_key(kid, public_key)
            if converted is not None:
                keys[kid] = converted
        frozen: Keys = MappingProxyType(keys)
        with self._lock:
            self._converted[trust_domain] = (bundle, frozen)
        return frozen

    def close(self) -> None:
        self._source.close()


class FileJwtBundles:
    """JWT bundles from files (SPIFFE bundle format, keys with ``use: jwt-svid``)."""

    def __init__(self, files: Mapping[str, Any], *, check_interval_s: float = 5.0) -> None:
        from pdp.proof.keys import KeyFiles

        self._files = KeyFiles(files, use="jwt-svid", check_interval_s=check_interval_s)

    def keys_for(self, trust_domain: str) -> Keys | None:
        return self._files.keys_for(trust_domain)

    def close(self) -> None:
        pass


def open_jwt_bundles(
    files: Mapping[str, Any],
    *,
    workload_api_socket: str | None,
    use_workload_api: bool,
    check_interval_s: float = 5.0,
    timeout: float = 10.0,
) -> FileJwtBundles | WorkloadApiJwtBundles | NoJwtBundles:
    """JWT bundles from ``files`` when any are configured; else the Workload API's when
    the server's identity comes from it; else none (every JWT-SVID is then denied)."""
    if files:
        return FileJwtBundles(files, check_interval_s=check_interval_s)
    if use_workload_api:
        try:
            return WorkloadApiJwtBundles(workload_api_socket, timeout=timeout)
        except ValueError as exc:
            log.error("%s; no JWT-SVID can be verified (agent_svid_* denies)", exc)
    return NoJwtBundles()
