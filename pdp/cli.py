"""The `pdp` command line. Thin: it parses arguments, calls the library, formats output.

Exit codes: 0 success / allow, 1 deny / validation or test failure, 2 usage error or
unreadable input.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import cedarpy

from pdp import __version__
from pdp.client_options import DEFAULT_TARGET, ClientOptions, add_client_identity_options
from pdp.engine import Engine, PolicyLoadError, load_policies
from pdp.identity.spiffe_id import InvalidSpiffeId, parse_spiffe_id
from pdp.model import RequestError, deny, parse_intent, parse_request
from pdp.policytest import SuiteError, discover, run_suites
from pdp.proof import ProofConfig
from pdp.replay.cli import add_replay_parser

EXIT_OK, EXIT_DENY, EXIT_USAGE = 0, 1, 2
DEFAULT_POLICIES = os.environ.get("PDP_POLICIES", "policies")

Handler = Callable[[argparse.Namespace], int]


class UsageError(Exception):
    """Bad input that the user must fix; printed as one line, exit 2."""


def _fail(message: str) -> NoReturn:
    raise UsageError(message)


def _load_engine(directory: str) -> Engine:
    try:
        return Engine(load_policies(directory))
    except PolicyLoadError as exc:
        for diagnostic in exc.diagnostics:
            print(f"{directory.rstrip('/')}/{diagnostic}", file=sys.stderr)
        _fail(f"policies in {directory} are invalid ({len(exc.diagnostics)} problem(s))")


def read_json_input(source: str) -> Any:
    """Reads JSON from a file path or '-' (stdin); raises UsageError naming the problem."""
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        _fail(f"cannot read {source}: {exc}")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        _fail(f"{source}: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}")
    except RecursionError:
        _fail(f"{source}: JSON nesting is too deep")


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


# --- subcommands -----------------------------------------------------------------


def cmd_validate(args: argparse.Namespace) -> int:
    try:
        compiled = load_policies(args.policies)
    except PolicyLoadError as exc:
        for diagnostic in exc.diagnostics:
            print(f"{args.policies.rstrip('/')}/{diagnostic}")
        print(f"invalid: {len(exc.diagnostics)} problem(s)", file=sys.stderr)
        return EXIT_DENY
    print(f"valid: {len(compiled)} policies, version {compiled.version}")
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    from pdp.proof import Prover

    data = read_json_input(args.request)
    engine = _load_engine(args.policies)
    prover = _dev_prover(args.state_dir) if args.dev else Prover.unconfigured()
    now = datetime.now(UTC)
    try:
        request = parse_request(data, now=now, limits=engine.limits)
    except RequestError as exc:
        decision = engine.invalid(exc)
    else:
        # Tokens are checked at the clock, as the service does; `time` is the policies'.
        request, denial = prover.prove(request, now, engine.groups_of)
        decision = (
            deny(engine.version, denial.code, denial.message) if denial else engine.decide(request)
        )
    print_json(decision.to_json())
    return EXIT_OK if decision.allowed else EXIT_DENY


def _dev_state(state_dir: str | None) -> Any:
    from pdp.identity.devca import DEV_TRUST_DOMAIN, DevState
    from pdp.service.config import DEFAULT_STATE_DIR

    return DevState(Path(state_dir) if state_dir else DEFAULT_STATE_DIR, DEV_TRUST_DOMAIN)


def _dev_prover(state_dir: str | None) -> Any:
    """Trusts the dev issuer, for the dev server's audience (as `pdp serve --dev`)."""
    from pdp.proof import Prover
    from pdp.proof.keys import KeyFiles
    from pdp.proof.sign import ensure_dev_issuer
    from pdp.proof.verify import NoJwtBundles
    from pdp.service.commands import with_dev_issuer

    state = _dev_state(state_dir)
    dev = ensure_dev_issuer(state)
    proof = with_dev_issuer(ProofConfig(), state.state_dir)
    return Prover(
        proof,
        audience=lambda: state.server_id,
        issuers=KeyFiles({dev.issuer: dev.jwks_file}),
        jwt_bundles=NoJwtBundles(),
    )


def cmd_intent_sign(args: argparse.Namespace) -> int:
    """Prints a signed intent: the dev issuer's (--dev) or a private JWK's (--key)."""
    import json as json_module

    from pdp.proof.jose import KEY_CLASSES
    from pdp.proof.sign import intent_claims, sign_token

    if args.dev == bool(args.key):
        raise UsageError("sign with --dev (the dev issuer) or with --key JWK_FILE --issuer ISS")
    if args.key:
        if not args.issuer or not args.audience:
            raise UsageError("--key needs --issuer (the tokens' iss) and --audience")
        try:
            jwk = json_module.loads(Path(args.key).read_text())
            key = KEY_CLASSES[jwk.get("kty")].import_key(jwk)
            if not key.is_private:
                raise ValueError("it has no private part")
        except (OSError, ValueError, KeyError, AttributeError) as exc:
            raise UsageError(f"{args.key}: not a private JWK (EC, RSA or OKP): {exc}") from None
        issuer, audience = args.issuer, args.audience
        alg = args.alg or {"EC": "ES256", "RSA": "RS256", "OKP": "EdDSA"}[jwk["kty"]]
    else:
        from pdp.proof.sign import ensure_dev_issuer

        state = _dev_state(args.state_dir)
        dev = ensure_dev_issuer(state)
        key, issuer, alg = dev.key, dev.issuer, "ES256"
        audience = args.audience or state.server_id
    try:
        parse_spiffe_id(args.agent, require_path=True)
        parse_intent({"purpose": args.purpose, "tools": args.tools})
    except (InvalidSpiffeId, RequestError) as exc:
        raise UsageError(str(exc)) from None
    claims = intent_claims(
        issuer=issuer,
        agent=args.agent,
        audience=audience,
        purpose=args.purpose,
        tools=args.tools,
        now=datetime.now(UTC),
        lifetime_s=args.lifetime,
    )
    print(sign_token(claims, key, alg=alg))
    return EXIT_OK


def cmd_test(args: argparse.Namespace) -> int:
    engine = _load_engine(args.policies)
    files = [Path(f) for f in args.files] or discover(Path(args.policies))
    if not files:
        _fail(f"no test suites (*.test.yaml, *.test.json) found in {args.policies}")
    try:
        results = run_suites(engine, files)
    except SuiteError as exc:
        _fail(str(exc))
    failed = [r for r in results if not r.passed]
    for result in failed:
        print(f"FAIL {result.suite} :: {result.name}")
        print(result.diff())
        print()
    if args.verbose:
        for result in results:
            if result.passed:
                print(f"ok   {result.suite} :: {result.name}")
    print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    return EXIT_DENY if failed else EXIT_OK


def cmd_fmt(args: argparse.Namespace) -> int:
    targets: list[Path] = []
    for name in args.paths or [args.policies]:
        path = Path(name)
        if path.is_dir():
            targets.extend(p for p in sorted(path.rglob("*.cedar")) if p.is_file())
        elif path.is_file():
            targets.append(path)
        else:
            _fail(f"{name}: no such file or directory")
    unformatted = 0
    for path in targets:
        text = path.read_text(encoding="utf-8")
        try:
            formatted = cedarpy.format_policies(text, line_width=args.line_width)
        except ValueError as exc:
            print(f"{path}: cannot format: {str(exc).splitlines()[0]}", file=sys.stderr)
            unformatted += 1
            continue
        formatted = formatted.rstrip("\n") + "\n"
        if formatted != text:
            unformatted += 1
            if args.check:
                print(f"would reformat {path}")
            else:
                path.write_text(formatted, encoding="utf-8")
                print(f"formatted {path}")
    if args.check and unformatted:
        return EXIT_DENY
    return EXIT_OK


def cmd_schema_from_mcp(args: argparse.Namespace) -> int:
    from pdp.schemagen import SchemaGenError, from_mcp

    if (args.tools_list is None) == (args.connect is None):
        _fail("give TOOLS_LIST.json or --connect URL|COMMAND (one of them)")
    if args.connect is not None:
        from pdp.toolpin import CaptureError, capture_tools

        try:
            document = capture_tools(args.connect, timeout=args.timeout)
        except CaptureError as exc:
            _fail(f"cannot list the tools of {exc}")
        if args.save:
            try:
                Path(args.save).write_text(json.dumps(document, indent=2) + "\n", "utf-8")
            except OSError as exc:
                _fail(f"cannot write {args.save}: {exc}")
    else:
        document = read_json_input(args.tools_list)
    try:
        schema_text, inventory = from_mcp(document, args.server)
    except SchemaGenError as exc:
        _fail(str(exc))
    if args.inventory:
        print_json(inventory)
    else:
        sys.stdout.write(schema_text)
    return EXIT_OK


def cmd_inventory_diff(args: argparse.Namespace) -> int:
    """Exit 0: the same tools; 1: something was added, removed or changed."""
    from pdp.schemagen import SchemaGenError
    from pdp.toolpin import diff_tools

    try:
        diff = diff_tools(read_json_input(args.old), read_json_input(args.new))
    except SchemaGenError as exc:
        _fail(str(exc))
    if args.json:
        print_json(diff.to_json())
    else:
        print(diff.text())
    return EXIT_OK if diff.empty else EXIT_DENY


def cmd_access(args: argparse.Namespace) -> int:
    from pdp.engine.access import FLOOR_NOTE, access_matrix, agents_of, groups_of, tools_of

    engine = _load_engine(args.policies)
    inventory = f"{args.policies.rstrip('/')}/entities.json"
    if args.agent:
        if args.agent not in agents_of(engine):
            _fail(f"agent {args.agent} is not in the inventory ({inventory})")
        agents = [args.agent]
    elif args.group:
        if args.group not in groups_of(engine):
            _fail(f"agent group {args.group!r} is not in the inventory ({inventory})")
        agents = agents_of(engine, args.group)
    else:
        agents = agents_of(engine)
    tools = tools_of(engine, args.server)
    if args.server and not tools:
        _fail(f"server {args.server!r} is not in the inventory ({inventory})")
    rows = list(access_matrix(engine, agents, tools, now=datetime.now(UTC)))
    if args.json:
        print_json(
            {
                "policy_version": engine.version,
                "floor": FLOOR_NOTE,
                "access": [row.to_json() for row in rows],
            }
        )
        return EXIT_OK
    width = max((len(row.ref) for row in rows), default=10)
    agent = None
    for row in rows:
        if row.agent != agent:
            agent = row.agent
            print(("\n" if row is not rows[0] else "") + agent)
        if row.access == "depends":
            detail = f"on {', '.join(row.on)}: " + ", ".join(
                f"{p.policy_id} ({p.effect}, reads {', '.join(p.reads)})" for p in row.policies
            )
        else:
            detail = ", ".join(p.policy_id for p in row.policies) or "default_deny"
        print(f"  {row.ref:<{width}}  {row.access:<7}  {detail}")
    print(f"\n{FLOOR_NOTE}; policy version {engine.version}")
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    from pdp.service.commands import ServeOptions, serve

    return serve(
        ServeOptions(
            config_file=args.config,
            dev=args.dev,
            state_dir=args.state_dir,
            listen=args.listen,
            policies=args.policies,
            audit_dir=args.audit_dir,
            audit_mode=args.audit_mode,
            audit_off=args.no_audit,
            audit_key=args.audit_key,
            audit_witness=args.audit_witness,
            nats=args.nats,
            shadow_policies=args.shadow_policies,
            watch=not args.no_watch,
            workers=args.workers,
            worker_index=args.worker_index,
            metrics=args.metrics,
        )
    )


def cmd_gateway(args: argparse.Namespace) -> int:
    if not args.dev:
        raise UsageError(
            "gateway: only --dev exists; in production run Envoy with deploy/envoy/envoy.yaml"
            " (README: Putting pdp in front of MCP servers with Envoy)"
        )
    from pdp.gateway.dev import run
    from pdp.service.config import DEFAULT_STATE_DIR

    return run(
        Path(args.state_dir) if args.state_dir else DEFAULT_STATE_DIR,
        policies=Path(args.policies) if args.policies else None,
        keep_running=args.keep_running,
    )


def cmd_audit_verify(args: argparse.Namespace) -> int:
    return _audit_verify(args.rest)


def _audit_verify(argv: list[str]) -> int:
    """`pdp audit verify`; with --config FILE, the key pinned in pdp serve's config."""
    from pdp.audit.verify import Pins
    from pdp.audit.verify import main as verify_main

    config_file = next(
        (argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == "--config"),
        next((arg.split("=", 1)[1] for arg in argv if arg.startswith("--config=")), None),
    )
    if config_file is None:
        return verify_main(argv)
    from pdp.service.config import ConfigError, load_config

    try:
        audit = load_config(config_file).audit
    except ConfigError as exc:
        print(f"pdp: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if audit.public_key is None and not audit.key_fingerprint:
        print(
            f"pdp: {config_file}: pins no key (audit.key_fingerprint, audit.public_key)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    pins = Pins(audit.public_key, audit.key_fingerprint or None, f"{config_file}")
    return verify_main(argv, configured=pins)


def cmd_audit_export(args: argparse.Namespace) -> int:
    from pdp.replay.export import run_export

    return run_export(args.sources, args.format, sys.stdout.buffer, follow=args.follow)


def cmd_tools(args: argparse.Namespace) -> int:
    import dataclasses

    from pdp.engine.tools import allowed_tools
    from pdp.model import RequestError, parse_request

    engine = _load_engine(args.policies)
    data = read_json_input(args.request)
    if not isinstance(data, dict):
        _fail(f"{args.request}: the request must be a JSON object")
    named = [name for name in ("tool", "arguments") if name in data]
    if named:
        _fail(
            f"{args.request}: {' and '.join(named)} not expected: pdp tools answers for"
            " every tool of the server"
        )
    try:
        # The one request parser; the tool is each of the server's in turn.
        template = parse_request(
            {**data, "tool": "tools"}, now=datetime.now(UTC), limits=engine.limits
        )
    except RequestError as exc:
        _fail(f"{args.request}: {exc} (rule: {exc.rule})")
    listing = allowed_tools(engine, dataclasses.replace(template, tool=""))
    print_json(listing.to_json())
    return EXIT_OK


def cmd_call(args: argparse.Namespace) -> int:
    from pdp.client import Client, ClientError, identity_from_options

    options = ClientOptions.from_args(args)
    data = read_json_input(args.request)
    try:
        identity = identity_from_options(options)
    except ClientError as exc:
        _fail(str(exc))
    try:
        # A failure is an error here (exit 2), not a made-up deny printed as an answer.
        with Client(
            options.target,
            identity,
            timeout=options.timeout,
            on_failure="raise",
            server_name=options.server_name,
        ) as client:
            result = client.check(data)
    except ClientError as exc:
        _fail(str(exc))
    finally:
        identity.close()
    print_json(result.to_json())
    return EXIT_OK if result.allowed else EXIT_DENY


# --- parser ----------------------------------------------------------------------


def _policies_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--policies",
        "-p",
        default=DEFAULT_POLICIES,
        metavar="DIR",
        help="policy directory (default: $PDP_POLICIES or ./policies)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pdp", description="SPIFFE-native policy decision point for AI-agent tool calls."
    )
    parser.add_argument("--version", action="version", version=f"pdp {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("validate", help="parse and validate a policy directory")
    _policies_option(p)
    p.set_defaults(handler=cmd_validate)

    p = sub.add_parser("check", help="decide one request (JSON file or '-' for stdin)")
    p.add_argument("--dev", action="store_true", help="trust the dev intent issuer (tokens)")
    p.add_argument("--state-dir", metavar="DIR", help="dev state (default: .pdp-state)")
    _policies_option(p)
    p.add_argument("request", metavar="REQUEST.json")
    p.set_defaults(handler=cmd_check)

    p = sub.add_parser("test", help="run policy unit tests (*.test.yaml / *.test.json)")
    _policies_option(p)
    p.add_argument("files", nargs="*", metavar="FILE", help="default: suites in the directory")
    p.add_argument("-v", "--verbose", action="store_true", help="also list passing cases")
    p.set_defaults(handler=cmd_test)

    p = sub.add_parser("fmt", help="format Cedar files in place (or --check)")
    _policies_option(p)
    p.add_argument("paths", nargs="*", metavar="PATH", help="files or directories")
    p.add_argument("--check", action="store_true", help="exit 1 if a file would change")
    p.add_argument("--line-width", type=int, default=100)
    p.set_defaults(handler=cmd_fmt)

    p = sub.add_parser(
        "access", help="effective access: which tools each agent can reach (allow/never/depends)"
    )
    _policies_option(p)
    who = p.add_mutually_exclusive_group()
    who.add_argument("--agent", metavar="SPIFFE_ID", help="one agent of the inventory")
    who.add_argument("--group", metavar="GROUP", help="the agents of one group (nested too)")
    p.add_argument("--server", metavar="NAME", help="only this MCP server's tools")
    p.add_argument("--json", action="store_true", help="JSON instead of a table")
    p.set_defaults(handler=cmd_access)

    p = sub.add_parser("schema", help="schema helpers")
    schema_sub = p.add_subparsers(dest="schema_command", required=True, metavar="SUBCOMMAND")
    q = schema_sub.add_parser(
        "from-mcp", help="Cedar action declarations from an MCP tools/list result"
    )
    q.add_argument("tools_list", metavar="TOOLS_LIST.json", nargs="?")
    q.add_argument("--server", required=True, help="the MCP server's name in the inventory")
    q.add_argument(
        "--inventory",
        action="store_true",
        help="print the entities.json fragment instead (input schemas and pinned digests)",
    )
    q.add_argument(
        "--connect",
        metavar="URL|COMMAND",
        help="list the tools of a live MCP server: a streamable HTTP URL, or a command"
        " started as a stdio server (instead of TOOLS_LIST.json)",
    )
    q.add_argument("--save", metavar="FILE", help="with --connect: also keep the tools/list")
    q.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS")
    q.set_defaults(handler=cmd_schema_from_mcp)

    p = sub.add_parser("inventory", help="inventory helpers")
    inventory_sub = p.add_subparsers(dest="inventory_command", required=True, metavar="SUBCOMMAND")
    q = inventory_sub.add_parser(
        "diff", help="tools added, removed and changed between two tools/list snapshots"
    )
    q.add_argument("old", metavar="OLD.json")
    q.add_argument("new", metavar="NEW.json")
    q.add_argument("--json", action="store_true", help="JSON instead of text")
    q.set_defaults(handler=cmd_inventory_diff)

    p = sub.add_parser("serve", help="run the mTLS gRPC decision service")
    p.add_argument("--config", "-c", metavar="FILE", help="YAML service configuration")
    p.add_argument(
        "--dev", action="store_true", help="use a local dev CA (in --state-dir) as identity"
    )
    p.add_argument(
        "--state-dir",
        metavar="DIR",
        help="pdp's own files: policy archive, audit log, dev CA (default: state_dir of"
        " the config, else $STATE_DIRECTORY; ./.pdp-state only with --dev)",
    )
    p.add_argument("--listen", metavar="HOST:PORT", help="default: 127.0.0.1:8443")
    p.add_argument("--policies", "-p", metavar="DIR", help="policy directory (default: policies)")
    p.add_argument("--audit-dir", metavar="DIR", help="audit log (default: STATE_DIR/audit)")
    p.add_argument(
        "--audit-mode",
        choices=["sync", "async"],
        default="sync",
        help="sync (default): answer only once the record is on disk (group commit);"
        " async: answer once it is queued, and lose what is queued or unsynced"
        " (up to ~0.25 s of answered decisions) if the process or machine dies",
    )
    p.add_argument(
        "--audit-key",
        metavar="FILE",
        help="checkpoint signing key, kept apart from the audit log, mode 0600, created if"
        " absent (default: audit.key_file, else STATE_DIR/audit-signing.key)",
    )
    p.add_argument(
        "--audit-witness",
        metavar="FILE",
        help="also write the latest checkpoint here, out of the log writer's reach"
        " (for pdp audit verify --witness; default: audit.witness_file)",
    )
    p.add_argument("--no-audit", action="store_true", help="no audit log (benchmarks only)")
    p.add_argument("--nats", metavar="URL", help="also ship the audit log to NATS JetStream")
    p.add_argument(
        "--shadow-policies",
        metavar="DIR",
        help="decide every request with these policies too, recorded, not enforced",
    )
    p.add_argument("--no-watch", action="store_true", help="reload policies on SIGHUP only")
    p.add_argument(
        "--workers",
        metavar="N",
        help="server processes on one port, each with its own engine and audit chain"
        " (a number or 'auto' for one per core; default: server.workers, 1)",
    )
    p.add_argument(
        "--metrics",
        metavar="[HOST:]PORT",
        help="serve Prometheus metrics over plain HTTP (a bare port: loopback; with N workers,"
        " worker K on PORT+K; default: config metrics_listen, none)",
    )
    p.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
    p.set_defaults(handler=cmd_serve)

    p = sub.add_parser("gateway", help="Envoy in front of a sample MCP server, asking pdp (a demo)")
    p.add_argument(
        "--dev",
        action="store_true",
        help="run pdp serve --dev, the sample server and Envoy; call one allowed and one"
        " denied tool",
    )
    p.add_argument("--state-dir", metavar="DIR", help="dev CA state (default: .pdp-state)")
    p.add_argument("--policies", "-p", metavar="DIR", help="policy directory (default: policies)")
    p.add_argument("--keep-running", action="store_true", help="leave the gateway up after")
    p.set_defaults(handler=cmd_gateway)

    p = sub.add_parser("audit", help="audit log tools")
    audit_sub = p.add_subparsers(dest="audit_command", required=True, metavar="SUBCOMMAND")
    q = audit_sub.add_parser(
        "verify", help="check the hash chain and signed checkpoints", add_help=False
    )
    q.add_argument("rest", nargs=argparse.REMAINDER)
    q.set_defaults(handler=cmd_audit_verify)
    q = audit_sub.add_parser(
        "export",
        help="audit logs for a SIEM: OCSF API Activity events or the JSON Lines as logged",
    )
    q.add_argument(
        "sources", nargs="+", metavar="LOG", help="log files, directories or nats:// URLs"
    )
    q.add_argument(
        "--format",
        choices=["ocsf", "jsonl"],
        default="ocsf",
        help="ocsf: one OCSF 1.8.0 event per decision and refusal (default);"
        " jsonl: every line unchanged",
    )
    q.add_argument(
        "--follow",
        "-f",
        action="store_true",
        help="keep reading one live log file or directory (rotations followed) until interrupted",
    )
    q.set_defaults(handler=cmd_audit_export)

    add_replay_parser(sub)
    from pdp.posture.cli import add_posture_parser

    add_posture_parser(sub)

    p = sub.add_parser("intent", help="signed intents")
    intent_sub = p.add_subparsers(dest="intent_command", required=True)
    q = intent_sub.add_parser(
        "sign", help="print a signed intent (compact JWS) for tests and demos"
    )
    q.add_argument("--agent", required=True, metavar="SPIFFE_ID", help="the token's sub")
    q.add_argument("--purpose", required=True)
    q.add_argument(
        "--tool",
        dest="tools",
        action="append",
        required=True,
        metavar="SERVER/TOOL",
        help="a tool the intent covers ('server/tool' or 'server/*'); repeat for more",
    )
    q.add_argument("--audience", metavar="SPIFFE_ID", help="pdp's ID (--dev: the dev server's)")
    q.add_argument("--lifetime", type=int, default=300, metavar="SECONDS")
    q.add_argument("--dev", action="store_true", help="sign as the dev state's intent issuer")
    q.add_argument("--state-dir", metavar="DIR", help="dev state (default: .pdp-state)")
    q.add_argument("--key", metavar="JWK_FILE", help="sign with this private JWK instead")
    q.add_argument("--issuer", metavar="ISS", help="with --key: the issuer's name (iss)")
    q.add_argument("--alg", help="with --key: the algorithm (default by key type)")
    q.set_defaults(handler=cmd_intent_sign)

    p = sub.add_parser(
        "tools",
        help="which tools of a server may an agent call: allow, deny, depends_on_arguments",
    )
    _policies_option(p)
    p.add_argument(
        "request", metavar="REQUEST.json", help="agent, server, intent, session (and time)"
    )
    p.set_defaults(handler=cmd_tools)

    p = sub.add_parser("call", help="ask a running `pdp serve` for one decision over mTLS")
    p.add_argument("request", metavar="REQUEST.json")
    p.add_argument("--target", default=DEFAULT_TARGET, metavar="HOST:PORT")
    add_client_identity_options(p)
    p.add_argument(
        "--timeout", type=float, default=10.0, metavar="SECONDS", help="deadline of the call"
    )
    p.set_defaults(handler=cmd_call)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:2] == ["audit", "verify"]:  # its own parser owns every option, --help included
        return _audit_verify(arguments[2:])
    parser = build_parser()
    args = parser.parse_args(arguments)
    handler: Handler = args.handler
    try:
        return handler(args)
    except UsageError as exc:
        print(f"pdp: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
