"""kill -9 of a process writing in sync mode: every completed ticket is in the file.

Twice: records built by the submitters (``AuditPipeline.submit``), and records built by
the writer from the service's decision events (``AuditDecisionSink``, group commit).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pdp.audit import load_public_key, verify_files
from pdp.audit.chain import list_log_files
from pdp.audit.keys import PUBLIC_KEY_FILE
from tests.audit.helpers import make_record, open_pipeline, record_ids

REPO = Path(__file__).resolve().parents[2]

WRITER = textwrap.dedent(
    """
    import sys, threading
    from datetime import UTC, datetime
    from pathlib import Path
    from pdp.audit import (AuditPipeline, FileSink, FileSinkConfig, PipelineConfig, Redactor,
                           build_decision_record, new_decision_id)
    from pdp.model import Caller, Decision, Effect, Reason, Request

    pipeline = AuditPipeline(
        FileSink(FileSinkConfig(Path(sys.argv[1]), checkpoint_every=25), "crasher"),
        PipelineConfig(),
    )
    redactor = Redactor()
    caller = Caller("spiffe://example.org/gw", "01", "example.org")
    decision = Decision(Effect.ALLOW, (Reason("p", "ok"),), "v1")
    out = threading.Lock()

    def work(n):
        while True:
            request = Request("spiffe://example.org/agent/a", "files", "read",
                              {"path": f"/t/{n}", "token": "planted-crash-token"},
                              datetime.now(UTC))
            record = build_decision_record(new_decision_id(), request, decision, caller, 5,
                                           "crasher", redactor)
            ticket = pipeline.submit(record)
            if pipeline.guard(decision, ticket).allowed:
                with out:  # the client saw an answer: the record must already be durable
                    sys.stdout.write(ticket.decision_id + "\\n")
                    sys.stdout.flush()

    for n in range(4):
        threading.Thread(target=work, args=(n,), daemon=True).start()
    threading.Event().wait()
    """
)

# The service's path: decision events handed over per call; the writer builds the records.
# Its batches are larger, so checkpoints are rare here: the kill must hit an open chain.
SINK_WRITER = textwrap.dedent(
    """
    import sys, threading
    from datetime import UTC, datetime
    from pathlib import Path
    from pdp.audit import (Audit, AuditConfig, AuditDecisionSink, FileSinkConfig,
                           PipelineConfig, new_decision_id)
    from pdp.model import Caller, Decision, Effect, Reason, Request
    from pdp.service.sink import DecisionEvent

    audit = Audit(AuditConfig(FileSinkConfig(Path(sys.argv[1]), checkpoint_every=100000),
                              instance_id="crasher", pipeline=PipelineConfig()))
    sink = AuditDecisionSink(audit)
    caller = Caller("spiffe://example.org/gw", "01", "example.org")
    decision = Decision(Effect.ALLOW, (Reason("p", "ok"),), "v1")
    out = threading.Lock()

    def work(n):
        while True:
            events = [
                DecisionEvent(new_decision_id(), "/pdp.v1.DecisionService/CheckBatch", caller,
                              {}, Request("spiffe://example.org/agent/a", "files", "read",
                                          {"path": f"/t/{n}", "token": "planted-crash-token"},
                                          datetime.now(UTC)), decision, 5)
                for _ in range(1 + n)
            ]
            flags = sink.record_decisions(events, timeout=5.0)
            with out:  # the client saw these answers: their records must already be durable
                for event, ok in zip(events, flags):
                    if ok:
                        sys.stdout.write(event.decision_id + "\\n")
                sys.stdout.flush()

    for n in range(4):
        threading.Thread(target=work, args=(n,), daemon=True).start()
    threading.Event().wait()
    """
)


@pytest.mark.parametrize("script", [WRITER, SINK_WRITER], ids=["submit", "sink"])
def test_kill_9_while_writing_in_sync_mode(tmp_path: Path, script: str) -> None:
    log_dir = tmp_path / "log"
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(log_dir)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.stdout is not None
    answered: list[str] = []
    for raw in proc.stdout:
        answered.append(raw.decode().strip())
        if len(answered) >= 300:
            break
    os.kill(proc.pid, signal.SIGKILL)
    rest = proc.stdout.read().decode()
    answered.extend(line for line in rest.split("\n") if len(line) == 36)  # complete lines only
    proc.wait(10)

    in_file = set(record_ids(log_dir))
    missing = [i for i in answered if i not in in_file]
    assert not missing, f"{len(missing)} answered decisions have no durable record"
    key = load_public_key(log_dir.parent / PUBLIC_KEY_FILE)
    report = verify_files([log_dir], key, require_genesis=True)
    assert report.ok, report.summary()
    assert report.records == len(in_file) >= len(answered)
    assert not report.sealed  # killed: no final checkpoint

    # A new pipeline notes the unclean end and continues the chain.
    with open_pipeline(log_dir) as pipeline:
        assert pipeline.submit(make_record()).wait(5)
    segment = json.loads(list_log_files(log_dir)[-1].read_bytes().splitlines()[0])
    assert segment["reason"] == "recover"
    report = verify_files([log_dir], key, require_genesis=True)
    assert report.ok and report.sealed, report.summary()
    assert b"planted-crash-token" not in b"".join(p.read_bytes() for p in list_log_files(log_dir))
