"""The server's own identity: its X.509-SVID, private key and the trust bundles.

An :class:`IdentitySource` hands out immutable :class:`IdentitySnapshot` values and
pushes a new one to subscribers whenever anything changes (a rotated SVID, a new
or removed federated bundle). The server builds its TLS credentials and its
:class:`pdp.identity.peer.PeerVerifier` bundle provider from the current snapshot.

Sources:

* :class:`StaticFileSource` - PEM files on disk (e.g. written by spiffe-helper);
  :meth:`StaticFileSource.reload` re-reads them, each bundle file on its own.
* :class:`DevSource` - the self-managed dev CA of ``pdp serve --dev``.
* :class:`WorkloadApiSource` - the SPIFFE Workload API through py-spiffe's ``X509Source``.

Every source keeps its last good SVID when an update cannot be used, and logs why. Trust
is the exception: a bundle file that is removed or can no longer be read stops the
trust in its trust domain at once (fail closed, never "keep trusting the old roots"),
without holding up the other bundles or the rotation of the server's own SVID; the
snapshot names it in ``untrusted`` (health and ``GetStatus`` show it).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from spiffe import X509Source
from spiffe.errors import PySpiffeError

from pdp.identity.bundles import BundleError, TrustDomainBundles, load_bundle_file
from pdp.identity.devca import DEV_TRUST_DOMAIN, DevState, ensure_dev_state
from pdp.identity.spiffe_id import InvalidSpiffeId, parse_spiffe_id

log = logging.getLogger(__name__)


class IdentityError(Exception):
    """The server's own identity could not be loaded; the message says from where and why."""


@dataclass(frozen=True)
class IdentitySnapshot:
    """One consistent view of the server identity. Build with :meth:`from_pem`."""

    cert_chain_pem: bytes  # leaf first, then intermediates
    private_key_pem: bytes = field(repr=False)
    spiffe_id: str
    bundles: TrustDomainBundles
    not_after: datetime  # the leaf's; serving past it means serving an expired certificate
    # Configured trust domains whose bundle could not be read: (trust domain, why), sorted.
    # Their callers are refused until the bundle is back.
    untrusted: tuple[tuple[str, str], ...] = ()

    @property
    def trust_domain(self) -> str:
        return parse_spiffe_id(self.spiffe_id).trust_domain

    def trust_summary(self) -> tuple[bool, str]:
        """(ok, detail) for health: ok unless no trust domain at all can be verified;
        the detail names every trust domain not trusted because its bundle is unreadable."""
        trusted = ", ".join(td for td, roots in self.bundles.items() if roots) or "none"
        detail = f"trusting {trusted}"
        if self.untrusted:
            detail += "; NOT trusting " + "; ".join(f"{td} ({why})" for td, why in self.untrusted)
        return any(self.bundles.values()), detail

    @classmethod
    def from_pem(
        cls,
        cert_chain_pem: bytes,
        private_key_pem: bytes,
        bundles: TrustDomainBundles,
        untrusted: tuple[tuple[str, str], ...] = (),
    ) -> IdentitySnapshot:
        """Validates that the chain, the key and the SPIFFE ID belong together."""
        try:
            chain = x509.load_pem_x509_certificates(cert_chain_pem)
        except ValueError:
            raise IdentityError(
                "SVID certificate chain is not a PEM list of X.509 certificates (a"
                " CERTIFICATE block is truncated or does not decode)"
            ) from None
        leaf = chain[0]
        try:
            key = serialization.load_pem_private_key(private_key_pem, password=None)
        except (ValueError, TypeError):
            raise IdentityError(
                "SVID private key is not an unencrypted PEM private key (PKCS#8, SEC 1 or"
                " PKCS#1) of a supported type"
            ) from None
        if key.public_key() != leaf.public_key():
            raise IdentityError("SVID private key does not match the SVID certificate")
        try:
            san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            uris = san.get_values_for_type(x509.UniformResourceIdentifier)
        except x509.ExtensionNotFound:
            uris = []
        if len(uris) != 1:
            raise IdentityError(f"SVID must have exactly one URI SAN, it has {len(uris)}")
        try:
            spiffe_id = parse_spiffe_id(uris[0], require_path=True)
        except InvalidSpiffeId as exc:
            raise IdentityError(f"SVID URI SAN is not a valid SPIFFE ID: {exc}") from None
        if bundles.for_trust_domain(spiffe_id.trust_domain) is None:
            # Not fatal (a PDP may serve only federated callers) but almost always a mistake.
            log.warning("no trust bundle for the server's own trust domain %s", spiffe_id)
        return cls(
            cert_chain_pem=cert_chain_pem,
            private_key_pem=private_key_pem,
            spiffe_id=str(spiffe_id),
            bundles=bundles,
            not_after=leaf.not_valid_after_utc,
            untrusted=untrusted,
        )


SnapshotCallback = Callable[[IdentitySnapshot], None]


class IdentitySource(Protocol):
    """Where the server's identity comes from. Use as a context manager."""

    def current(self) -> IdentitySnapshot:
        """The latest good snapshot (never blocks on I/O)."""
        ...

    def subscribe(self, callback: SnapshotCallback) -> None:
        """``callback(snapshot)`` runs after every change, on the source's thread."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class _Publisher:
    """Holds the current snapshot and notifies subscribers when it changes."""

    def __init__(self, first: IdentitySnapshot) -> None:
        self._snapshot = first
        self._subscribers: list[SnapshotCallback] = []
        self._lock = threading.Lock()

    def current(self) -> IdentitySnapshot:
        with self._lock:
            return self._snapshot

    def subscribe(self, callback: SnapshotCallback) -> None:
        with self._lock:
            self._subscribers.append(callback)

    def _publish(self, snapshot: IdentitySnapshot) -> bool:
        with self._lock:
            if snapshot == self._snapshot:
                return False
            self._snapshot = snapshot
            subscribers = list(self._subscribers)
        log.info("identity updated: %s (valid until %s)", snapshot.spiffe_id, snapshot.not_after)
        for callback in subscribers:
            try:
                callback(snapshot)
            except Exception:
                log.exception("identity subscriber %r failed", callback)
        return True

    def close(self) -> None:
        pass

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class StaticFileSource(_Publisher):
    """SVID, key and bundles from files. ``bundle_files`` maps trust domain -> file
    (PEM or SPIFFE bundle JSON); the server's own trust domain belongs in it too.

    Each bundle file is read on its own: one that is missing, unreadable or garbled
    leaves its trust domain untrusted (logged; ``untrusted`` in the snapshot) and the
    others as they are. The SVID and key must be usable at start; later, a pair that
    cannot be used (a key rotated before its certificate) keeps the current SVID.
    """

    def __init__(
        self,
        cert_file: str | os.PathLike[str],
        key_file: str | os.PathLike[str],
        bundle_files: Mapping[str, str | os.PathLike[str]],
    ) -> None:
        self._cert_file = Path(cert_file)
        self._key_file = Path(key_file)
        self._bundle_files = {td: Path(path) for td, path in bundle_files.items()}
        bundles, untrusted = self._read_bundles()
        if untrusted and not bundles:
            raise IdentityError(
                "no trust bundle can be read: " + "; ".join(f"{td}: {why}" for td, why in untrusted)
            )
        _log_trust_changes((), untrusted)
        super().__init__(self._read_svid(bundles, untrusted))

    def reload(self) -> bool:
        """Re-reads the files; notifies and returns True if anything changed.

        The bundles always take effect (an unreadable one as an untrusted trust
        domain). Raises :class:`IdentityError`, keeping the current SVID, if the SVID
        files are unreadable or inconsistent, e.g. a key rotated before its certificate.
        """
        current = self.current()
        bundles, untrusted = self._read_bundles()
        _log_trust_changes(current.untrusted, untrusted)
        try:
            snapshot = self._read_svid(bundles, untrusted)
        except IdentityError:
            self._publish(replace(current, bundles=bundles, untrusted=untrusted))
            raise
        return self._publish(snapshot)

    def _read_bundles(self) -> tuple[TrustDomainBundles, tuple[tuple[str, str], ...]]:
        loaded: dict[str, tuple[x509.Certificate, ...]] = {}
        untrusted: list[tuple[str, str]] = []
        for trust_domain, path in self._bundle_files.items():
            try:
                loaded[trust_domain] = load_bundle_file(path)
            except FileNotFoundError:
                untrusted.append((trust_domain, f"bundle file {path} is missing"))
            except OSError as exc:
                untrusted.append((trust_domain, f"bundle file {path} unreadable: {exc.strerror}"))
            except BundleError as exc:
                untrusted.append((trust_domain, f"bundle unusable: {exc}"))
        try:
            bundles = TrustDomainBundles(loaded)
        except BundleError as exc:  # a trust domain name the configuration let through
            raise IdentityError(f"trust bundles: {exc}") from None
        return bundles, tuple(sorted(untrusted))

    def _read_svid(
        self, bundles: TrustDomainBundles, untrusted: tuple[tuple[str, str], ...]
    ) -> IdentitySnapshot:
        try:
            cert = self._cert_file.read_bytes()
            key = self._key_file.read_bytes()
        except OSError as exc:
            raise IdentityError(f"cannot read identity files: {exc}") from None
        return IdentitySnapshot.from_pem(cert, key, bundles, untrusted)


def _log_trust_changes(
    before: tuple[tuple[str, str], ...], after: tuple[tuple[str, str], ...]
) -> None:
    was, now = dict(before), dict(after)
    for trust_domain, why in now.items():
        if was.get(trust_domain) != why:
            log.error("not trusting %s any more: %s; its callers are refused", trust_domain, why)
    for trust_domain in was.keys() - now.keys():
        log.warning("trusting %s again: its bundle file is readable", trust_domain)


class DevSource(StaticFileSource):
    """The dev CA's server SVID (see :func:`pdp.identity.devca.ensure_dev_state`).

    :meth:`reload` first re-issues SVIDs that are near expiry, so calling it
    periodically keeps a long-running dev server valid.
    """

    def __init__(
        self, state_dir: str | os.PathLike[str], trust_domain: str = DEV_TRUST_DOMAIN
    ) -> None:
        self.state: DevState = ensure_dev_state(state_dir, trust_domain)
        super().__init__(
            self.state.server_cert_file,
            self.state.server_key_file,
            {trust_domain: self.state.bundle_file},
        )

    def reload(self) -> bool:
        ensure_dev_state(self.state.state_dir, self.state.trust_domain)
        return super().reload()


class WorkloadApiSource(_Publisher):
    """The SPIFFE Workload API (SPIRE agent) via py-spiffe's ``X509Source``.

    ``socket`` is ``unix:/path`` or a bare path; ``None`` reads ``SPIFFE_ENDPOINT_SOCKET``.
    The constructor waits up to ``timeout`` seconds for the first SVID and raises
    :class:`IdentityError` without one (the server must not start unidentified).

    Each Workload API message carries the full state, so a federated bundle missing
    from an update is dropped from the snapshot. An update that cannot be used
    (e.g. an SVID failing the strict SPIFFE ID grammar) is logged and ignored.
    py-spiffe retries UNAVAILABLE and PERMISSION_DENIED on its own, but gives up for
    good on some errors (INVALID_ARGUMENT, an empty SVID list); a watchdog then
    reopens the source. Meanwhile the last snapshot stays current: callers should
    stop serving once ``current().not_after`` has passed.
    """

    def __init__(
        self,
        socket: str | None = None,
        *,
        timeout: float = 10.0,
        reconnect_interval: float = 1.0,
    ) -> None:
        if socket is not None and "://" not in socket and not socket.startswith("unix:"):
            socket = f"unix:{socket}"
        self._socket = socket
        self._timeout = timeout
        self._reconnect_interval = reconnect_interval
        self._closed = threading.Event()
        self._x509, first = self._open()
        super().__init__(first)
        self._watchdog = threading.Thread(
            target=self._watch, name="pdp-workload-api-watchdog", daemon=True
        )
        self._watchdog.start()

    @property
    def socket(self) -> str | None:
        """The Workload API address (None: ``SPIFFE_ENDPOINT_SOCKET``)."""
        return self._socket

    def close(self) -> None:
        self._closed.set()
        self._x509.close()
        if self._watchdog is not threading.current_thread():
            self._watchdog.join(timeout=5)

    # -- internals --------------------------------------------------------
    def _open(self) -> tuple[X509Source, IdentitySnapshot]:
        try:
            source = X509Source(socket_path=self._socket, timeout_in_seconds=self._timeout)
        except PySpiffeError as exc:
            raise IdentityError(f"Workload API: {exc}") from None
        try:
            first = self._snapshot_of(source)
        except IdentityError:
            source.close()
            raise
        source.subscribe_for_updates(lambda: self._on_update(source))
        return source, first

    @staticmethod
    def _snapshot_of(source: X509Source) -> IdentitySnapshot:
        try:
            context = source.get_x509_context()
            svid = context.default_svid
            chain = b"".join(
                cert.public_bytes(serialization.Encoding.PEM) for cert in svid.cert_chain
            )
            key = svid.private_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            bundles = TrustDomainBundles.from_x509_bundle_set(context.x509_bundle_set)
        except (PySpiffeError, BundleError, ValueError) as exc:
            raise IdentityError(f"Workload API update unusable: {exc}") from None
        return IdentitySnapshot.from_pem(chain, key, bundles)

    def _on_update(self, source: X509Source) -> None:
        if self._closed.is_set():
            return
        try:
            snapshot = self._snapshot_of(source)
        except IdentityError as exc:
            log.error("%s; keeping the identity valid until %s", exc, self.current().not_after)
            return
        self._publish(snapshot)

    def _watch(self) -> None:
        delay = self._reconnect_interval
        while not self._closed.wait(delay):
            if not self._x509.is_closed():
                delay = self._reconnect_interval
                continue
            log.error(
                "Workload API source stopped; reconnecting (current SVID valid until %s)",
                self.current().not_after,
            )
            try:
                source, snapshot = self._open()
            except IdentityError as exc:
                log.error("Workload API reconnect failed: %s", exc)
                delay = min(delay * 2, 30.0)
                continue
            if self._closed.is_set():
                source.close()
                return
            self._x509 = source
            self._publish(snapshot)
            delay = self._reconnect_interval
