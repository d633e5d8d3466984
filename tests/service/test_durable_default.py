"""The default audit mode is durable: `pdp serve` killed with SIGKILL under load loses no
decision it had answered (a real server on a real socket, real clients, real disk)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import grpc
from google.protobuf import json_format

from pdp._proto.pdp.v1 import decision_pb2 as pb
from pdp.model import REASON_AUDIT_UNAVAILABLE
from pdp.service.servicer import CHECK_BATCH_METHOD, CHECK_METHOD
from tests.service.test_serve_lifecycle import PDP, REQUEST, copy_policies, start_serve

MESSAGE = json_format.ParseDict(json.loads(REQUEST.read_text()), pb.CheckRequest())


def load(state: Path, address: str, answered: list[str], stop: threading.Event, batch: int) -> None:
    """Sends Check (or CheckBatch of ``batch``) calls until the server is gone; records
    the decision id of every answer that was not an audit_unavailable deny."""
    credentials = grpc.ssl_channel_credentials(
        (state / "bundle.pem").read_bytes(),
        (state / "gateway.key").read_bytes(),
        (state / "gateway.pem").read_bytes(),
    )
    options = [("grpc.ssl_target_name_override", "localhost")]
    with grpc.secure_channel(address, credentials, options=options) as channel:
        check = channel.unary_unary(
            CHECK_METHOD,
            request_serializer=pb.CheckRequest.SerializeToString,
            response_deserializer=pb.CheckResponse.FromString,
        )
        check_batch = channel.unary_unary(
            CHECK_BATCH_METHOD,
            request_serializer=pb.CheckBatchRequest.SerializeToString,
            response_deserializer=pb.CheckBatchResponse.FromString,
        )
        while not stop.is_set():
            try:
                if batch:
                    reply = check_batch(
                        pb.CheckBatchRequest(requests=[MESSAGE] * batch), timeout=10
                    )
                    responses = list(reply.responses)
                else:
                    responses = [check(MESSAGE, timeout=10)]
            except grpc.RpcError:
                return  # the server is gone
            for response in responses:
                if all(r.policy != REASON_AUDIT_UNAVAILABLE for r in response.reasons):
                    answered.append(response.decision_id)


def test_sigkill_under_load_loses_no_answered_decision_in_the_default_mode(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    server, address = start_serve(state, copy_policies(tmp_path / "policies"))  # default mode
    answered: list[str] = []
    stop = threading.Event()
    clients = [
        threading.Thread(target=load, args=(state, address, answered, stop, batch), daemon=True)
        for batch in (0, 0, 0, 8)
    ]
    for client in clients:
        client.start()
    deadline = time.monotonic() + 120
    while len(answered) < 600 and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(server.pid, signal.SIGKILL)  # mid-load: calls in flight, records queued
    server.wait(30)
    stop.set()
    for client in clients:
        client.join(30)
    assert len(answered) >= 600, "the load did not get going"

    logs = sorted((state / "audit").glob("audit-*.jsonl"))
    recorded = set()
    for path in logs:
        for line in path.read_bytes().split(b"\n"):
            with contextlib.suppress(ValueError):  # a torn last line
                recorded.add(json.loads(line).get("decision_id"))
    lost = [i for i in answered if i not in recorded]
    assert not lost, f"{len(lost)} of {len(answered)} answered decisions have no record"
    verify = subprocess.run(
        [PDP, "audit", "verify", "--require-genesis", str(state / "audit")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
