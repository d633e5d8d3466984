"""The decision server: grpc.aio with mTLS, health, reflection, lifecycle.

The server runs on an asyncio event loop in a thread of its own (one loop per process,
shared by every server in it), so that callers keep a plain synchronous API: start,
stop, context manager. ``grpc.aio`` measured 1.35x the sync thread-pool server for
``Check`` over mTLS on grpcio 1.85 (fewer thread hand-offs per call, bench/service.py),
and one loop lets concurrent calls share one Cedar batch (see pdp.service.servicer).
Decisions are made on the loop; only a sink that blocks (the synchronous audit log)
moves them to a thread pool of ``server.threads``.

The same server answers ``pdp.v1.AuditService`` (pdp.service.watch: a live feed of the
audit log for the ``audit_watchers``, and the health detail), gRPC health and reflection.

Health: "" and ``pdp.v1.DecisionService`` are SERVING only while every check passes:
the server's own SVID is valid, and each of ``health_sources`` (callables returning
``(ok, detail)``, e.g. "the audit log is writable") says ok. They are polled every
``_HEALTH_POLL_S``; a change is logged with its detail, which GetStatus also returns.

Lifecycle: :meth:`DecisionServer.start` binds and serves; :meth:`DecisionServer.stop`
ends watch streams, marks health NOT_SERVING, refuses new calls and lets in-flight calls
finish within the grace period. :func:`serve_until_signalled` does that on SIGTERM or
SIGINT.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from collections.abc import Callable, Coroutine, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from types import FrameType, TracebackType
from typing import Any, TypeVar, cast

import grpc
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from pdp import __version__
from pdp._proto.pdp.v1 import audit_pb2 as apb
from pdp.audit.ids import new_decision_id
from pdp.engine import Engine
from pdp.identity.peer import PeerVerifier
from pdp.identity.sources import (
    DevSource,
    IdentitySource,
    StaticFileSource,
    WorkloadApiSource,
)
from pdp.proof import Prover
from pdp.proof.bundles import open_jwt_bundles
from pdp.proof.keys import KeyFileError, KeyFiles
from pdp.service.admission import CallerSlots, RecordBudget, RefusalCounts
from pdp.service.cipher_suites import (
    CIPHER_SUITES_ENV,
    check_cipher_suites,
    effective_cipher_suites,
)
from pdp.service.config import (
    ConfigError,
    DevIdentity,
    FileIdentity,
    IdentityConfig,
    ServiceConfig,
    WorkloadApiIdentity,
)
from pdp.service.connections import apply_process_limits, release_free_memory
from pdp.service.ext_authz import EXT_AUTHZ_SERVICE, ExtAuthzServicer
from pdp.service.gate import CallerGate, CallerPolicy, RateLimiter, WatcherPolicy
from pdp.service.interceptor import AuthInterceptor, Refuser
from pdp.service.operations import HealthSource
from pdp.service.servicer import (
    SERVICE_NAME,
    DecisionCore,
    DecisionServicer,
    EngineHolder,
    FixedEngine,
)
from pdp.service.sink import DecisionSink, DeferredDecisionSink, NullSink
from pdp.service.tls import RotatingServerCredentials
from pdp.service.watch import (
    AUDIT_SERVICE_NAME,
    AuditServicer,
    RecordFeed,
    WatchHub,
    health_checks,
    reload_attempt,
)

log = logging.getLogger(__name__)

HEALTH_SERVICE_NAME = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
# How often the health checks (own SVID, health sources) are polled.
_HEALTH_POLL_S = 0.5
_TRIM_EVERY_S = 60.0


_T = TypeVar("_T")


class _ServiceLoop:
    """The process's grpc.aio event loop, running in a daemon thread (started once)."""

    lock = threading.Lock()
    loop: asyncio.AbstractEventLoop | None = None


def service_loop() -> asyncio.AbstractEventLoop:
    with _ServiceLoop.lock:
        if _ServiceLoop.loop is None or _ServiceLoop.loop.is_closed():
            loop = asyncio.new_event_loop()
            ready = threading.Event()

            def run() -> None:
                asyncio.set_event_loop(loop)
                loop.call_soon(ready.set)
                loop.run_forever()

            threading.Thread(target=run, name="pdp-grpc-loop", daemon=True).start()
            ready.wait()
            _ServiceLoop.loop = loop
        return _ServiceLoop.loop


def _on_loop(coroutine: Coroutine[Any, Any, _T], timeout: float | None = None) -> _T:
    return asyncio.run_coroutine_threadsafe(coroutine, service_loop()).result(timeout)


def open_identity(config: IdentityConfig) -> IdentitySource:
    """The identity source a config names; raises IdentityError if it is unusable."""
    if isinstance(config, WorkloadApiIdentity):
        return WorkloadApiSource(config.socket, timeout=config.timeout_s)
    if isinstance(config, FileIdentity):
        return StaticFileSource(config.cert, config.key, config.bundles)
    if isinstance(config, DevIdentity):
        return DevSource(config.state_dir)
    raise TypeError(f"unknown identity config {config!r}")


def _reload_interval(config: IdentityConfig) -> float | None:
    if isinstance(config, FileIdentity | DevIdentity):
        return config.reload_interval_s
    return None  # the Workload API pushes updates


def build_prover(config: ServiceConfig, identity: IdentitySource) -> Prover:
    """The verifier of signed intents and JWT-SVIDs for ``config.proof``; the audience
    defaults to the server's own SPIFFE ID (as it is now, after rotations). A key file
    that cannot be used at start is a ConfigError naming it."""
    proof = config.proof
    # The Workload API's JWT bundles when the server's own identity comes from it.
    from_api = isinstance(identity, WorkloadApiSource)
    timeout = (
        config.identity.timeout_s if isinstance(config.identity, WorkloadApiIdentity) else 10.0
    )
    try:
        issuers = KeyFiles(
            {issuer.issuer: issuer.jwks for issuer in proof.intent_issuers},
            check_interval_s=proof.key_check_interval_s,
        )
        bundles = open_jwt_bundles(
            proof.jwt_bundles,
            workload_api_socket=identity.socket
            if isinstance(identity, WorkloadApiSource)
            else None,
            use_workload_api=from_api,
            check_interval_s=proof.key_check_interval_s,
            timeout=timeout,
        )
    except KeyFileError as exc:
        raise ConfigError(f"proof: {exc}") from None
    return Prover(
        proof,
        audience=lambda: identity.current().spiffe_id,
        issuers=issuers,
        jwt_bundles=bundles,
        limits=config.limits.request,
    )


class DecisionServer:
    """One grpc server answering ``pdp.v1.DecisionService`` over mTLS.

    ``engine`` is an :class:`Engine` or something holding the one in force (a
    ``PolicyRuntime`` that reloads policies). The caller owns ``engine``, ``identity``
    and ``sink``; the server only uses them. ``audit_feed`` (the audit pipeline) feeds
    ``AuditService.WatchDecisions``; without it watching is refused. ``health_sources``
    are named checks that health follows (see the module docstring).
    Use as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    def __init__(
        self,
        config: ServiceConfig,
        engine: Engine | EngineHolder,
        identity: IdentitySource,
        *,
        sink: DecisionSink | None = None,
        new_id: Callable[[], str] = new_decision_id,
        audit_feed: RecordFeed | None = None,
        health_sources: Mapping[str, HealthSource] | None = None,
    ) -> None:
        self.config = config
        self.identity = identity
        self.sink: DecisionSink = sink if sink is not None else NullSink()
        options = config.server
        weak = check_cipher_suites(effective_cipher_suites())
        if effective_cipher_suites() and weak:
            raise ConfigError(
                f"{CIPHER_SUITES_ENV} allows {', '.join(weak)}; list only ECDHE suites with"
                " AES-GCM or CHACHA20-POLY1305 (or unset it for pdp's default)"
            )
        self._credentials = RotatingServerCredentials(identity)
        self.verifier = PeerVerifier(lambda: identity.current().bundles)
        self.policy = CallerPolicy(config.callers)
        # Refusals per caller and code (for metrics); records of refused and invalid
        # requests within a byte budget per caller (pdp.service.admission).
        self.refusals = RefusalCounts()
        self.record_budget = RecordBudget(
            config.limits.refusal_record_bytes_per_s, config.limits.refusal_record_burst_bytes
        )
        refuser = Refuser(self.sink, new_id, budget=self.record_budget, counts=self.refusals)
        engines = FixedEngine(engine) if isinstance(engine, Engine) else engine
        self.prover = build_prover(config, identity)
        self.core = DecisionCore(
            engines,
            self.sink,
            new_id=new_id,
            prover=self.prover,
            record_budget=self.record_budget,
        )
        self._executor = ThreadPoolExecutor(options.threads, thread_name_prefix="pdp-rpc")
        # Only a sink that may wait for I/O needs threads, unless it can call back
        # instead (see pdp.service.sink).
        blocks = getattr(self.sink, "blocks", True)
        deferred = self.sink if blocks and hasattr(self.sink, "submit_decisions") else None
        self.servicer = DecisionServicer(
            self.core,
            RateLimiter(config.rate_limit),
            refuser,
            max_batch=config.limits.max_batch,
            # Also for AllowedTools, which waits for its one record on a pool thread.
            executor=self._executor if blocks else None,
            deferred=cast(DeferredDecisionSink | None, deferred),
        )
        # Envoy's ext_authz API on the same port, the same callers and the same path.
        self.ext_authz = ExtAuthzServicer(self.servicer, config.mcp)
        self.health_sources: dict[str, HealthSource] = dict(health_sources or {})
        self.hub = (
            WatchHub(
                audit_feed,
                service_loop(),
                max_watchers=config.limits.max_watchers,
                queue_size=config.limits.watch_queue,
            )
            if audit_feed is not None
            else None
        )
        self.audit_servicer = AuditServicer(self.hub, refuser, self._status)
        gate = CallerGate(self.verifier, self.policy, watchers=WatcherPolicy(config.audit_watchers))
        self.slots = CallerSlots(
            options.max_concurrent_rpcs, options.max_rpcs_per_caller, options.reserved_rpcs
        )
        interceptor = AuthInterceptor(
            gate,
            refuser,
            {
                SERVICE_NAME: gate.admit,
                EXT_AUTHZ_SERVICE: gate.admit,
                AUDIT_SERVICE_NAME: gate.admit_watcher,
            },
            slots=self.slots,
            reserved=(f"/{HEALTH_SERVICE_NAME}/", f"/{AUDIT_SERVICE_NAME}/GetStatus"),
            request_timeout_s=options.request_timeout_s,
        )
        self.max_connections = apply_process_limits(options.max_connections)
        grpc_options = [
            ("grpc.max_receive_message_length", config.limits.max_message_bytes),
            ("grpc.max_concurrent_streams", options.max_concurrent_streams),
            ("grpc.max_connection_age_ms", int(options.max_connection_age_s * 1000)),
            ("grpc.max_connection_age_grace_ms", int(options.max_connection_age_grace_s * 1000)),
            ("grpc.max_connection_idle_ms", int(options.max_connection_idle_s * 1000)),
            ("grpc.server_handshake_timeout_ms", int(options.handshake_timeout_s * 1000)),
            # Soft and hard limit alike: no call gets halfway (grpc's default hard limit
            # is 1.25 x the soft one, with calls between them refused at random).
            ("grpc.max_metadata_size", options.max_metadata_bytes),
            ("grpc.absolute_max_metadata_size", options.max_metadata_bytes),
            # Counts connections from accept, so handshaking ones too (grpc has no
            # per-address cap: put one in front, see README "Limits").
            ("grpc.max_allowed_incoming_connections", self.max_connections),
            # A second server on the same port must fail, not share it silently; workers
            # of one `pdp serve --workers N` share it on purpose.
            ("grpc.so_reuseport", 1 if config.server.workers > 1 else 0),
        ]

        async def build() -> tuple[grpc.aio.Server, health_aio.HealthServicer]:
            # grpc.aio objects belong to the loop they are made on.
            # No maximum_concurrent_rpcs: grpc would count a stream from its headers,
            # before authentication; the interceptor's slots count calls instead.
            server = grpc.aio.server(interceptors=[interceptor], options=grpc_options)
            server.add_generic_rpc_handlers(
                (self.servicer.handler(), self.ext_authz.handler(), self.audit_servicer.handler())
            )
            health_servicer = health_aio.HealthServicer()
            health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
            reflection.enable_server_reflection(
                (
                    SERVICE_NAME,
                    EXT_AUTHZ_SERVICE,
                    AUDIT_SERVICE_NAME,
                    HEALTH_SERVICE_NAME,
                    reflection.SERVICE_NAME,
                ),
                server,
            )
            return server, health_servicer

        self._server, self.health = _on_loop(build())
        self.port = 0
        self._stopped = threading.Event()
        self._reload_interval = _reload_interval(config.identity)
        self._maintenance: threading.Thread | None = None
        self._serving = False
        self.checks: list[tuple[str, bool, str]] = []  # (name, ok, detail), last poll

    # -- lifecycle ---------------------------------------------------------------
    @property
    def address(self) -> str:
        host = self.config.listen.rpartition(":")[0]
        return f"{host}:{self.port}"

    @property
    def spiffe_id(self) -> str:
        return self._credentials.spiffe_id

    @property
    def engine(self) -> Engine:
        return self.core.engine

    @property
    def serving(self) -> bool:
        """What gRPC health reports: True while every health check passes."""
        return self._serving and not self._stopped.is_set()

    def failing_checks(self) -> str:
        """The checks that fail, with their detail ("" when all pass)."""
        return "; ".join(f"{name}: {detail}" for name, ok, detail in self.checks if not ok)

    def start(self) -> DecisionServer:
        async def bind_and_start() -> int:
            port = self._server.add_secure_port(
                self.config.listen, self._credentials.server_credentials()
            )
            await self._server.start()
            return port

        self.port = _on_loop(bind_and_start())
        self._serving = self._poll_health()
        self._set_serving(self._serving)
        if not self._serving:
            log.error("starting NOT_SERVING: %s", self.failing_checks())
        self._maintenance = threading.Thread(
            target=self._maintain, name="pdp-maintenance", daemon=True
        )
        self._maintenance.start()
        return self

    def stop(self, grace: float | None = None) -> None:
        """Stops serving: health NOT_SERVING, new calls refused, in-flight calls get
        ``grace`` seconds (default: the configured shutdown grace) to finish."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        grace = self.config.server.shutdown_grace_s if grace is None else grace

        async def shut_down() -> None:
            if self.hub is not None:
                self.hub.close()  # watch streams never end by themselves
            await self.health.enter_graceful_shutdown()
            await self._server.stop(grace)

        _on_loop(shut_down())
        self._executor.shutdown(wait=False)
        self.prover.close()
        if self._maintenance is not None:
            self._maintenance.join(timeout=_HEALTH_POLL_S + 5)

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        return _on_loop(self._server.wait_for_termination(timeout))

    def __enter__(self) -> DecisionServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop(0)

    # -- internals ---------------------------------------------------------------
    def _set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )

        async def publish() -> None:
            for service in ("", SERVICE_NAME):
                await self.health.set(service, status)

        _on_loop(publish())

    def _maintain(self) -> None:
        """Re-reads file/dev identities; polls the health checks and publishes SERVING
        or NOT_SERVING when the outcome changes."""
        next_reload = time.monotonic() + (self._reload_interval or 0.0)
        next_trim = time.monotonic() + _TRIM_EVERY_S
        while not self._stopped.wait(_HEALTH_POLL_S):
            if time.monotonic() >= next_trim and self.slots.in_flight <= 1:
                # Memory freed after a flood (connections, large messages) goes back to
                # the system while the server is quiet (malloc_trim holds the heap lock).
                next_trim = time.monotonic() + _TRIM_EVERY_S
                release_free_memory()
            if self._reload_interval is not None and time.monotonic() >= next_reload:
                next_reload = time.monotonic() + self._reload_interval
                if isinstance(self.identity, StaticFileSource):
                    try:
                        self.identity.reload()
                    except Exception as exc:
                        log.error("identity reload failed, keeping the current SVID: %s", exc)
            serving = self._poll_health()
            if serving != self._serving and not self._stopped.is_set():
                self._serving = serving
                if serving:
                    log.warning("health: SERVING again (every check passes)")
                else:
                    log.error("health: NOT_SERVING: %s", self.failing_checks())
                self._set_serving(serving)

    def _poll_health(self) -> bool:
        """Runs every check, keeps the outcome in :attr:`checks`; True if all pass."""
        self.checks = self.run_checks()
        return all(ok for _, ok, _ in self.checks)

    def run_checks(self) -> list[tuple[str, bool, str]]:
        """(name, ok, detail) of every health check, now."""
        snapshot = self.identity.current()
        not_after = snapshot.not_after
        # Serving an expired certificate only produces handshake failures.
        valid = datetime.now(UTC) < not_after
        trusted, trust = snapshot.trust_summary()
        checks = [
            (
                "identity",
                valid,
                f"own SVID valid until {not_after.isoformat()}"
                if valid
                else f"own SVID expired at {not_after.isoformat()}",
            ),
            # A trust domain whose bundle is gone is refused, the others served: the
            # check fails only when no caller at all could be authenticated.
            ("trust", trusted, trust),
        ]
        for name, source in self.health_sources.items():
            try:
                ok, detail = source()
            except Exception as exc:  # a broken check fails closed
                ok, detail = False, f"health check failed: {type(exc).__name__}: {exc}"
            checks.append((name, bool(ok), str(detail)))
        return checks

    def _status(self) -> apb.StatusResponse:
        """GetStatus: health as published, the checks now, the policies in force."""
        response = apb.StatusResponse(
            serving=self.serving, checks=health_checks(self.run_checks()), version=__version__
        )
        engines: Any = self.core.engines
        engine = engines.engine
        response.policy_version = engine.version
        response.policies = len(engine.compiled)
        shadow = getattr(engines, "shadow", None)
        if shadow is not None:
            response.shadow_policy_version = shadow.version
        last = getattr(engines, "last_event", None)
        if last is not None:
            response.last_reload.CopyFrom(reload_attempt(last))
        rejected = getattr(engines, "last_rejected", None)
        if rejected is not None:
            response.last_rejected_reload.CopyFrom(reload_attempt(rejected))
        return response


class StopSignals:
    """SIGTERM and SIGINT caught from the moment this is made, for a process that must
    drain and seal its audit log however early the signal comes (a supervisor killed
    while its workers start, say). Main thread only: Python delivers signals there.
    :meth:`restore` puts the previous handlers back."""

    def __init__(self) -> None:
        self.received: list[int] = []
        self._event = threading.Event()
        self._previous = {
            sig: signal.signal(sig, self._handle) for sig in (signal.SIGTERM, signal.SIGINT)
        }

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        self.received.append(signum)
        self._event.set()

    def wait(self) -> int:
        """Blocks until a stop signal arrived (or had already); returns the first one."""
        # A timed wait keeps the main thread responsive to signals.
        while not self._event.wait(1.0):
            pass
        return self.received[0]

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def serve_until_signalled(
    server: DecisionServer,
    *,
    on_signal: Callable[[int], None] | None = None,
    signals: StopSignals | None = None,
) -> int:
    """Serves until SIGTERM or SIGINT, then stops gracefully; returns the exit code 0.

    ``signals``: handlers installed earlier (a signal that came before this call stops
    the server at once), left in place for the caller's own closing; by default they
    are installed now and restored after the drain. ``on_signal`` (say, print
    "draining") may fail: the server is stopped anyway. Must run on the main thread.
    """
    stop = signals if signals is not None else StopSignals()
    try:
        signum = stop.wait()
        try:
            if on_signal is not None:
                on_signal(signum)
        finally:
            server.stop()
    finally:
        # Only now: a second SIGTERM during the drain must not cut it short.
        if signals is None:
            stop.restore()
    return 0
