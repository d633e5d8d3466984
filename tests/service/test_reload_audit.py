"""Policy reloads in the audit log: the ``policy_reload`` record, verify and replay, and a
running ``pdp serve`` that rejects a broken policy file: audited, streamed, in its status,
while the old version keeps deciding."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pdp._proto.pdp.v1 import audit_pb2 as apb
from pdp._proto.pdp.v1 import decision_pb2 as pb
from pdp.audit import Audit, AuditConfig, FileSinkConfig, open_audit, verify_files
from pdp.audit.keys import load_public_key
from pdp.audit.record import KIND_POLICY_RELOAD, build_policy_reload_record
from pdp.identity.devca import DEV_TRUST_DOMAIN, DevCA, DevState
from pdp.replay.records import LineKind, Skipped, read_record
from pdp.service.servicer import CHECK_METHOD
from pdp.service.watch import STATUS_METHOD, WATCH_METHOD, WATCHING_HEADER

from .conftest import POLICIES, REPO, TIMEOUT, ServeProcess, example_request, to_message


def _log(directory: Path) -> list[tuple[str, dict[str, object]]]:
    """(raw line, decoded record) for every line of the log, in chain order."""
    return [
        (line, json.loads(line))
        for path in sorted(directory.glob("audit-*.jsonl"))
        for line in path.read_text(encoding="utf-8").splitlines()
    ]


def _audit(tmp_path: Path) -> Audit:
    return open_audit(AuditConfig(file=FileSinkConfig(tmp_path / "audit"), instance_id="t"))


def test_reload_record_is_chained_verified_and_skipped_by_replay(tmp_path: Path) -> None:
    audit = _audit(tmp_path)
    record = build_policy_reload_record(
        directory="/etc/pdp/policies",
        role="active",
        ok=False,
        version="v-old",
        candidate_version="",
        detail="invalid policies: /etc/pdp/policies/x.cedar:3: unexpected token",
        duration_ms=12.3456,
        instance_id=audit.instance_id,
        redactor=audit.redactor,
        time=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
    )
    assert audit.pipeline.submit(record).wait(5)
    assert audit.close()

    lines = [(raw, data) for raw, data in _log(tmp_path / "audit") if data["kind"] != "segment"]
    raw, written = next((r, d) for r, d in lines if d["kind"] == KIND_POLICY_RELOAD)
    assert {k: v for k, v in written.items() if k not in ("seq", "prev_hash", "hash")} == {
        "v": "pdp.audit/v1",
        "kind": "policy_reload",
        "time": "2026-01-02T03:04:05.000Z",
        "instance_id": "t",
        "role": "active",
        "directory": "/etc/pdp/policies",
        "ok": False,
        "version": "v-old",
        "candidate_version": "",
        "detail": "invalid policies: /etc/pdp/policies/x.cedar:3: unexpected token",
        "duration_ms": 12.346,
    }
    report = verify_files([tmp_path / "audit"], load_public_key(tmp_path / "audit-signing.pub"))
    assert report.ok, report
    assert report.records == 1
    assert read_record("x:2", raw) == Skipped("x:2", LineKind.EVENT)


def test_reload_detail_is_redacted(tmp_path: Path) -> None:
    audit = _audit(tmp_path)
    try:
        secret = "ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"
        record = build_policy_reload_record(
            directory="p",
            role="shadow",
            ok=False,
            version="v",
            candidate_version="w",
            detail=f"1 policy test(s) failed: token {secret}",
            duration_ms=1,
            instance_id="t",
            redactor=audit.redactor,
        )
    finally:
        audit.close()
    assert secret not in json.dumps(record)
    assert record["redacted"] == ["detail"]


# --- `pdp serve`: a broken policy file in a running server --------------------------

SIEM_ID = f"spiffe://{DEV_TRUST_DOMAIN}/siem/test"
BROKEN = "permit (principal,\n"


def _dev_ca(state: Path) -> DevCA:
    """The dev CA `pdp serve --dev` made in ``state`` (to issue a watcher SVID)."""
    files = DevState(state, DEV_TRUST_DOMAIN)
    cert = x509.load_pem_x509_certificate(files.bundle_file.read_bytes())
    key = serialization.load_pem_private_key(files.ca_key_file.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return DevCA(DEV_TRUST_DOMAIN, key, (cert,))


def _channel(served: ServeProcess, cert: bytes, key: bytes) -> grpc.Channel:
    assert served.state_dir is not None
    bundle = (served.state_dir / "bundle.pem").read_bytes()
    return grpc.secure_channel(served.address, grpc.ssl_channel_credentials(bundle, key, cert))


def _next_reload(stream: Any) -> apb.AuditRecord:
    for record in stream:
        if record.kind == KIND_POLICY_RELOAD:
            return cast(apb.AuditRecord, record)
    raise AssertionError("the watch stream ended")


def test_serve_audits_a_rejected_reload_and_keeps_deciding(tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    shutil.copytree(POLICIES, policies, symlinks=True, ignore=shutil.ignore_patterns("floor"))
    (policies / "floor").symlink_to(REPO / "pdp" / "floor")
    config = tmp_path / "pdp.yaml"
    config.write_text(f"audit_watchers: ['spiffe://{DEV_TRUST_DOMAIN}/siem/*']\n")
    state = tmp_path / "state"
    served = ServeProcess(
        [
            *("--config", str(config), "--dev", "--state-dir", str(state)),
            *("--policies", str(policies), "--listen", "127.0.0.1:0", "--audit-mode", "sync"),
        ],
        state_dir=state,
    )
    try:
        gateway = _channel(
            served,
            (state / "gateway.pem").read_bytes(),
            (state / "gateway.key").read_bytes(),
        )
        check = gateway.unary_unary(
            CHECK_METHOD,
            request_serializer=pb.CheckRequest.SerializeToString,
            response_deserializer=pb.CheckResponse.FromString,
        )
        before = check(to_message(example_request()), timeout=TIMEOUT)
        assert before.decision == pb.DECISION_ALLOW
        siem = _dev_ca(state).issue_svid(SIEM_ID)
        watcher = _channel(served, siem.chain_pem, siem.key_pem)
        stream = watcher.unary_stream(
            WATCH_METHOD,
            request_serializer=apb.WatchRequest.SerializeToString,
            response_deserializer=apb.AuditRecord.FromString,
        )(apb.WatchRequest(include_reloads=True), timeout=120)
        assert dict(stream.initial_metadata()).get(WATCHING_HEADER[0]) == WATCHING_HEADER[1]

        # Break a policy file of the running server (it watches the directory).
        cedar = policies / "examples" / "support.cedar"
        line = len(cedar.read_text().splitlines()) + 1
        with cedar.open("a") as out:
            out.write(BROKEN)
        rejected = _next_reload(stream)
        data = json.loads(rejected.record_json)
        assert (data["ok"], data["role"], data["version"]) == (
            False,
            "active",
            before.policy_version,
        )
        assert data["directory"] == str(policies)
        assert f"examples/support.cedar:{line}:" in data["detail"]
        assert rejected.policy_version == before.policy_version

        # The old version keeps deciding...
        after = check(to_message(example_request()), timeout=TIMEOUT)
        assert after.decision == pb.DECISION_ALLOW
        assert after.policy_version == before.policy_version
        # ...health stays SERVING, and the rejection is in the health detail.
        health = health_pb2_grpc.HealthStub(watcher)
        reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=TIMEOUT)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        status = watcher.unary_unary(
            STATUS_METHOD,
            request_serializer=apb.StatusRequest.SerializeToString,
            response_deserializer=apb.StatusResponse.FromString,
        )(apb.StatusRequest(), timeout=TIMEOUT)
        assert status.serving and status.policy_version == before.policy_version
        last = status.last_rejected_reload
        assert (last.ok, last.version, last.detail) == (
            False,
            before.policy_version,
            data["detail"],
        )
        policies_check = {c.name: c for c in status.checks}["policies"]
        assert policies_check.ok and data["detail"] in policies_check.detail

        # Repaired, the set is applied again (and that attempt is audited too).
        cedar.write_text(cedar.read_text().replace(BROKEN, ""))
        accepted = _next_reload(stream)
        assert json.loads(accepted.record_json)["ok"] is True
        stream.cancel()
        watcher.close()
        gateway.close()
    finally:
        code = served.stop()
    assert code == 0, "".join(served.stderr)[-2000:]
    assert "REJECTED, still serving the old version" in "".join(served.stderr)

    logged = [
        line
        for path in sorted((state / "audit").glob("audit-*.jsonl"))
        for line in path.read_text(encoding="utf-8").splitlines()
    ]
    assert rejected.record_json in logged  # the streamed record is the logged line
    assert accepted.record_json in logged
    verify = subprocess.run(
        [sys.executable, "-m", "pdp.cli", "audit", "verify", str(state / "audit")],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
