"""gRPC health follows the audit log: NOT_SERVING while records cannot be written (the
service then denies every decision with ``audit_unavailable``), SERVING once it
recovers. End to end over mTLS with a really full file system (a tiny tmpfs)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pdp._proto.pdp.v1 import audit_pb2 as apb
from pdp._proto.pdp.v1 import decision_pb2 as pb
from pdp.audit import AuditConfig, DeliveryMode, FileSinkConfig, PipelineConfig, open_audit
from pdp.audit.service_sink import AuditDecisionSink
from pdp.engine import Engine
from pdp.identity.sources import StaticFileSource
from pdp.model import REASON_AUDIT_UNAVAILABLE
from pdp.service import DecisionServer
from pdp.service.operations import audit_health
from pdp.service.watch import STATUS_METHOD

from .conftest import TD, ClientFactory, Pki, ServerFactory, example_request, service_config

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
WATCHER_ID = f"spiffe://{TD}/ops/status"


def wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> bool:
    """Polls ``condition`` until it holds or ``timeout`` passes (a bound, not a timing)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def health_of(channel: grpc.Channel) -> Callable[[], dict[str, int]]:
    stub = health_pb2_grpc.HealthStub(channel)

    def statuses() -> dict[str, int]:
        return {
            service: stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
            for service in ("", "pdp.v1.DecisionService")
        }

    return statuses


def test_health_sources_drive_serving(make_server: ServerFactory, connect: ClientFactory) -> None:
    """The generic hook: any (ok, detail) callable; one that raises counts as failing."""
    state = {"ok": True, "raise": False}

    def source() -> tuple[bool, str]:
        if state["raise"]:
            raise RuntimeError("probe broke")
        return state["ok"], "all good" if state["ok"] else "disk on fire"

    server = make_server()
    server.stop(0)
    server = DecisionServer(
        server.config, server.engine, server.identity, health_sources={"disk": source}
    ).start()
    try:
        statuses = health_of(connect(server).channel)
        assert statuses() == {"": SERVING, "pdp.v1.DecisionService": SERVING}
        state["ok"] = False
        assert wait_for(
            lambda: statuses() == {"": NOT_SERVING, "pdp.v1.DecisionService": NOT_SERVING}
        )
        assert server.failing_checks() == "disk: disk on fire"
        state["ok"] = True
        assert wait_for(lambda: statuses()[""] == SERVING)
        state["raise"] = True
        assert wait_for(lambda: statuses()[""] == NOT_SERVING)
        assert "health check failed: RuntimeError: probe broke" in server.failing_checks()
        state["raise"] = False
        assert wait_for(lambda: statuses()[""] == SERVING)
    finally:
        server.stop(0)


@contextlib.contextmanager
def tiny_tmpfs(path: Path, size: str = "4m") -> Iterator[Path]:
    """A small tmpfs to fill up (as tests/audit does); mounting needs root."""
    path.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(
            "cannot mount a tmpfs to fill a file system (needs root):"
            f" {result.stderr.decode().strip()}"
        )
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path: Path) -> None:
    """Fills the file system of ``path`` completely."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with contextlib.suppress(OSError):
            while os.write(fd, b"\0" * 4096):
                pass
    finally:
        os.close(fd)


def test_disk_full_denies_and_reports_not_serving_until_it_recovers(
    engine: Engine,
    identity: StaticFileSource,
    connect: ClientFactory,
    pki: Pki,
    tmp_path: Path,
) -> None:
    with tiny_tmpfs(tmp_path / "mnt") as mnt:
        audit = open_audit(
            AuditConfig(
                file=FileSinkConfig(
                    mnt / "audit", key_file=tmp_path / "keys" / "audit-signing.key"
                ),
                instance_id="health-test",
                pipeline=PipelineConfig(mode=DeliveryMode.SYNC, retry_max_s=0.2),
            )
        )
        server = DecisionServer(
            service_config(audit_watchers=(WATCHER_ID,)),
            engine,
            identity,
            sink=AuditDecisionSink(audit),
            audit_feed=audit.pipeline,
            health_sources={"audit": audit_health(audit)},
        ).start()
        try:
            client = connect(server)
            statuses = health_of(client.channel)
            watcher = pki.svid(WATCHER_ID)
            status = connect(server, watcher).channel.unary_unary(
                STATUS_METHOD,
                request_serializer=apb.StatusRequest.SerializeToString,
                response_deserializer=apb.StatusResponse.FromString,
            )
            assert client.check(example_request()).decision == pb.DECISION_ALLOW
            assert statuses() == {"": SERVING, "pdp.v1.DecisionService": SERVING}

            fill(mnt / "filler")
            # Health says so at once (free space); decisions fail as soon as a record no
            # longer fits (the log file's last page may still take one or two).
            assert wait_for(
                lambda: statuses() == {"": NOT_SERVING, "pdp.v1.DecisionService": NOT_SERVING}
            )
            denied = None
            for _ in range(50):
                response = client.check(example_request())
                if response.decision != pb.DECISION_ALLOW:
                    denied = response
                    break
            assert denied is not None, "the full file system never failed a write"
            assert [r.policy for r in denied.reasons] == [REASON_AUDIT_UNAVAILABLE]
            assert statuses() == {"": NOT_SERVING, "pdp.v1.DecisionService": NOT_SERVING}
            # Meanwhile every decision is denied, and the operator can see why.
            again = client.check(example_request())
            assert [r.policy for r in again.reasons] == [REASON_AUDIT_UNAVAILABLE]
            detail = status(apb.StatusRequest(), timeout=10)
            assert not detail.serving
            audit_check = {c.name: c for c in detail.checks}["audit"]
            assert not audit_check.ok
            assert "No space left on device" in audit_check.detail or (
                "file system is full" in audit_check.detail
            )

            (mnt / "filler").unlink()
            assert wait_for(lambda: statuses() == {"": SERVING, "pdp.v1.DecisionService": SERVING})
            allowed = client.check(example_request())
            assert allowed.decision == pb.DECISION_ALLOW
            assert status(apb.StatusRequest(), timeout=10).serving
        finally:
            server.stop(0)
            audit.close()
