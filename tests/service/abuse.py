"""Attacks on a running server, shared by the suite (short) and bench/abuse.py (long).

Each attack runs in its own threads against a real server over loopback, beside a
legitimate caller making paced Check calls; :func:`under_attack` returns what the
legitimate caller saw. Nothing here asserts: the tests and the bench judge.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc

from pdp._proto.pdp.v1 import decision_pb2 as pb
from pdp.identity.devca import IssuedCert
from pdp.service.servicer import CHECK_METHOD

Attack = Callable[[threading.Event], None]


@dataclass
class CallerOutcome:
    """What a legitimate caller saw: one entry per call."""

    latencies: list[float] = field(default_factory=list)  # seconds, successful calls
    failures: dict[str, int] = field(default_factory=dict)  # status name -> count

    @property
    def calls(self) -> int:
        return len(self.latencies) + sum(self.failures.values())

    @property
    def success_rate(self) -> float:
        return len(self.latencies) / self.calls if self.calls else 0.0

    def p99(self) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def legitimate_caller(
    check: Callable[[pb.CheckRequest, float], Any],
    request: pb.CheckRequest,
    *,
    rate: float,
    stop: threading.Event,
    timeout: float,
) -> CallerOutcome:
    """Paced calls (``rate`` per second) until ``stop``; a call that fails or exceeds
    ``timeout`` counts as a failure."""
    outcome = CallerOutcome()
    interval = 1.0 / rate
    next_at = time.monotonic()
    while not stop.is_set():
        started = time.monotonic()
        try:
            check(request, timeout)
            outcome.latencies.append(time.monotonic() - started)
        except grpc.RpcError as exc:
            name = exc.code().name if exc.code() is not None else "UNKNOWN"
            outcome.failures[name] = outcome.failures.get(name, 0) + 1
        next_at += interval
        stop.wait(max(0.0, next_at - time.monotonic()))
    return outcome


def under_attack(
    attack: Attack | None,
    check: Callable[[pb.CheckRequest, float], Any],
    request: pb.CheckRequest,
    *,
    seconds: float,
    rate: float = 50.0,
    timeout: float = 5.0,
    warmup: float = 0.5,
) -> CallerOutcome:
    """Runs ``attack`` for ``seconds`` (after ``warmup``, so that it is under way) while
    a legitimate caller calls; returns the legitimate caller's outcome."""
    attack_stop = threading.Event()
    attacker = None
    if attack is not None:
        attacker = threading.Thread(target=attack, args=(attack_stop,), daemon=True)
        attacker.start()
        time.sleep(warmup)
    stop = threading.Event()
    result: list[CallerOutcome] = []
    caller = threading.Thread(
        target=lambda: result.append(
            legitimate_caller(check, request, rate=rate, stop=stop, timeout=timeout)
        ),
        daemon=True,
    )
    caller.start()
    time.sleep(seconds)
    stop.set()
    caller.join(timeout + 5)
    attack_stop.set()
    if attacker is not None:
        attacker.join(30)
    return result[0]


def channel_credentials(svid: IssuedCert, roots: bytes) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(roots, svid.key_pem, svid.chain_pem)


# --- the attacks ----------------------------------------------------------------------


def stalled_streams(
    address: str,
    credentials: grpc.ChannelCredentials,
    *,
    connections: int,
    streams: int,
    reopen_after: float = 0.2,
) -> Attack:
    """Opens ``connections`` x ``streams`` Check streams that send headers and never
    their request message, and opens each again ``reopen_after`` seconds after the
    server ends it."""

    def attack(stop: threading.Event) -> None:
        async def hold(channel: grpc.aio.Channel) -> None:
            call = channel.stream_unary(CHECK_METHOD, request_serializer=bytes)

            async def never() -> Any:
                while not stop.is_set():
                    await asyncio.sleep(0.05)
                if False:  # pragma: no cover  # an async generator that yields nothing
                    yield b""

            while not stop.is_set():
                with contextlib.suppress(grpc.RpcError, asyncio.CancelledError):
                    await call(never(), timeout=60)
                await asyncio.sleep(reopen_after)

        async def run() -> None:
            channels = [grpc.aio.secure_channel(address, credentials) for _ in range(connections)]
            tasks = [
                asyncio.ensure_future(hold(channel)) for channel in channels for _ in range(streams)
            ]
            while not stop.is_set():
                await asyncio.sleep(0.05)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for channel in channels:
                await channel.close()

        asyncio.run(run())

    return attack


def oversized_arguments(keys: int = 150_000) -> pb.CheckRequest:
    """A Check under 4 MiB whose ``arguments`` hold ``keys`` small keys."""
    message = pb.CheckRequest(
        agent="spiffe://acme.test/agent/support-bot", server="tickets", tool="get_ticket"
    )
    fields = message.arguments.fields
    for index in range(keys):
        fields[f"k{index}"].number_value = index
    return message


def oversized_messages(
    address: str, credentials: grpc.ChannelCredentials, *, callers: int, keys: int = 150_000
) -> Attack:
    """``callers`` threads sending Checks with ``keys`` keys in ``arguments``, back to back."""
    body = oversized_arguments(keys).SerializeToString()

    def attack(stop: threading.Event) -> None:
        def send() -> None:
            with grpc.secure_channel(address, credentials) as channel:
                call = channel.unary_unary(CHECK_METHOD, request_serializer=bytes)
                while not stop.is_set():
                    with contextlib.suppress(grpc.RpcError):
                        call(body, timeout=30)

        threads = [threading.Thread(target=send, daemon=True) for _ in range(callers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    return attack


def raw_connections(host: str, port: int, *, count: int) -> Attack:
    """Keeps ``count`` TCP connections open that never speak TLS, reopening closed ones."""

    def attack(stop: threading.Event) -> None:
        sockets: list[socket.socket] = []
        while not stop.is_set():
            alive = []
            for sock in sockets:
                if _is_closed(sock):
                    sock.close()
                else:
                    alive.append(sock)
            sockets = alive
            while len(sockets) < count and not stop.is_set():
                try:
                    sockets.append(socket.create_connection((host, port), timeout=1))
                except OSError:
                    break
            stop.wait(0.2)
        for sock in sockets:
            sock.close()

    return attack


def slow_handshakes(host: str, port: int, *, count: int) -> Attack:
    """Keeps ``count`` connections that send a TLS ClientHello and never finish."""
    hello = _client_hello()

    def attack(stop: threading.Event) -> None:
        sockets: list[socket.socket] = []
        while not stop.is_set():
            for sock in [s for s in sockets if _is_closed(s)]:
                sock.close()
            sockets = [s for s in sockets if s.fileno() != -1]
            while len(sockets) < count and not stop.is_set():
                try:
                    sock = socket.create_connection((host, port), timeout=1)
                    sock.sendall(hello)
                    sockets.append(sock)
                except OSError:
                    break
            stop.wait(0.2)
        for sock in sockets:
            sock.close()

    return attack


def _client_hello() -> bytes:
    """The first flight of a real TLS client (a ClientHello), captured in memory."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def _is_closed(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(4096, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        sock.setblocking(True)


def idle_tls_connections(
    address: str, credentials: grpc.ChannelCredentials, *, count: int
) -> Attack:
    """``count`` mTLS connections that handshake and then make no call."""

    def attack(stop: threading.Event) -> None:
        channels = [grpc.secure_channel(address, credentials) for _ in range(count)]
        for channel in channels:
            with contextlib.suppress(grpc.FutureTimeoutError):
                grpc.channel_ready_future(channel).result(timeout=10)
        stop.wait()
        for channel in channels:
            channel.close()

    return attack


@contextlib.contextmanager
def running(attack: Attack) -> Iterator[threading.Event]:
    """Runs ``attack`` in a thread for the duration of the block."""
    stop = threading.Event()
    thread = threading.Thread(target=attack, args=(stop,), daemon=True)
    thread.start()
    try:
        yield stop
    finally:
        stop.set()
        thread.join(30)
