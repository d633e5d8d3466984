"""``pdp.v1.AuditService/WatchDecisions``: a live, filtered feed of the audit log.

Real servers over mutual TLS with the real audit stream (file log, pipeline listener),
real grpc clients reading the server stream.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from pdp import __version__
from pdp._proto.pdp.v1 import audit_pb2 as apb
from pdp._proto.pdp.v1 import decision_pb2 as pb
from pdp.audit import Audit, AuditConfig, DeliveryMode, FileSinkConfig, PipelineConfig, open_audit
from pdp.audit.service_sink import AuditDecisionSink
from pdp.engine import Engine
from pdp.identity.devca import IssuedCert
from pdp.identity.sources import StaticFileSource
from pdp.service import DecisionServer, ServiceLimits
from pdp.service.operations import audit_health
from pdp.service.watch import STATUS_METHOD, WATCH_METHOD, WATCHING_HEADER

from .conftest import (
    GATEWAY_ID,
    PARTNER_TD,
    STRANGER_ID,
    TD,
    TIMEOUT,
    ClientFactory,
    Pki,
    example_request,
    rpc_error,
    service_config,
)

WATCHER_ID = f"spiffe://{TD}/siem/collector"
WATCHERS = (f"spiffe://{TD}/siem/*",)
SECRET = "sk_live_" + "4eC39HqLyjWDarjtT1zdp7dc"  # a credential-shaped value


@dataclass
class Audited:
    server: DecisionServer
    audit: Audit
    log_dir: Path


@pytest.fixture
def audited(
    engine: Engine, identity: StaticFileSource, tmp_path: Path
) -> Iterator[Callable[..., Audited]]:
    made: list[Audited] = []

    def make(*, mode: str = "sync", audit_on: bool = True, **changes: Any) -> Audited:
        log_dir = tmp_path / f"audit-{len(made)}"
        changes.setdefault("audit_watchers", WATCHERS)
        audit = open_audit(
            AuditConfig(
                file=FileSinkConfig(log_dir),
                instance_id="watch-test",
                pipeline=PipelineConfig(mode=DeliveryMode(mode)),
            )
        )
        server = DecisionServer(
            service_config(**changes),
            engine,
            identity,
            sink=AuditDecisionSink(audit),
            audit_feed=audit.pipeline if audit_on else None,
            health_sources={"audit": audit_health(audit)},
        ).start()
        made.append(Audited(server, audit, log_dir))
        return made[-1]

    yield make
    for item in made:
        item.server.stop(0)
        item.audit.close()


class Watch:
    """One WatchDecisions stream read by a real sync grpc client."""

    def __init__(
        self, address: str, svid: IssuedCert, roots: bytes, request: apb.WatchRequest
    ) -> None:
        credentials = grpc.ssl_channel_credentials(roots, svid.key_pem, svid.chain_pem)
        # No BDP probing: the flow-control window stays small, so that a watcher that
        # does not read soon stops taking bytes (the slow-watcher test relies on it).
        self.channel = grpc.secure_channel(address, credentials, [("grpc.http2.bdp_probe", 0)])
        watch = self.channel.unary_stream(
            WATCH_METHOD,
            request_serializer=apb.WatchRequest.SerializeToString,
            response_deserializer=apb.AuditRecord.FromString,
        )
        # A deadline far beyond any test: on a loaded machine the slow-watcher test alone
        # ran past 60 s, and the fast watcher's stream then ended by deadline mid-test.
        self.stream = watch(request, timeout=600)

    def subscribed(self) -> None:
        """Returns once the server has subscribed this watcher (or raises its error)."""
        metadata = dict(self.stream.initial_metadata())
        if metadata.get(WATCHING_HEADER[0]) != WATCHING_HEADER[1]:
            raise self.error()

    def next(self) -> apb.AuditRecord:
        record: apb.AuditRecord = next(self.stream)
        return record

    def take(self, count: int) -> list[apb.AuditRecord]:
        return [self.next() for _ in range(count)]

    def error(self) -> grpc.RpcError:
        """Reads to the end of the stream; returns the error it ends with."""
        with pytest.raises(grpc.RpcError) as info:
            for _ in self.stream:
                pass
        return info.value

    def close(self) -> None:
        self.stream.cancel()
        self.channel.close()


@pytest.fixture
def watch(pki: Pki) -> Iterator[Callable[..., Watch]]:
    opened: list[Watch] = []

    def open_(target: DecisionServer, svid: IssuedCert | None = None, **filters: Any) -> Watch:
        stream = Watch(
            target.address,
            svid or pki.svid(WATCHER_ID),
            pki.ca.bundle_pem,
            apb.WatchRequest(**filters),
        )
        opened.append(stream)
        return stream

    yield open_
    for stream in opened:
        stream.close()


def log_records(log_dir: Path) -> dict[str, str]:
    """decision_id -> the line as written, for every record with an id."""
    out = {}
    for path in sorted(log_dir.glob("audit-*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            data = json.loads(line)
            if data.get("decision_id"):
                out[data["decision_id"]] = line
    return out


def request_for(agent: str = "support-bot", **changes: Any) -> dict[str, Any]:
    data = example_request()
    data["agent"] = f"spiffe://acme.test/agent/{agent}"
    data.update(changes)
    return data


def wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> bool:
    """Polls ``condition`` until it holds or ``timeout`` passes (a bound, not a timing)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def refusal_id(error: grpc.RpcError) -> str:
    match = re.search(r"\(refusal id ([0-9a-f-]{36})\)", error.details() or "")
    assert match, error.details()
    return match.group(1)


def test_watcher_gets_the_records_of_concurrent_calls_as_logged(
    audited: Callable[..., Audited], watch: Callable[..., Watch], connect: ClientFactory
) -> None:
    served = audited()
    stream = watch(served.server)
    stream.subscribed()
    results: list[pb.CheckResponse] = []
    lock = threading.Lock()

    def calls() -> None:
        client = connect(served.server)
        for _ in range(10):
            response = client.check(request_for())
            with lock:
                results.append(response)

    threads = [threading.Thread(target=calls) for _ in range(4)]
    for thread in threads:
        thread.start()
    records = stream.take(40)
    for thread in threads:
        thread.join(TIMEOUT)
    assert {r.decision_id for r in records} == {r.decision_id for r in results}
    assert all(r.decision == pb.DECISION_ALLOW for r in results)
    written = log_records(served.log_dir)
    for record in records:
        # The record exactly as written to the log, chain members included.
        assert record.record_json == written[record.decision_id]
        data = json.loads(record.record_json)
        assert (record.kind, record.decision, record.seq) == ("decision", "allow", data["seq"])
        assert (record.agent, record.server, record.tool) == (
            "spiffe://acme.test/agent/support-bot",
            "crm",
            "get_ticket",
        )
        assert record.caller == GATEWAY_ID
        assert record.policy_version == data["policy_version"]
    assert [r.seq for r in records] == sorted(r.seq for r in records)


def test_filters_select_decisions_refusals_and_callers(
    audited: Callable[..., Audited],
    watch: Callable[..., Watch],
    connect: ClientFactory,
    pki: Pki,
) -> None:
    server = audited().server
    streams = {
        "denies": watch(server, decision="deny"),
        "search": watch(server, server="crm", tool="search_tickets"),
        "other_agents": watch(server, agent="spiffe://acme.test/agent/other/*"),
        "partner": watch(server, caller=f"spiffe://{PARTNER_TD}/gateway/*", include_refusals=True),
        "strangers": watch(server, caller=STRANGER_ID, include_refusals=True),
        "decisions": watch(server),
        "everything": watch(server, include_refusals=True),
    }
    for stream in streams.values():
        stream.subscribed()
    gateway = connect(server)
    partner = connect(server, pki.partner_gateway)
    stranger = connect(server, pki.stranger)
    helper = {**request_for(), "agent": "spiffe://partner.test/agent/helper"}

    def refused() -> str:
        return refusal_id(rpc_error(lambda: stranger.check(request_for())))

    allowed = gateway.check(request_for()).decision_id
    deleted = gateway.check(example_request("support-delete-ticket"))
    assert deleted.decision == pb.DECISION_DENY
    searched = gateway.check(request_for(tool="search_tickets", arguments={"query": "x"}))
    other = gateway.check(request_for("other/helper"))
    assert other.decision == pb.DECISION_DENY
    partnered = partner.check(helper)
    from_partner = partnered.decision_id
    refusal = refused()
    unbound = gateway.check(helper)  # the gateway may not ask about partner agents
    assert unbound.reasons[0].policy == "caller_not_bound"

    # Markers, after everything else: each stream is read up to the first marker it
    # matches, which proves that nothing else was sent to it before.
    marker = gateway.check(request_for("other/marker", tool="search_tickets"))
    assert marker.decision == pb.DECISION_DENY
    markers = {marker.decision_id, partner.check(helper).decision_id, refused()}

    def before_marker(stream: Watch) -> list[str]:
        ids = []
        while (record := stream.next()).decision_id not in markers:
            ids.append(record.decision_id)
        return ids

    deny_ids = [
        r.decision_id
        for r in (deleted, searched, other, partnered, unbound)
        if r.decision == pb.DECISION_DENY
    ]
    decisions = [
        allowed,
        deleted.decision_id,
        searched.decision_id,
        other.decision_id,
        from_partner,
        unbound.decision_id,
    ]
    assert before_marker(streams["denies"]) == deny_ids
    assert before_marker(streams["search"]) == [searched.decision_id]
    assert before_marker(streams["other_agents"]) == [other.decision_id]
    assert before_marker(streams["partner"]) == [from_partner]
    assert before_marker(streams["strangers"]) == [refusal]
    assert before_marker(streams["decisions"]) == decisions
    assert before_marker(streams["everything"]) == [*decisions[:5], refusal, decisions[5]]


def test_records_are_redacted_as_in_the_log(
    audited: Callable[..., Audited], watch: Callable[..., Watch], connect: ClientFactory
) -> None:
    served = audited()
    stream = watch(served.server)
    stream.subscribed()
    arguments = {"ticket_id": "T-1", "password": SECRET, "note": f"key {SECRET}"}
    response = connect(served.server).check(request_for(arguments=arguments))
    record = stream.next()
    assert record.decision_id == response.decision_id
    assert SECRET not in record.record_json
    data = json.loads(record.record_json)
    assert data["arguments_redacted"] is True
    assert data["request"]["arguments"]["password"] == "[REDACTED]"
    assert data["request"]["arguments"]["ticket_id"] == "T-1"
    assert record.record_json == log_records(served.log_dir)[response.decision_id]


def test_a_decision_caller_is_not_a_watcher(
    audited: Callable[..., Audited], watch: Callable[..., Watch], pki: Pki
) -> None:
    served = audited()
    error = watch(served.server, pki.gateway).error()
    assert error.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "not allowed to watch the audit log (config audit_watchers)" in (error.details() or "")
    # Refused like any call: with a refusal record in the log (written without waiting).
    assert served.audit.pipeline.flush(TIMEOUT)
    refusals = [
        json.loads(line)
        for line in log_records(served.log_dir).values()
        if json.loads(line)["kind"] == "refusal"
    ]
    assert refusals[0]["caller"]["spiffe_id"] == GATEWAY_ID
    assert refusals[0]["method"] == WATCH_METHOD


def test_nobody_watches_by_default(
    audited: Callable[..., Audited], watch: Callable[..., Watch]
) -> None:
    served = audited(audit_watchers=())
    assert watch(served.server).error().code() is grpc.StatusCode.PERMISSION_DENIED


def test_unauthenticated_watchers_are_refused(
    audited: Callable[..., Audited], watch: Callable[..., Watch], pki: Pki
) -> None:
    served = audited()
    # The right SPIFFE ID from the wrong trust domain's CA: TLS passes on the pooled
    # roots, pdp's own check refuses.
    forged = pki.partner.issue_svid(WATCHER_ID)
    error = watch(served.server, forged).error()
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED
    # A certificate from an untrusted CA never gets past the handshake.
    rogue = pki.evil.issue_svid(WATCHER_ID)
    assert watch(served.server, rogue).error().code() is grpc.StatusCode.UNAVAILABLE


def test_without_audit_there_is_nothing_to_watch(
    audited: Callable[..., Audited], watch: Callable[..., Watch]
) -> None:
    served = audited(audit_on=False)
    error = watch(served.server).error()
    assert error.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "--no-audit" in (error.details() or "")


def test_bad_filters_are_invalid_arguments(
    audited: Callable[..., Audited], watch: Callable[..., Watch]
) -> None:
    served = audited()
    for filters in ({"agent": "support-bot"}, {"decision": "maybe"}, {"caller": "spiffe://x"}):
        error = watch(served.server, **filters).error()
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, filters


def test_watchers_are_limited(
    audited: Callable[..., Audited], watch: Callable[..., Watch], connect: ClientFactory
) -> None:
    served = audited(limits=ServiceLimits(max_watchers=2))
    first, second = watch(served.server), watch(served.server)
    first.subscribed()
    second.subscribed()
    error = watch(served.server).error()
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "limits.max_watchers" in (error.details() or "")
    # A watcher that leaves frees its place (the server notices the cancelled stream
    # asynchronously).
    first.close()
    hub = served.server.hub
    assert hub is not None
    assert wait_for(lambda: hub.count == 1)
    stream = watch(served.server)
    stream.subscribed()
    response = connect(served.server).check(request_for())
    assert stream.next().decision_id == response.decision_id


def test_a_slow_watcher_is_cut_off_and_never_slows_decisions(
    audited: Callable[..., Audited], watch: Callable[..., Watch], connect: ClientFactory
) -> None:
    served = audited(mode="async", limits=ServiceLimits(watch_queue=64))
    hub = served.server.hub
    assert hub is not None
    slow = watch(served.server)
    slow.subscribed()  # ...and does not read until the end
    fast = watch(served.server, tool="get_ticket", decision="allow")
    fast.subscribed()
    seen_fast: list[str] = []

    def read_fast() -> None:
        with contextlib.suppress(grpc.RpcError):  # CANCELLED when the test closes it
            seen_fast.extend(record.decision_id for record in fast.stream)

    reader = threading.Thread(target=read_fast, daemon=True)
    reader.start()
    client = connect(served.server)
    # Big records fill the slow watcher's flow-control window, then its queue.
    padding = {f"field_{i}": "x" * 8000 for i in range(7)}
    big = request_for(tool="search_tickets", arguments=padding)
    decided: list[pb.CheckResponse] = []
    gets: list[str] = []
    while not hub.cut_off:
        assert len(gets) < 500, "the slow watcher was never cut off"
        decided.extend(client.check_batch([big] * 16).responses)
        answer = client.check(request_for())
        decided.append(answer)
        gets.append(answer.decision_id)
        # The fast watcher reads as it goes: on a loaded machine its reader thread could
        # otherwise fall a whole queue behind and be cut off itself, which is not under test.
        assert wait_for(lambda: len(seen_fast) >= len(gets)), f"{len(seen_fast)} of {len(gets)}"
    for _ in range(5):
        answer = client.check(request_for())
        decided.append(answer)
        gets.append(answer.decision_id)
    # Decisions went on as usual: none was failed or denied for the watcher's sake.
    assert all(r.reasons[0].policy != "audit_unavailable" for r in decided)
    assert all(r.reasons[0].policy != "internal_error" for r in decided)
    assert all(r.decision == pb.DECISION_ALLOW for r in decided if r.decision_id in set(gets))

    # Its place is freed even though its client reads nothing (the stream may be stuck
    # behind flow control: then the server cancels it after a grace period).
    assert wait_for(lambda: hub.count == 1)
    # The slow watcher may get what was already on its way, then why it was cut off.
    received = 0
    with pytest.raises(grpc.RpcError) as info:
        for _ in slow.stream:
            received += 1
    error = info.value
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    details = error.details() or ""
    assert "watcher cut off: it fell behind" in details
    match = re.search(r"; (\d+) records missed", details)
    assert match and int(match.group(1)) > 0, details
    assert received + int(match.group(1)) <= len(decided)
    # The other watcher kept up and got every record it asked for.
    assert wait_for(lambda: len(seen_fast) >= len(gets)), f"{len(seen_fast)} of {len(gets)}"
    assert seen_fast == gets


def test_stop_ends_watch_streams(
    audited: Callable[..., Audited], watch: Callable[..., Watch]
) -> None:
    served = audited()
    stream = watch(served.server)
    stream.subscribed()
    served.server.stop(30)  # returns once the stream has ended: it does not wait 30 s
    assert list(stream.stream) == []


def test_status_for_watchers_only(
    audited: Callable[..., Audited], watch: Callable[..., Watch], pki: Pki
) -> None:
    served = audited()
    watcher = pki.svid(WATCHER_ID)
    credentials = grpc.ssl_channel_credentials(
        pki.ca.bundle_pem, watcher.key_pem, watcher.chain_pem
    )
    stream = watch(served.server)
    stream.subscribed()
    with grpc.secure_channel(served.server.address, credentials) as channel:
        status = channel.unary_unary(
            STATUS_METHOD,
            request_serializer=apb.StatusRequest.SerializeToString,
            response_deserializer=apb.StatusResponse.FromString,
        )(apb.StatusRequest(), timeout=TIMEOUT)
    assert status.serving
    assert [(c.name, c.ok) for c in status.checks] == [
        ("identity", True),
        ("trust", True),
        ("audit", True),
    ]
    assert status.policy_version == served.server.engine.version
    assert status.version == __version__ and status.version
    assert status.policies == len(served.server.engine.compiled)
    assert status.watchers == 1
    assert not status.HasField("last_rejected_reload")
    gateway = grpc.ssl_channel_credentials(
        pki.ca.bundle_pem, pki.gateway.key_pem, pki.gateway.chain_pem
    )
    with grpc.secure_channel(served.server.address, gateway) as channel:
        error = rpc_error(
            lambda: channel.unary_unary(
                STATUS_METHOD,
                request_serializer=apb.StatusRequest.SerializeToString,
                response_deserializer=apb.StatusResponse.FromString,
            )(apb.StatusRequest(), timeout=TIMEOUT)
        )
    assert error.code() is grpc.StatusCode.PERMISSION_DENIED
