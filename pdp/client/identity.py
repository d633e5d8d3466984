"""Who a pdp client is (its X.509-SVID) and whom it accepts as the server.

Three sources, the same as ``pdp call``'s options: the SPIFFE Workload API (its SVID
and bundles follow rotation as the agent pushes them), files (re-read, when changed,
before each new connection, so a rotated file is picked up), or the dev CA of
``pdp serve --dev``. The server is accepted only under ``server_id`` and only through
the roots of *its* trust domain, so that no other trust domain's CA can vouch for it.
"""

from __future__ import annotations

import contextlib
import os
import ssl
import tempfile
import threading
from pathlib import Path

from cryptography.hazmat.primitives.serialization import Encoding

from pdp.client.errors import ClientConfigError
from pdp.client_options import ClientOptions
from pdp.identity.devca import DEV_TRUST_DOMAIN, DevState
from pdp.identity.sources import (
    IdentityError,
    IdentitySnapshot,
    IdentitySource,
    StaticFileSource,
    WorkloadApiSource,
)
from pdp.identity.spiffe_id import InvalidSpiffeId, parse_spiffe_id

DEFAULT_DEV_STATE_DIR = ".pdp-state"


def _server_trust_domain(server_id: str) -> str:
    try:
        return parse_spiffe_id(server_id, require_path=True).trust_domain
    except InvalidSpiffeId as exc:
        raise ClientConfigError(f"server ID {server_id!r}: {exc}") from None


class ClientIdentity:
    """The client's SVID source and the server's expected SPIFFE ID.

    Build with :meth:`workload_api`, :meth:`files` or :meth:`dev`. Thread-safe;
    :meth:`tls_context` is what each new connection to pdp is made with.
    """

    def __init__(self, source: IdentitySource, server_id: str, *, reread: bool = False) -> None:
        self.server_id = server_id
        self.server_trust_domain = _server_trust_domain(server_id)
        self._source = source
        self._reread = reread
        self._lock = threading.Lock()
        self._cached: tuple[IdentitySnapshot, ssl.SSLContext] | None = None
        self.tls_context()  # fail now, not at the first call, if the bundle is missing

    @classmethod
    def workload_api(cls, server_id: str, socket: str | None = None) -> ClientIdentity:
        """The SVID and bundles from the SPIFFE Workload API at ``socket`` (default
        ``$SPIFFE_ENDPOINT_SOCKET``), following rotation."""
        _server_trust_domain(server_id)
        try:
            source = WorkloadApiSource(socket or None)
        except IdentityError as exc:
            raise ClientConfigError(str(exc)) from None
        try:
            return cls(source, server_id)
        except BaseException:
            source.close()
            raise

    @classmethod
    def files(
        cls,
        cert: str | os.PathLike[str],
        key: str | os.PathLike[str],
        bundle: str | os.PathLike[str],
        server_id: str,
    ) -> ClientIdentity:
        """SVID chain, key and the server trust domain's bundle (PEM or SPIFFE bundle
        JSON) from files, re-read before a new connection when they have changed."""
        trust_domain = _server_trust_domain(server_id)
        try:
            source = StaticFileSource(cert, key, {trust_domain: bundle})
        except IdentityError as exc:
            raise ClientConfigError(str(exc)) from None
        return cls(source, server_id, reread=True)

    @classmethod
    def dev(
        cls, state_dir: str | os.PathLike[str] = DEFAULT_DEV_STATE_DIR, server_id: str | None = None
    ) -> ClientIdentity:
        """The dev gateway SVID that ``pdp serve --dev`` issued in ``state_dir``."""
        state = DevState(Path(state_dir), DEV_TRUST_DOMAIN)
        if not state.gateway_cert_file.exists():
            raise ClientConfigError(
                f"no dev credentials in {state.state_dir}: start `pdp serve --dev` first"
            )
        return cls.files(
            state.gateway_cert_file,
            state.gateway_key_file,
            state.bundle_file,
            server_id or state.server_id,
        )

    @property
    def spiffe_id(self) -> str:
        """The client's own SPIFFE ID (what pdp authenticates it as)."""
        return self._source.current().spiffe_id

    def tls_context(self) -> ssl.SSLContext:
        """A client TLS context for the current SVID, trusting only the roots of the
        server's trust domain. The server's SPIFFE ID is checked by the caller on the
        connection (see :mod:`pdp.client.transport`): no hostname is checked."""
        if self._reread and isinstance(self._source, StaticFileSource):
            # A file caught mid-rotation raises: keep the last consistent identity.
            with contextlib.suppress(IdentityError):
                self._source.reload()
        snapshot = self._source.current()
        with self._lock:
            if self._cached is not None and self._cached[0] is snapshot:
                return self._cached[1]
        context = self._context_for(snapshot)
        with self._lock:
            self._cached = (snapshot, context)
        return context

    def _context_for(self, snapshot: IdentitySnapshot) -> ssl.SSLContext:
        roots = snapshot.bundles.for_trust_domain(self.server_trust_domain)
        if not roots:
            raise ClientConfigError(
                f"no bundle for the server's trust domain {self.server_trust_domain}"
            )
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False  # the server's SPIFFE ID is checked instead
        context.verify_mode = ssl.CERT_REQUIRED
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_verify_locations(
            cadata=b"".join(root.public_bytes(Encoding.PEM) for root in roots).decode("ascii")
        )
        context.set_alpn_protocols(["h2"])
        # ssl loads a certificate and key only from files: a private directory, gone
        # as soon as they are loaded.
        with tempfile.TemporaryDirectory(prefix="pdp-client-") as directory:
            cert_file, key_file = Path(directory, "svid.pem"), Path(directory, "svid.key")
            cert_file.write_bytes(snapshot.cert_chain_pem)
            fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(snapshot.private_key_pem)
            try:
                context.load_cert_chain(cert_file, key_file)
            except ssl.SSLError as exc:
                raise ClientConfigError(f"the client SVID cannot be used: {exc}") from None
        return context

    def close(self) -> None:
        self._source.close()


def identity_from_options(options: ClientOptions) -> ClientIdentity:
    """The identity ``pdp call`` and ``pdp replay --target`` name with ``--dev``,
    ``--workload-api`` or ``--cert/--key/--bundle`` (exactly one of them)."""
    chosen = [
        name
        for name, given in (
            ("--dev", options.dev),
            ("--workload-api", options.workload_api is not None),
            ("--cert/--key/--bundle", bool(options.cert or options.key or options.bundle)),
        )
        if given
    ]
    if len(chosen) > 1:
        raise ClientConfigError(f"use only one of {' or '.join(chosen)}")
    if options.dev:
        return ClientIdentity.dev(options.state_dir or DEFAULT_DEV_STATE_DIR, options.server_id)
    if not options.server_id:
        raise ClientConfigError("--server-id required (or --dev for the dev CA)")
    if options.workload_api is not None:
        return ClientIdentity.workload_api(options.server_id, options.workload_api or None)
    given = {"--cert": options.cert, "--key": options.key, "--bundle": options.bundle}
    missing = [name for name, value in given.items() if not value]
    if missing:
        raise ClientConfigError(f"{', '.join(missing)} required (or --dev, or --workload-api)")
    assert options.cert and options.key and options.bundle
    return ClientIdentity.files(options.cert, options.key, options.bundle, options.server_id)
