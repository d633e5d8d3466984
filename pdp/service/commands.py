"""``pdp serve`` and ``pdp call``: the service's command-line glue (pdp/cli.py parses).

Both return an exit code and print errors as one line on stderr: ``serve`` exits 0
after a graceful stop and 2 when it cannot start; ``call`` exits 0 on allow, 1 on deny,
2 on any error (nothing decided).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pdp import __version__
from pdp.identity.devca import DEV_TRUST_DOMAIN, DevState
from pdp.proof import IntentIssuer, ProofConfig
from pdp.service.config import (
    DEFAULT_STATE_DIR,
    CallerBinding,
    ConfigError,
    DevIdentity,
    ServiceConfig,
    load_config,
    state_directory,
)
from pdp.service.workers import say

if TYPE_CHECKING:
    from pdp.service.server import DecisionServer

EXIT_OK, EXIT_DENY, EXIT_ERROR = 0, 1, 2
DEV_GATEWAYS = f"spiffe://{DEV_TRUST_DOMAIN}/gateway/*"
EXAMPLE_REQUEST = Path("policies/examples/requests/support-get-ticket.json")


def _error(message: str) -> int:
    say(f"pdp: {message}", error=True)
    return EXIT_ERROR


# --- serve ------------------------------------------------------------------------


@dataclass(frozen=True)
class ServeOptions:
    config_file: str | None = None
    dev: bool = False
    state_dir: str | None = None
    listen: str | None = None
    policies: str | None = None
    audit_dir: str | None = None  # default: <state dir>/audit
    audit_mode: str = "sync"  # durable: no answer before its record is on disk
    audit_off: bool = False
    audit_key: str | None = None  # default: config audit.key_file, else STATE_DIR/audit-signing.key
    audit_witness: str | None = None  # default: config audit.witness_file
    nats: str | None = None
    shadow_policies: str | None = None
    watch: bool = True
    workers: str | None = None  # a number or "auto"; None: the config's server.workers
    worker_index: int | None = None  # set in the processes `--workers N` starts
    metrics: str | None = None  # PORT or HOST:PORT of the Prometheus endpoint


def audit_key_file(options: ServeOptions, config: ServiceConfig, state_dir: Path) -> Path:
    """The checkpoint signing key: --audit-key, audit.key_file, or the state directory's."""
    from pdp.audit.keys import PRIVATE_KEY_FILE

    if options.audit_key:
        return Path(options.audit_key)
    return config.audit.key_file or state_dir / PRIVATE_KEY_FILE


def _open_audit(options: ServeOptions, config: ServiceConfig, state_dir: Path) -> Any:
    """The audit stream for `serve` (None when switched off): file log, optional NATS."""
    from pdp.audit.config import AuditConfig, default_instance_id, open_audit
    from pdp.audit.filesink import FileSinkConfig
    from pdp.audit.nats_shipper import NatsShipperConfig
    from pdp.audit.pipeline import DeliveryMode, PipelineConfig

    if options.audit_off:
        return None
    log_dir = Path(options.audit_dir) if options.audit_dir else state_dir / "audit"
    witness = Path(options.audit_witness) if options.audit_witness else config.audit.witness_file
    instance_id = default_instance_id()
    if options.worker_index is not None:
        from pdp.service.workers import audit_dir_of

        log_dir = audit_dir_of(log_dir, options.worker_index)
        if witness is not None:
            witness = witness.with_name(f"{witness.name}.{log_dir.name}")
        # One instance per chain: each worker's records and its NATS subject
        # (<prefix>.<instance_id>) are its own, so a consumer never sees two chains
        # interleaved on one subject, and a NATS witness is the worker's own checkpoint.
        instance_id = f"{instance_id}-{log_dir.name}"
    return open_audit(
        AuditConfig(
            instance_id=instance_id,
            file=FileSinkConfig(
                log_dir=log_dir,
                key_file=audit_key_file(options, config, state_dir),
                witness_file=witness,
            ),
            pipeline=PipelineConfig(mode=DeliveryMode(options.audit_mode)),
            nats=NatsShipperConfig(servers=(options.nats,)) if options.nats else None,
            key_fingerprint=config.audit.key_fingerprint,
        )
    )


def _audit_lines(audit: Any, options: ServeOptions) -> list[str]:
    """What an operator needs to check this log later: the key, its fingerprint to pin,
    and where the witness is (or that there is none)."""
    file = audit.config.file
    signer = audit.signer
    lines = [
        f"audit log {file.log_dir} ({options.audit_mode})"
        + (f", shipped to NATS {options.nats}" if options.nats else ""),
        f"audit checkpoints signed with {signer.path}, key fingerprint {signer.fingerprint}",
        f"verify with: pdp audit verify --key-fingerprint {signer.fingerprint}"
        f" --require-pinned {file.log_dir}",
    ]
    if file.witness_file is not None:
        lines.append(f"audit witness (latest checkpoint) written to {file.witness_file}")
    else:
        lines.append(
            "no audit witness file (audit.witness_file / --audit-witness): a log cut back to"
            " an older checkpoint cannot be told from a complete one"
        )
    return lines


def agent_trust_domains(inventory_entities: Sequence[dict[str, Any]]) -> list[str]:
    """The trust domains of the agents named in a policy inventory, sorted."""
    domains = {
        str(entity["uid"]["id"]).removeprefix("spiffe://").partition("/")[0]
        for entity in inventory_entities
        if entity.get("uid", {}).get("type") == "Agent"
    }
    return sorted(domains)


def with_dev_issuer(proof: ProofConfig, state_dir: Path) -> ProofConfig:
    """``proof`` that also trusts the dev state's intent issuer (``pdp intent sign --dev``)."""
    from pdp.proof.sign import ensure_dev_issuer

    dev = ensure_dev_issuer(DevState(state_dir, DEV_TRUST_DOMAIN))
    if any(issuer.issuer == dev.issuer for issuer in proof.intent_issuers):
        return proof
    issuers = (*proof.intent_issuers, IntentIssuer(dev.issuer, dev.jwks_file))
    return dataclasses.replace(proof, intent_issuers=issuers)


def serve(options: ServeOptions) -> int:
    from pdp.engine.runtime import PolicyRuntime, ReloadEvent, ReloadRejected
    from pdp.identity.sources import IdentityError
    from pdp.replay.archive import ArchiveError, archive_policies
    from pdp.service.server import StopSignals, open_identity

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        config = load_config(options.config_file) if options.config_file else ServiceConfig()
        changes: dict[str, Any] = {}
        if options.listen:
            changes["listen"] = options.listen
        if options.policies:
            changes["policies"] = Path(options.policies)
        if options.metrics:
            changes["metrics_listen"] = options.metrics
        if options.dev:
            state_dir = Path(options.state_dir) if options.state_dir else DEFAULT_STATE_DIR
            changes["identity"] = DevIdentity(state_dir=state_dir)
            changes["proof"] = with_dev_issuer(config.proof, state_dir)
        config = config.replace(**changes) if changes else config
        state_dir, state_source = state_directory(config, options.state_dir)
    except ConfigError as exc:
        return _error(str(exc))

    state_dir = state_dir.resolve()
    archive_root = state_dir / "policy-versions"
    from pdp.service.config import MAX_WORKERS
    from pdp.service.workers import worker_count

    try:
        workers = worker_count(options.workers, config.server.workers)
    except ValueError:
        return _error(f"--workers {options.workers!r}: give a number or 'auto'")
    if not 1 <= workers <= MAX_WORKERS:
        return _error(f"--workers: must be between 1 and {MAX_WORKERS} (got {workers})")
    if workers > 1 and options.worker_index is None:
        return _supervise(options, config, workers, state_dir, state_source)
    # From here on a stop signal, however early, ends in a drain that seals the audit
    # log (a worker gets SIGTERM the moment its supervisor dies, even during start).
    signals = StopSignals()
    if options.worker_index is not None:
        from pdp.service.workers import die_with_supervisor

        if not die_with_supervisor():
            return _error(f"worker {options.worker_index}: its supervisor is gone")
    if workers > 1:
        config = config.replace(server=dataclasses.replace(config.server, workers=workers))
    # Every worker writes the same versions; one archive writer avoids racing renames.
    archives = options.worker_index in (None, 0)

    def on_reload(event: ReloadEvent) -> None:
        if archives and event.ok and event.role == "active":
            try:
                archive_policies(runtime.engine.compiled, archive_root)
            except ArchiveError as exc:
                logging.getLogger("pdp.policies").warning("policy archive: %s", exc)

    try:
        runtime = PolicyRuntime(
            config.policies,
            limits=config.limits.request,
            shadow_directory=options.shadow_policies,
        )
    except ReloadRejected as exc:
        return _error(f"policies in {config.policies} are not usable: {exc.detail}")
    runtime.add_listener(on_reload)
    try:
        if archives:
            archive_policies(runtime.engine.compiled, archive_root)
    except ArchiveError as exc:
        logging.getLogger("pdp.policies").warning("policy archive: %s", exc)
    compiled = runtime.engine.compiled

    dev_note = ""
    if options.dev:
        # The dev gateway may ask about every agent of the trust domains the policies
        # know, named one by one (never spiffe://* : a binding is a deliberate list).
        domains = agent_trust_domains(compiled.inventory.entities)
        agents = tuple(f"spiffe://{td}/*" for td in domains)
        if agents:
            config = config.replace(callers=(*config.callers, CallerBinding(DEV_GATEWAYS, agents)))
            dev_note = f"dev mode: callers {DEV_GATEWAYS} may ask about agents {', '.join(agents)}"
        else:
            dev_note = "dev mode: the policies name no agents, so no dev caller is allowed"

    try:
        identity = open_identity(config.identity)
    except (IdentityError, ValueError, OSError) as exc:
        return _error(f"cannot load the server identity: {exc}")
    try:
        audit = _open_audit(options, config, state_dir)
    except Exception as exc:  # a broken audit setup must stop the start, loudly
        return _error(f"cannot open the audit log: {exc}")
    try:
        state = _state_line(state_dir, state_source, options)
        return _serve_until_stopped(
            options, config, runtime, identity, audit, dev_note, signals, state
        )
    finally:
        # Whatever happened above (a failed start, an output error), the log is sealed.
        runtime.close()
        if audit is not None:
            audit.close(10.0)
        say("pdp: stopped")


def _serve_until_stopped(
    options: ServeOptions,
    config: ServiceConfig,
    runtime: Any,
    identity: Any,
    audit: Any,
    dev_note: str,
    signals: Any,
    state_line: str,
) -> int:
    import signal
    import threading

    from pdp.service.operations import audit_health, policy_health, reload_recorder
    from pdp.service.server import DecisionServer, serve_until_signalled

    health_sources = {"policies": policy_health(runtime)}
    if audit is not None:
        from pdp.audit.service_sink import AuditDecisionSink

        sink: Any = AuditDecisionSink(audit)
        # Health follows the audit log (fail closed); every reload attempt is audited.
        health_sources["audit"] = audit_health(audit)
        runtime.add_listener(reload_recorder(audit))
    else:
        from pdp.service.sink import NullSink

        sink = NullSink()
    metrics = None
    if config.metrics_listen:
        from pdp.service.metrics import ServiceMetrics, audit_state, metered

        metrics = ServiceMetrics(
            runtime,
            worker=str(options.worker_index or 0),
            identity=identity,
            audit=audit_state(audit) if audit is not None else None,
            serving=lambda: server.serving,
            refusals_by_caller=lambda: server.refusals.snapshot(),  # noqa: PLW0108 (server comes later)
            caller_patterns=[binding.caller for binding in config.callers],
            in_flight=lambda: server.slots.in_flight,
        )
        sink = metered(sink, metrics)
        runtime.add_listener(metrics.on_reload)
    if options.watch:
        runtime.watch()
    # SIGHUP reloads; off the signal handler, which must return at once.
    signal.signal(
        signal.SIGHUP, lambda *_: threading.Thread(target=runtime.reload, daemon=True).start()
    )
    with identity:
        try:
            server = DecisionServer(
                config,
                runtime,
                identity,
                sink=sink,
                audit_feed=audit.pipeline if audit is not None else None,
                health_sources=health_sources,
            )
        except ConfigError as exc:
            return _error(str(exc))
        try:
            server.start()
        except RuntimeError as exc:
            return _error(f"cannot listen on {config.listen}: {exc}")
        endpoint = None
        if metrics is not None:
            from pdp.service.config import parse_metrics_listen
            from pdp.service.metrics import MetricsEndpoint

            host, port = parse_metrics_listen(config.metrics_listen)
            try:
                endpoint = MetricsEndpoint(
                    metrics, host, port + (options.worker_index or 0) if port else 0
                )
            except ConfigError as exc:
                server.stop(0)
                return _error(str(exc))
        for line in _startup_lines(server, options, dev_note):
            say(f"pdp: {line}")
        say(f"pdp: {state_line}")
        if endpoint is not None:
            say(f"pdp: metrics on {endpoint.url} (worker {metrics.worker if metrics else 0})")
        if audit is not None:
            for line in _audit_lines(audit, options):
                say(f"pdp: {line}")
        else:
            say("pdp: WARNING: audit is off (--no-audit)")
        say(
            "pdp: policies reload on change and on SIGHUP; rejected sets keep the old version"
            + (" (every attempt is audited)" if audit is not None else "")
        )

        def on_signal(signum: int) -> None:
            grace = config.server.shutdown_grace_s
            say(f"pdp: signal {signum}: draining (up to {grace:g} s)")

        try:
            return serve_until_signalled(server, on_signal=on_signal, signals=signals)
        finally:
            if endpoint is not None:
                endpoint.close()


def _state_line(state_dir: Path, source: str, options: ServeOptions) -> str:
    holds = "policy archive" + ("" if options.audit_dir or options.audit_off else ", audit log")
    return f"state directory {state_dir} ({holds}; from {source})"


def _supervise(
    options: ServeOptions, config: ServiceConfig, workers: int, state_dir: Path, state_source: str
) -> int:
    """``--workers N`` (N > 1): run N worker processes on one port.

    The policies are not loaded here: each worker loads and checks them anyway (in
    parallel), and one that cannot prints why and stops the start (exit 2)."""
    from pdp.identity.devca import ensure_dev_state
    from pdp.service.balance import BalanceError, RoundRobin
    from pdp.service.workers import Supervisor, python_entry, reserve_port

    if options.dev:
        ensure_dev_state(state_dir)  # once, before workers race to create it
    audit_base = Path(options.audit_dir) if options.audit_dir else state_dir / "audit"
    if not options.audit_off:  # one signing key for every worker's chain, made once
        from pdp.audit.keys import SigningKeyError, load_or_create_signer

        try:
            load_or_create_signer(audit_key_file(options, config, state_dir), log_dir=audit_base)
        except (SigningKeyError, OSError) as exc:
            return _error(f"cannot open the audit log: {exc}")
    try:
        listen, reservation = reserve_port(config.listen)
    except OSError as exc:
        return _error(str(exc))
    argvs = []
    for index in range(workers):
        argv = [*python_entry(), "serve", "--listen", listen, "--workers", str(workers)]
        argv += ["--worker-index", str(index), "--audit-mode", options.audit_mode]
        for flag, value in (
            ("--config", options.config_file),
            ("--state-dir", str(state_dir)),
            ("--policies", options.policies),
            ("--audit-dir", str(audit_base)),
            ("--nats", options.nats),
            ("--audit-key", options.audit_key),
            ("--audit-witness", options.audit_witness),
            ("--shadow-policies", options.shadow_policies),
            ("--metrics", options.metrics),
        ):
            if value:
                argv += [flag, value]
        for flag, on in (
            ("--dev", options.dev),
            ("--no-audit", options.audit_off),
            ("--no-watch", not options.watch),
        ):
            if on:
                argv.append(flag)
        argvs.append(argv)
    port = int(listen.rpartition(":")[2])
    try:
        balancer: RoundRobin | None = RoundRobin(workers)
        balancing = "round robin (eBPF)"
    except BalanceError as exc:
        balancer, balancing = None, f"the kernel's hash (round robin unavailable: {exc})"

    def on_worker_ready(index: int, pid: int) -> None:
        if balancer is not None:
            balancer.add(index, pid, port)

    supervisor = Supervisor(
        argvs, grace_s=config.server.shutdown_grace_s, on_worker_ready=on_worker_ready
    )
    audit_note = "audit off" if options.audit_off else f"audit chains in {audit_base}/worker-K"

    def on_ready() -> None:
        reservation.close()  # the workers hold the port now
        say(f"pdp: pdp {__version__}")
        say(f"pdp: listening on {listen} with {workers} workers ({audit_note})")
        say(f"pdp: {_state_line(state_dir, state_source, options)}")
        say(f"pdp: new connections are dealt to workers by {balancing}")
        say("pdp: SIGHUP reloads every worker; SIGTERM drains them all")

    try:
        code = supervisor.run(on_ready)
    finally:
        reservation.close()
        if balancer is not None:
            balancer.close()
    if code == 2:
        return _error(supervisor.failed)
    return code


def _startup_lines(server: DecisionServer, options: ServeOptions, dev_note: str) -> list[str]:
    config = server.config
    engine = getattr(server.engine, "engine", server.engine)  # a PolicyRuntime holds one
    lines = [
        f"pdp {__version__}",
        f"listening on {server.address} (mutual TLS; TLS 1.3, or TLS 1.2 with ECDHE-AEAD)",
        f"server SPIFFE ID {server.spiffe_id}",
        f"policy version {engine.version} ({len(engine.compiled)} policies from {config.policies})",
    ]
    lines.append(
        "also answers Envoy ext_authz (envoy.service.auth.v3.Authorization/Check) for MCP"
        f" routes naming context_extensions.{config.mcp.server_key}"
    )
    if dev_note:
        lines.append(dev_note)
    for binding in config.callers:
        if not options.dev or binding.caller != DEV_GATEWAYS:
            lines.append(f"caller {binding.caller} may ask about {', '.join(binding.agents)}")
    if not config.callers:
        lines.append("WARNING: no callers are allowed (config 'callers'): every call is refused")
    if config.audit_watchers:
        lines.append(f"audit watchers (pdp.v1.AuditService): {', '.join(config.audit_watchers)}")
    else:
        lines.append("nobody may watch the audit log (config 'audit_watchers')")
    if not server.serving:
        lines.append(f"WARNING: health NOT_SERVING: {server.failing_checks()}")
    example = EXAMPLE_REQUEST if EXAMPLE_REQUEST.exists() else Path("REQUEST.json")
    target = server.address.replace("0.0.0.0:", "127.0.0.1:")
    if options.dev:
        state = f" --state-dir {options.state_dir}" if options.state_dir else ""
        lines.append(f"try: pdp call {example} --dev{state} --target {target}")
    else:
        lines.append(
            f"try: pdp call {example} --target {target} --server-id {server.spiffe_id}"
            " --cert SVID.pem --key SVID.key --bundle BUNDLE.pem"
        )
    return lines
