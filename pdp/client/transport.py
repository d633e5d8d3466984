"""The connection to pdp, with the server's SPIFFE ID checked on that very connection.

grpc's Python client can check a server certificate only against a DNS name or IP
address, and does not expose the certificate it accepted. Checking the SPIFFE ID on a
separate connection first and then sending the request on grpc's own would let anyone
on the path who holds *any* SVID of the server's trust domain (with a matching name)
answer in pdp's place. So the client terminates TLS itself: grpc speaks plain HTTP/2
to a private Unix socket of this process, and every connection grpc opens there is
relayed over a TLS connection that this module opens to pdp, whose peer SVID must
chain to the server trust domain's roots and name exactly the expected SPIFFE ID
before one byte of the HTTP/2 stream is forwarded. A connection that fails the check
is closed: the call fails (fail closed), and :attr:`VerifiedRelay.last_failure` says
why. Any number of connections and calls reuse the same check, one per connection.

The Unix socket lives in a directory only this user can enter, and each accepted
connection must come from this very process (``SO_PEERCRED``): no other local process
can borrow the client's mTLS identity through it.

The relay runs an asyncio loop on one daemon thread, shared by the blocking and the
asyncio client.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import ssl
import struct
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509

from pdp.client.errors import FAILURE_UNREACHABLE, FAILURE_WRONG_SERVER, ClientConfigError

_CHUNK = 256 * 1024
_PEERCRED = struct.Struct("3i")  # pid, uid, gid


@dataclass(frozen=True, slots=True)
class ConnectionFailure:
    """Why the last connection to pdp was not used: a ``FAILURE_*`` code and detail."""

    code: str
    detail: str


def parse_target(target: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) as (host, port); raises ClientConfigError."""
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ClientConfigError(f"target {target!r} must be HOST:PORT")
    return host.strip("[]"), int(port)


def server_spiffe_ids(der: bytes) -> list[str]:
    """The URI SANs of a DER certificate (an X509-SVID has exactly one)."""
    try:
        certificate = x509.load_der_x509_certificate(der)
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    except ValueError:
        return []
    return list(san.value.get_values_for_type(x509.UniformResourceIdentifier))


class VerifiedRelay:
    """A private Unix socket whose connections reach ``target`` over verified mTLS.

    ``tls_context`` is called for every new connection (so a rotated client SVID is
    used at once); ``server_name``, if given, is sent as SNI only.
    """

    def __init__(
        self,
        target: str,
        *,
        expected_id: str,
        tls_context: Callable[[], ssl.SSLContext],
        server_name: str | None = None,
        connect_timeout: float = 5.0,
    ) -> None:
        self.target = target
        self.host, self.port = parse_target(target)
        self.expected_id = expected_id
        self._tls_context = tls_context
        self._server_name = server_name
        self._connect_timeout = connect_timeout
        self.last_failure: ConnectionFailure | None = None
        self.verified_connections = 0
        self._directory = tempfile.mkdtemp(prefix="pdp-client-")  # mode 0700
        self.path = os.path.join(self._directory, "pdp.sock")
        self._loop = asyncio.new_event_loop()
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="pdp-client-relay", daemon=True
        )
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result()
        except BaseException:
            self.close()
            raise

    @property
    def grpc_target(self) -> str:
        return f"unix:{self.path}"

    async def _listen(self) -> None:
        self._server = await asyncio.start_unix_server(self._accepted, path=self.path)
        os.chmod(self.path, 0o600)

    def _from_this_process(self, writer: asyncio.StreamWriter) -> bool:
        sock = writer.get_extra_info("socket")
        if sock is None or not hasattr(socket, "SO_PEERCRED"):
            return sock is not None  # the 0700 directory still guards it
        pid, _uid, _gid = _PEERCRED.unpack(
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
        )
        return bool(pid == os.getpid())

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            if self._from_this_process(writer):
                await self._relay(reader, writer)
        except asyncio.CancelledError:
            pass  # closing the relay: end quietly (asyncio logs a cancelled handler)
        finally:
            writer.close()
            if task is not None:
                self._tasks.discard(task)

    async def _relay(self, local_in: asyncio.StreamReader, local_out: asyncio.StreamWriter) -> None:
        where = f"{self.host}:{self.port}"
        try:
            context = self._tls_context()
            remote_in, remote_out = await asyncio.wait_for(
                asyncio.open_connection(
                    self.host,
                    self.port,
                    ssl=context,
                    server_hostname=self._server_name or self.host,
                    ssl_handshake_timeout=self._connect_timeout,
                ),
                self._connect_timeout,
            )
        except (OSError, ssl.SSLError, TimeoutError, ClientConfigError) as exc:
            detail = str(exc) or type(exc).__name__
            self.last_failure = ConnectionFailure(
                FAILURE_UNREACHABLE, f"mTLS connection to {where} failed: {detail}"
            )
            return
        try:
            ssl_object = remote_out.get_extra_info("ssl_object")
            der = ssl_object.getpeercert(binary_form=True) if ssl_object else None
            presented = server_spiffe_ids(der) if der else []
            if presented != [self.expected_id]:
                self.last_failure = ConnectionFailure(
                    FAILURE_WRONG_SERVER,
                    f"{where} presented {', '.join(presented) or 'no URI SAN'},"
                    f" not the expected {self.expected_id}",
                )
                return
            self.last_failure = None
            self.verified_connections += 1
            await self._pipe_both(local_in, local_out, remote_in, remote_out)
        finally:
            remote_out.close()

    @staticmethod
    async def _pipe_both(
        local_in: asyncio.StreamReader,
        local_out: asyncio.StreamWriter,
        remote_in: asyncio.StreamReader,
        remote_out: asyncio.StreamWriter,
    ) -> None:
        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, ssl.SSLError, ConnectionError):
                while data := await source.read(_CHUNK):
                    sink.write(data)
                    await sink.drain()

        # HTTP/2 has no use for a half-closed connection: when either side ends, both do.
        tasks = {asyncio.ensure_future(pipe(local_in, remote_out)),
                 asyncio.ensure_future(pipe(remote_in, local_out))}  # fmt: skip
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def close(self) -> None:
        """Stops relaying (open connections are cut) and removes the socket."""

        async def stop() -> None:
            if self._server is not None:
                self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

        if self._thread.is_alive():
            with contextlib.suppress(RuntimeError, TimeoutError):
                asyncio.run_coroutine_threadsafe(stop(), self._loop).result(timeout=5)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self._loop.close()
        shutil.rmtree(self._directory, ignore_errors=True)
