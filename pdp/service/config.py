"""The decision service's configuration: frozen dataclasses, read from YAML, safe defaults.

Defaults fail closed: the server listens on loopback only, no caller is allowed until
the ``callers`` list names it, nobody may watch the audit feed until ``audit_watchers``
names it, mutual TLS is the only transport, and every limit is on.

Example (every key optional except what the identity source needs)::

    listen: 0.0.0.0:8443
    policies: /etc/pdp/policies
    identity:
      source: workload_api            # or: files, dev
      socket: unix:///run/spire/agent.sock   # default: $SPIFFE_ENDPOINT_SOCKET
    callers:
      - id: spiffe://acme.test/gateway/*
        agents: [spiffe://acme.test/agent/*, spiffe://partner.test/agent/helper]
    audit_watchers: [spiffe://acme.test/siem/*]   # pdp.v1.AuditService (default: nobody)
    limits:
      max_message_bytes: 4194304
      max_batch: 256
      max_watchers: 8        # WatchDecisions streams open at once
      watch_queue: 1024      # records waiting for one watcher before it is cut off
      request: {max_arguments_bytes: 65536, max_depth: 16}
    rate_limit: {decisions_per_second: 2000, burst: 4000}
    server: {threads: 8, max_concurrent_rpcs: 1024, max_rpcs_per_caller: 64,
             request_timeout_s: 5, handshake_timeout_s: 10, max_connections: 1000}
    metrics_listen: 127.0.0.1:9464   # Prometheus /metrics, plain HTTP (default: none)
    proof:                   # signed intents and JWT-SVIDs: see pdp/proof/config.py
      intent_issuers: [{issuer: https://approvals.acme.test, jwks: approvals.jwks.json}]
      require_signed_intent: {groups: [finance]}
      require_agent_proof: {trust_domains: [acme.test]}
    audit:
      key_file: /var/lib/pdp/keys/audit-signing.key   # default: STATE_DIR/audit-signing.key
      witness_file: /mnt/witness/pdp-audit.witness    # where the log's writer cannot write
      key_fingerprint: 3f0c...                        # pin (64 hex digits, printed at start)
    mcp:                     # the Envoy ext_authz door (pdp.service.ext_authz, pdp.mcp)
      server_key: mcp_server # the route's context_extensions key naming the MCP server
      methods: {resources/read: deny, "resources/*": allow}   # over pdp.mcp's defaults
      default: deny          # methods no rule names
      max_body_bytes: 1048576
      max_batch: 64
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pdp.identity.spiffe_id import InvalidSpiffeId, SpiffeIdPattern, parse_trust_domain
from pdp.mcp import McpLimits, MethodRules, RuleError
from pdp.model import Limits
from pdp.proof.config import IntentIssuer, ProofConfig, ProofConfigError, Requirement

DEFAULT_LISTEN = "127.0.0.1:8443"
DEFAULT_METRICS_HOST = "127.0.0.1"
DEFAULT_STATE_DIR = Path(".pdp-state")  # --dev only: a production pdp is told where


class ConfigError(ValueError):
    """The configuration is unusable; the message names the key and what to change."""


# --- identity sources -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WorkloadApiIdentity:
    """The SVID from a SPIFFE Workload API (SPIRE agent) socket."""

    socket: str | None = None  # None: $SPIFFE_ENDPOINT_SOCKET
    timeout_s: float = 10.0  # for the first SVID; the server does not start without one


@dataclass(frozen=True, slots=True)
class FileIdentity:
    """SVID, key and trust bundles from files (e.g. written by spiffe-helper)."""

    cert: Path
    key: Path
    bundles: Mapping[str, Path]  # trust domain -> PEM or SPIFFE bundle JSON
    reload_interval_s: float = 30.0


@dataclass(frozen=True, slots=True)
class DevIdentity:
    """A self-managed dev CA in ``state_dir`` (``pdp serve --dev``); never for production."""

    state_dir: Path = DEFAULT_STATE_DIR
    reload_interval_s: float = 60.0


IdentityConfig = WorkloadApiIdentity | FileIdentity | DevIdentity


# --- callers, limits, server --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CallerBinding:
    """Callers matching ``caller`` may ask about agents matching one of ``agents``.

    Patterns are exact SPIFFE IDs or prefixes ending in ``/*`` (``SpiffeIdPattern``).
    """

    caller: str
    agents: tuple[str, ...]

    def __post_init__(self) -> None:
        for text in (self.caller, *self.agents):
            try:
                SpiffeIdPattern(text)
            except InvalidSpiffeId as exc:
                raise ConfigError(f"{text!r} is not a SPIFFE ID pattern: {exc}") from None


@dataclass(frozen=True, slots=True)
class ServiceLimits:
    max_message_bytes: int = 4 * 1024 * 1024  # checked by grpc before decoding
    max_batch: int = 256  # requests in one CheckBatch
    max_watchers: int = 8  # AuditService.WatchDecisions streams open at once
    # Records waiting to be sent to one watcher; beyond this it is cut off (it never
    # holds up decisions or other watchers).
    watch_queue: int = 1024
    # Detail (decoded fields, excerpts; refusal records themselves) that one caller's
    # refused or invalid requests may add to the audit log, as a token bucket per
    # caller; beyond it records keep only fixed-size facts (see pdp.service.admission).
    refusal_record_bytes_per_s: int = 64 * 1024
    refusal_record_burst_bytes: int = 1024 * 1024
    request: Limits = field(default_factory=Limits)  # per request, see pdp.model.Limits


@dataclass(frozen=True, slots=True)
class RateLimit:
    """A token bucket per caller SPIFFE ID, counted in decisions (a batch of n costs n)."""

    decisions_per_second: float = 2000.0
    burst: int = 4000
    enabled: bool = True


MAX_WORKERS = 64


@dataclass(frozen=True, slots=True)
class AuditOptions:
    """Where the audit log's trust anchors live (see pdp/audit/RECORD.md)."""

    # The checkpoint signing key (PEM, 0600, created if absent); never in the audit
    # log directory. None: audit-signing.key in the state directory.
    key_file: Path | None = None
    # Also written at every checkpoint (seq, hash, signature), e.g. on another volume
    # or host mount the log's writer cannot rewrite: `pdp audit verify --witness`.
    # With --workers N each worker writes FILE.worker-K.
    witness_file: Path | None = None
    # Pins: `pdp serve` refuses to start with another key, and `pdp audit verify
    # --config` trusts only this key (fingerprint: 64 hex digits, printed at start).
    key_fingerprint: str = ""
    public_key: Path | None = None


@dataclass(frozen=True, slots=True)
class ServerOptions:
    # Decisions run on the grpc.aio event loop; these threads only serve a sink that
    # waits for I/O (the synchronous audit log), one flush of coalesced calls each.
    threads: int = 8
    # Calls in flight, counted from authentication (stream open) to the answer; beyond
    # these pdp answers RESOURCE_EXHAUSTED (pdp.service.admission).
    max_concurrent_rpcs: int = 1024
    max_rpcs_per_caller: int = 64  # one caller's share (a SPIFFE ID, or a peer address)
    reserved_rpcs: int = 32  # of max_concurrent_rpcs, kept for health and status calls
    # A call whose request message has not arrived this long after its stream opened is
    # cancelled (DEADLINE_EXCEEDED): a stalled stream holds its caller's slot no longer.
    request_timeout_s: float = 5.0
    max_concurrent_streams: int = 100  # per HTTP/2 connection
    # Request headers (metadata) of one call; grpc refuses larger ones before pdp runs.
    max_metadata_bytes: int = 16 * 1024
    # TLS handshakes not finished in this time are dropped (grpc's default is 120 s).
    handshake_timeout_s: float = 10.0
    # Connections open at once, handshaking or not (lowered at start to fit the
    # open-file limit); beyond it new connections are closed at once.
    max_connections: int = 1000
    # Connections are re-handshaken at this age so that rotated or removed bundles and
    # expired client SVIDs take effect on long-lived connections too.
    max_connection_age_s: float = 300.0
    max_connection_age_grace_s: float = 30.0
    max_connection_idle_s: float = 120.0  # closed after this long without a call
    shutdown_grace_s: float = 10.0  # in-flight calls get this long after SIGTERM
    # Server processes sharing the listening port (SO_REUSEPORT), each with its own
    # engine and audit chain; see pdp/service/workers.py. 1: this process serves.
    workers: int = 1
    # TLS 1.2 cipher suites are not here: grpc reads them from the environment at import
    # time, before any config is loaded (see pdp/service/cipher_suites.py).


@dataclass(frozen=True, slots=True)
class McpDoorConfig:
    """How the Envoy ext_authz door reads MCP (see pdp.mcp for the rules' defaults)."""

    server_key: str = "mcp_server"  # ext_authz context_extensions key naming the server
    rules: MethodRules = field(default_factory=MethodRules)
    limits: McpLimits = field(default_factory=McpLimits)


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    listen: str = DEFAULT_LISTEN
    policies: Path = Path("policies")
    identity: IdentityConfig = field(default_factory=WorkloadApiIdentity)
    callers: tuple[CallerBinding, ...] = ()
    # SPIFFE ID patterns of who may use pdp.v1.AuditService (watch decisions, read
    # status). A separate list: being a caller does not make one a watcher.
    audit_watchers: tuple[str, ...] = ()
    limits: ServiceLimits = field(default_factory=ServiceLimits)
    rate_limit: RateLimit = field(default_factory=RateLimit)
    server: ServerOptions = field(default_factory=ServerOptions)
    # Prometheus endpoint (pdp/service/metrics.py): PORT or HOST:PORT, "" for none. A
    # bare port listens on loopback; with N workers, worker K takes PORT+K.
    metrics_listen: str = ""
    proof: ProofConfig = field(default_factory=ProofConfig)
    mcp: McpDoorConfig = field(default_factory=McpDoorConfig)
    # pdp's own files: the policy archive and, unless --audit-dir, the audit log. Without
    # --dev it must be configured (here, --state-dir or systemd's $STATE_DIRECTORY).
    state_dir: Path | None = None
    audit: AuditOptions = field(default_factory=AuditOptions)

    def __post_init__(self) -> None:
        _check_config(self)

    def replace(self, **changes: Any) -> ServiceConfig:
        return dataclasses.replace(self, **changes)


def _check_config(config: ServiceConfig) -> None:
    host, sep, port = config.listen.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"listen: {config.listen!r} must be HOST:PORT (PORT 0 picks a free one)")
    if config.metrics_listen:
        parse_metrics_listen(config.metrics_listen)
    positive = {
        "limits.max_message_bytes": config.limits.max_message_bytes,
        "limits.max_batch": config.limits.max_batch,
        "limits.max_watchers": config.limits.max_watchers,
        "limits.watch_queue": config.limits.watch_queue,
        "rate_limit.decisions_per_second": config.rate_limit.decisions_per_second,
        "rate_limit.burst": config.rate_limit.burst,
        "server.threads": config.server.threads,
        "server.max_concurrent_rpcs": config.server.max_concurrent_rpcs,
        "server.max_concurrent_streams": config.server.max_concurrent_streams,
        "server.max_rpcs_per_caller": config.server.max_rpcs_per_caller,
        "server.max_metadata_bytes": config.server.max_metadata_bytes,
        "server.request_timeout_s": config.server.request_timeout_s,
        "server.handshake_timeout_s": config.server.handshake_timeout_s,
        "server.max_connections": config.server.max_connections,
        "limits.refusal_record_bytes_per_s": config.limits.refusal_record_bytes_per_s,
        "limits.refusal_record_burst_bytes": config.limits.refusal_record_burst_bytes,
        "server.max_connection_age_s": config.server.max_connection_age_s,
        "server.max_connection_idle_s": config.server.max_connection_idle_s,
        "mcp.max_body_bytes": config.mcp.limits.max_body_bytes,
        "mcp.max_batch": config.mcp.limits.max_batch,
    }
    for name, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{name}: must be greater than 0 (got {value})")
    if not 0 <= config.server.reserved_rpcs < config.server.max_concurrent_rpcs:
        raise ConfigError(
            f"server.reserved_rpcs: must be at least 0 and below server.max_concurrent_rpcs"
            f" ({config.server.max_concurrent_rpcs}); got {config.server.reserved_rpcs}"
        )
    if config.server.max_connection_age_grace_s < 0 or config.server.shutdown_grace_s < 0:
        raise ConfigError("server: grace periods must not be negative")
    if not 1 <= config.server.workers <= MAX_WORKERS:
        raise ConfigError(
            f"server.workers: must be between 1 and {MAX_WORKERS} (got {config.server.workers})"
        )
    for index, pattern in enumerate(config.audit_watchers):
        try:
            SpiffeIdPattern(pattern)
        except InvalidSpiffeId as exc:
            raise ConfigError(
                f"audit_watchers[{index}]: {pattern!r} is not a SPIFFE ID pattern: {exc}"
            ) from None
    fingerprint = config.audit.key_fingerprint
    if fingerprint and not re.fullmatch(r"[0-9a-f]{64}", fingerprint):
        raise ConfigError(
            "audit.key_fingerprint: must be the 64 lowercase hex digits pdp serve prints"
        )
    if isinstance(config.identity, FileIdentity):
        for trust_domain in config.identity.bundles:
            try:
                parse_trust_domain(trust_domain)
            except InvalidSpiffeId as exc:
                raise ConfigError(f"identity.bundles: {exc}") from None


def parse_metrics_listen(text: str) -> tuple[str, int]:
    """``PORT`` or ``HOST:PORT`` (``[::1]:PORT`` for IPv6); a bare port is loopback."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = DEFAULT_METRICS_HOST, text
    host = host.removeprefix("[").removesuffix("]")
    if not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(
            f"metrics_listen: {text!r} must be PORT or HOST:PORT (PORT 0 picks a free one)"
        )
    return host, int(port)


# --- YAML ---------------------------------------------------------------------------


class _Section:
    """A mapping read from YAML that knows its path, for error messages, and rejects
    keys nobody asked for (a typo must not silently fall back to a default)."""

    def __init__(self, data: Any, path: str) -> None:
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise ConfigError(f"{path or 'config'}: must be a mapping")
        self.data: Mapping[str, Any] = data
        self.path = path
        self._read: set[str] = set()

    def _name(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def get(self, key: str, kind: type | tuple[type, ...], default: Any) -> Any:
        self._read.add(key)
        if key not in self.data or self.data[key] is None:
            return default
        value = self.data[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds:
            raise ConfigError(f"{self._name(key)}: must be {_kind_names(kinds)}, not a boolean")
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if not isinstance(value, kinds):
            raise ConfigError(f"{self._name(key)}: must be {_kind_names(kinds)}")
        return value

    def raw(self, key: str) -> Any:
        """The value as parsed, for a caller that checks it itself."""
        self._read.add(key)
        return self.data.get(key)

    def section(self, key: str) -> _Section:
        self._read.add(key)
        return _Section(self.data.get(key), self._name(key))

    def done(self) -> None:
        unknown = sorted(set(self.data) - self._read)
        if unknown:
            raise ConfigError(f"{self._name(str(unknown[0]))}: unknown key")


def _kind_names(kinds: tuple[type, ...]) -> str:
    names = {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "true or false",
        list: "a list",
    }
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _identity(section: _Section, base: Path) -> IdentityConfig:
    source = section.get("source", str, "workload_api")
    identity: IdentityConfig
    if source == "workload_api":
        identity = WorkloadApiIdentity(
            socket=section.get("socket", str, None),
            timeout_s=section.get("timeout_s", float, 10.0),
        )
    elif source == "files":
        bundles_section = section.section("bundles")
        bundles = {
            str(td): base / bundles_section.get(str(td), str, "") for td in bundles_section.data
        }
        bundles_section.done()
        cert, key = section.get("cert", str, None), section.get("key", str, None)
        if not cert or not key or not bundles:
            raise ConfigError(
                f"{section.path}: source 'files' needs cert, key and bundles (trust domain: file)"
            )
        identity = FileIdentity(
            cert=base / cert,
            key=base / key,
            bundles=bundles,
            reload_interval_s=section.get("reload_interval_s", float, 30.0),
        )
    elif source == "dev":
        identity = DevIdentity(
            state_dir=base / section.get("state_dir", str, str(DEFAULT_STATE_DIR)),
            reload_interval_s=section.get("reload_interval_s", float, 60.0),
        )
    else:
        raise ConfigError(
            f"{section.path}.source: {source!r} is not one of workload_api, files, dev"
        )
    section.done()
    return identity


def _callers(data: Any) -> tuple[CallerBinding, ...]:
    if data is None:
        return ()
    if not isinstance(data, list):
        raise ConfigError("callers: must be a list of {id: PATTERN, agents: [PATTERN, ...]}")
    bindings: list[CallerBinding] = []
    for index, entry in enumerate(data):
        section = _Section(entry, f"callers[{index}]")
        caller = section.get("id", str, None)
        agents = section.get("agents", list, None)
        section.done()
        if not caller or not agents or not all(isinstance(a, str) for a in agents):
            raise ConfigError(
                f"callers[{index}]: needs id (a SPIFFE ID pattern) and agents"
                " (a non-empty list of SPIFFE ID patterns)"
            )
        try:
            bindings.append(CallerBinding(caller, tuple(agents)))
        except ConfigError as exc:
            raise ConfigError(f"callers[{index}]: {exc}") from None
    return tuple(bindings)


def _patterns(data: Any, name: str) -> tuple[str, ...]:
    if data is None:
        return ()
    if not isinstance(data, list) or not all(isinstance(p, str) for p in data):
        raise ConfigError(f"{name}: must be a list of SPIFFE ID patterns")
    return tuple(data)


def _dataclass_section(section: _Section, cls: Any, defaults: Any) -> Any:
    """Reads every scalar field of a flat frozen dataclass, typed by its default value."""
    values: dict[str, Any] = {}
    for item in dataclasses.fields(cls):
        default = getattr(defaults, item.name)
        if dataclasses.is_dataclass(default):
            continue
        kind: type = type(default)
        values[item.name] = section.get(item.name, float if kind is float else kind, default)
    return values


def _strings(data: Any, name: str) -> tuple[str, ...]:
    if data is None:
        return ()
    if not isinstance(data, list) or not all(isinstance(p, str) for p in data):
        raise ConfigError(f"{name}: must be a list of strings")
    return tuple(data)


def _requirement(section: _Section) -> Requirement:
    fields = ("agents", "groups", "servers", "trust_domains")
    values = {name: _strings(section.raw(name), f"{section.path}.{name}") for name in fields}
    section.done()
    try:
        return Requirement(**values)
    except ProofConfigError as exc:
        raise ConfigError(f"{section.path}: {exc}") from None


def _proof(section: _Section, base: Path) -> ProofConfig:
    issuers: list[IntentIssuer] = []
    raw = section.raw("intent_issuers")
    if raw is not None and not isinstance(raw, list):
        raise ConfigError("proof.intent_issuers: must be a list of {issuer: ISS, jwks: FILE}")
    for index, entry in enumerate(raw or []):
        item = _Section(entry, f"proof.intent_issuers[{index}]")
        issuer, jwks = item.get("issuer", str, None), item.get("jwks", str, None)
        item.done()
        if not issuer or not jwks:
            raise ConfigError(f"{item.path}: needs issuer (its tokens' iss) and jwks (a file)")
        issuers.append(IntentIssuer(issuer, base / jwks))
    bundles_section = section.section("jwt_bundles")
    jwt_bundles = {
        str(td): base / bundles_section.get(str(td), str, "") for td in bundles_section.data
    }
    bundles_section.done()
    signed = _requirement(section.section("require_signed_intent"))
    proven = _requirement(section.section("require_agent_proof"))
    defaults = ProofConfig()
    scalars = {
        name: section.get(name, type(getattr(defaults, name)), getattr(defaults, name))
        for name in (
            "audience",
            "max_token_bytes",
            "leeway_s",
            "max_intent_lifetime_s",
            "max_remembered_jtis",
            "key_check_interval_s",
        )
    }
    section.done()
    try:
        return ProofConfig(
            intent_issuers=tuple(issuers),
            jwt_bundles=jwt_bundles,
            require_signed_intent=signed,
            require_agent_proof=proven,
            **scalars,
        )
    except ProofConfigError as exc:
        raise ConfigError(f"proof: {exc}") from None


def _mcp(section: _Section) -> McpDoorConfig:
    defaults = McpDoorConfig()
    server_key = section.get("server_key", str, defaults.server_key)
    methods = section.section("methods")
    overrides = {str(key): methods.get(str(key), str, "") for key in methods.data}
    methods.done()
    default = section.get("default", str, None)
    limits = McpLimits(**_dataclass_section(section, McpLimits, defaults.limits))
    section.done()
    if not server_key:
        raise ConfigError("mcp.server_key: must not be empty")
    try:
        rules = MethodRules.with_overrides(overrides, default)
    except RuleError as exc:
        raise ConfigError(f"mcp.methods: {exc}") from None
    return McpDoorConfig(server_key=server_key, rules=rules, limits=limits)


def config_from_mapping(data: Any, *, base: Path = Path()) -> ServiceConfig:
    """A :class:`ServiceConfig` from parsed YAML; relative paths are relative to ``base``."""
    root = _Section(data, "")
    defaults = ServiceConfig()
    listen = root.get("listen", str, defaults.listen)
    metrics_listen = root.get("metrics_listen", (str, int), defaults.metrics_listen)
    policies = base / root.get("policies", str, str(defaults.policies))
    state_dir_value = root.get("state_dir", str, None)
    state_dir = base / state_dir_value if state_dir_value else None
    identity = _identity(root.section("identity"), base)
    callers = _callers(root.raw("callers"))
    audit_watchers = _patterns(root.raw("audit_watchers"), "audit_watchers")

    limits_section = root.section("limits")
    request_section = limits_section.section("request")
    request_limits = Limits(**_dataclass_section(request_section, Limits, Limits()))
    request_section.done()
    limits = ServiceLimits(
        **_dataclass_section(limits_section, ServiceLimits, defaults.limits),
        request=request_limits,
    )
    limits_section.done()

    rate_section = root.section("rate_limit")
    rate_limit = RateLimit(**_dataclass_section(rate_section, RateLimit, defaults.rate_limit))
    rate_section.done()
    server_section = root.section("server")
    server = ServerOptions(**_dataclass_section(server_section, ServerOptions, defaults.server))
    server_section.done()
    proof = _proof(root.section("proof"), base)
    audit_section = root.section("audit")
    paths = {
        name: base / value if (value := audit_section.get(name, str, None)) else None
        for name in ("key_file", "witness_file", "public_key")
    }
    audit = AuditOptions(
        key_fingerprint=audit_section.get("key_fingerprint", str, "").lower(), **paths
    )
    audit_section.done()
    mcp = _mcp(root.section("mcp"))
    root.done()
    return ServiceConfig(
        listen=listen,
        policies=policies,
        identity=identity,
        callers=callers,
        audit_watchers=audit_watchers,
        limits=limits,
        rate_limit=rate_limit,
        server=server,
        metrics_listen=str(metrics_listen),
        proof=proof,
        state_dir=state_dir,
        audit=audit,
        mcp=mcp,
    )


def state_directory(config: ServiceConfig, flag: str | None) -> tuple[Path, str]:
    """The one state directory of ``pdp serve`` and what named it: ``--state-dir``,
    the dev identity's, the configuration's ``state_dir``, or systemd's
    ``$STATE_DIRECTORY``. Never the working directory by accident: without any of
    them a non-dev server does not start."""
    if flag:
        return Path(flag), "--state-dir"
    if isinstance(config.identity, DevIdentity):
        return config.identity.state_dir, "dev identity"
    if config.state_dir is not None:
        return config.state_dir, "config state_dir"
    systemd = os.environ.get("STATE_DIRECTORY", "")
    if systemd:
        return Path(systemd.split(":", 1)[0]), "$STATE_DIRECTORY"
    raise ConfigError(
        "no state directory (for the policy archive and the default audit log): give"
        " --state-dir DIR or state_dir in the configuration (only --dev defaults to"
        f" ./{DEFAULT_STATE_DIR})"
    )


def load_config(path: str | os.PathLike[str]) -> ServiceConfig:
    """Reads a YAML config file; relative paths in it are relative to the file."""
    import yaml

    file = Path(path)
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read {file}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file}: not valid YAML: {exc}") from None
    try:
        return config_from_mapping(data, base=file.resolve().parent)
    except ConfigError as exc:
        raise ConfigError(f"{file}: {exc}") from None
