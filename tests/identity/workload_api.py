"""A test-only SPIFFE Workload API server on a Unix socket.

It speaks the real protocol (``SpiffeWorkloadAPI/FetchX509SVID``, a server stream of
``X509SVIDResponse`` messages from py-spiffe's generated ``workload_pb2``), refuses
calls without the ``workload.spiffe.io: true`` metadata with INVALID_ARGUMENT as
SPIRE does, and issues short-lived SVIDs from a :class:`DevCA`. It also serves ``FetchJWTBundles`` (JWK Sets per trust
domain, set with ``set_jwt_bundle``), for JWT-SVID verification. Every change
(``rotate_svid``, ``rotate_bundle``, federated bundle added or removed) pushes a new
*full-state* response to every open stream, as the Workload API spec requires.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from spiffe._proto import workload_pb2, workload_pb2_grpc

from pdp.identity.devca import DevCA, IssuedCert
from pdp.identity.spiffe_id import parse_spiffe_id

_DER = serialization.Encoding.DER


def _der(certs: Iterable[x509.Certificate]) -> bytes:
    return b"".join(cert.public_bytes(_DER) for cert in certs)


class WorkloadApiServer:
    def __init__(
        self,
        socket_path: str | Path,
        spiffe_id: str,
        *,
        svid_lifetime: timedelta = timedelta(minutes=5),
    ) -> None:
        self.spiffe_id = spiffe_id
        self.trust_domain = parse_spiffe_id(spiffe_id).trust_domain
        self.svid_lifetime = svid_lifetime
        self.ca = DevCA.create(self.trust_domain)
        self.roots: list[x509.Certificate] = [self.ca.root]
        self.federated: dict[str, tuple[x509.Certificate, ...]] = {}
        self.svid = self.ca.issue_svid(spiffe_id, lifetime=svid_lifetime)
        self.address = f"unix:{socket_path}"
        self.rejected_calls = 0
        self._redacted = False
        self._responses = [self._response()]  # every state ever pushed, in order
        self.jwt_bundles: dict[str, bytes] = {}
        self._jwt_responses = [workload_pb2.JWTBundlesResponse()]
        self._stopping = False
        self._changed = threading.Condition()
        self._server = grpc.server(ThreadPoolExecutor(max_workers=8))
        workload_pb2_grpc.add_SpiffeWorkloadAPIServicer_to_server(_Servicer(self), self._server)
        self._server.add_insecure_port(self.address)

    # -- lifecycle --------------------------------------------------------
    def start(self) -> WorkloadApiServer:
        self._server.start()
        return self

    def stop(self) -> None:
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
        self._server.stop(grace=None).wait(5)

    def __enter__(self) -> WorkloadApiServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- changes, each pushed to every open stream ------------------------
    def rotate_svid(self, spiffe_id: str | None = None) -> IssuedCert:
        """Issues a fresh SVID (optionally for another, even invalid, ID) and pushes it."""
        self.svid = self.ca.issue_svid(spiffe_id or self.spiffe_id, lifetime=self.svid_lifetime)
        self._push()
        return self.svid

    def rotate_bundle(self, *, keep_old_roots: bool = True) -> DevCA:
        """A new CA for the own trust domain; the SVID is re-issued by it."""
        self.ca = DevCA.create(self.trust_domain)
        self.roots = [*self.roots, self.ca.root] if keep_old_roots else [self.ca.root]
        self.svid = self.ca.issue_svid(self.spiffe_id, lifetime=self.svid_lifetime)
        self._push()
        return self.ca

    def set_federated_bundle(self, trust_domain: str, roots: Iterable[x509.Certificate]) -> None:
        self.federated[trust_domain] = tuple(roots)
        self._push()

    def set_jwt_bundle(self, trust_domain: str, keys: Iterable[Any]) -> None:
        """The JWT bundle of ``trust_domain``: joserfc keys, published public only with
        ``use: jwt-svid`` as SPIRE does; pushed to every FetchJWTBundles stream."""
        document = {"keys": [{**key.as_dict(private=False), "use": "jwt-svid"} for key in keys]}
        self.jwt_bundles[trust_domain] = json.dumps(document).encode()
        with self._changed:
            self._jwt_responses.append(
                workload_pb2.JWTBundlesResponse(
                    bundles={f"spiffe://{td}": b for td, b in self.jwt_bundles.items()}
                )
            )
            self._changed.notify_all()

    def remove_federated_bundle(self, trust_domain: str) -> None:
        del self.federated[trust_domain]
        self._push()

    # -- protocol ---------------------------------------------------------
    def _push(self) -> None:
        with self._changed:
            self._responses.append(self._response())
            self._changed.notify_all()

    def redact_svids(self) -> None:
        """Pushes a response without any SVID (the workload lost its entitlement)."""
        self._redacted = True
        self._push()
        self._redacted = False

    def _response(self) -> workload_pb2.X509SVIDResponse:
        if self._redacted:
            return workload_pb2.X509SVIDResponse()
        svid = workload_pb2.X509SVID(
            spiffe_id=str(
                self.svid.cert.extensions.get_extension_for_class(
                    x509.SubjectAlternativeName
                ).value.get_values_for_type(x509.UniformResourceIdentifier)[0]
            ),
            x509_svid=_der((self.svid.cert, *self.svid.intermediates)),
            x509_svid_key=self.svid.key.private_bytes(
                _DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
            bundle=_der(self.roots),
        )
        return workload_pb2.X509SVIDResponse(
            svids=[svid],
            federated_bundles={f"spiffe://{td}": _der(c) for td, c in self.federated.items()},
        )

    def _stream(
        self, context: grpc.ServicerContext, responses: list[Any] | None = None
    ) -> Iterator[Any]:
        """The current state first, then every later change in order (none coalesced,
        so a test can push a bad update followed by a good one)."""
        responses = self._responses if responses is None else responses
        with self._changed:
            sent = len(responses) - 1
        while True:
            with self._changed:
                while len(responses) <= sent and not self._stopping and context.is_active():
                    self._changed.wait(0.2)
                if self._stopping or not context.is_active():
                    return
                pending = responses[sent:]
                sent = len(responses)
            yield from pending


class _Servicer(workload_pb2_grpc.SpiffeWorkloadAPIServicer):  # type: ignore[misc]
    def __init__(self, api: WorkloadApiServer) -> None:
        self._api = api

    def FetchX509SVID(
        self, request: workload_pb2.X509SVIDRequest, context: grpc.ServicerContext
    ) -> Iterator[workload_pb2.X509SVIDResponse]:
        if ("workload.spiffe.io", "true") not in tuple(context.invocation_metadata()):
            self._api.rejected_calls += 1
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "security header missing from request")
        yield from self._api._stream(context)

    def FetchJWTBundles(
        self, request: workload_pb2.JWTBundlesRequest, context: grpc.ServicerContext
    ) -> Iterator[workload_pb2.JWTBundlesResponse]:
        if ("workload.spiffe.io", "true") not in tuple(context.invocation_metadata()):
            self._api.rejected_calls += 1
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "security header missing from request")
        yield from self._api._stream(context, self._api._jwt_responses)
