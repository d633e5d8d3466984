"""`pdp serve` and `pdp call` as processes: start-up, calls, graceful SIGTERM drain."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc

from pdp._proto.pdp.v1 import decision_pb2 as pb
from pdp.engine import Engine
from pdp.identity.sources import StaticFileSource
from pdp.service import DecisionServer
from pdp.service.servicer import CHECK_BATCH_METHOD

from .conftest import (
    GATEWAY_ID,
    REPO,
    REQUESTS,
    SERVER_ID,
    TD,
    LoopbackAgent,
    ServeProcess,
    example_request,
    service_config,
    to_message,
)


def pdp_call(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pdp.cli", "call", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_start_up_lines_and_pdp_call(dev_server: ServeProcess) -> None:
    output = "\n".join(dev_server.lines)
    assert "server SPIFFE ID spiffe://pdp.dev/pdp" in output
    assert "policy version " in output
    assert "spiffe://acme.test/*, spiffe://partner.test/*" in output
    # The printed command works as printed.
    command = dev_server.try_command.split()
    assert command[:2] == ["pdp", "call"]
    allowed = pdp_call(*command[2:])
    assert allowed.returncode == 0, allowed.stderr
    printed = json.loads(allowed.stdout)
    assert printed["decision"] == "allow"
    assert list(printed) == ["decision", "reasons", "errors", "policy_version", "decision_id"]

    state = str(dev_server.state_dir)
    target = f"127.0.0.1:{dev_server.port}"
    denied = pdp_call(
        str(REQUESTS / "support-delete-ticket.json"), "--dev", "--state-dir", state,
        "--target", target,
    )  # fmt: skip
    assert denied.returncode == 1
    assert json.loads(denied.stdout)["reasons"][0]["policy"] == "support.never_delete"


def test_pdp_call_checks_the_server_spiffe_id(dev_server: ServeProcess) -> None:
    state = str(dev_server.state_dir)
    target = f"127.0.0.1:{dev_server.port}"
    request = str(REQUESTS / "support-get-ticket.json")
    wrong = pdp_call(
        request, "--dev", "--state-dir", state, "--target", target,
        "--server-id", "spiffe://pdp.dev/impostor",
    )  # fmt: skip
    assert wrong.returncode == 2
    assert "not the expected spiffe://pdp.dev/impostor" in wrong.stderr
    assert wrong.stdout == ""


def test_pdp_call_errors_exit_2(dev_server: ServeProcess, tmp_path: Path) -> None:
    state = str(dev_server.state_dir)
    request = str(REQUESTS / "support-get-ticket.json")
    closed = pdp_call(request, "--dev", "--state-dir", state, "--target", "127.0.0.1:1")
    assert closed.returncode == 2 and "pdp_unreachable" in closed.stderr
    no_state = pdp_call(request, "--dev", "--state-dir", str(tmp_path / "none"))
    assert no_state.returncode == 2 and "pdp serve --dev" in no_state.stderr
    not_a_request = tmp_path / "bad.json"
    not_a_request.write_text('{"agent": 1, "color": "blue"}')
    bad = pdp_call(str(not_a_request), "--dev", "--state-dir", state)
    assert bad.returncode == 2 and "not a pdp.v1.CheckRequest" in bad.stderr
    explicit = pdp_call(request, "--cert", "x.pem")
    assert explicit.returncode == 2 and "--server-id required" in explicit.stderr
    explicit = pdp_call(request, "--cert", "x.pem", "--server-id", "spiffe://a.test/pdp")
    assert explicit.returncode == 2 and "--key, --bundle required" in explicit.stderr
    both = pdp_call(request, "--dev", "--cert", "x.pem")
    assert both.returncode == 2 and "use only one of" in both.stderr


def test_pdp_call_with_an_svid_from_the_workload_api(
    socket_dir: Path, engine: Engine, tmp_path: Path
) -> None:
    """The gateway's SVID and the server's bundle come from a Workload API."""
    with LoopbackAgent(socket_dir / "agent.sock", GATEWAY_ID) as agent:
        server_svid = agent.ca.issue_svid(SERVER_ID)
        (tmp_path / "svid.pem").write_bytes(server_svid.chain_pem)
        (tmp_path / "svid.key").write_bytes(server_svid.key_pem)
        (tmp_path / "bundle.pem").write_bytes(agent.ca.bundle_pem)
        identity = StaticFileSource(
            tmp_path / "svid.pem", tmp_path / "svid.key", {TD: tmp_path / "bundle.pem"}
        )
        with identity, DecisionServer(service_config(), engine, identity) as server:
            request = str(REQUESTS / "support-get-ticket.json")
            called = pdp_call(
                request, "--workload-api", agent.address, "--server-id", SERVER_ID,
                "--target", server.address,
            )  # fmt: skip
            assert called.returncode == 0, called.stderr
            assert json.loads(called.stdout)["decision"] == "allow"
            other_td = pdp_call(
                request, "--workload-api", agent.address, "--server-id",
                "spiffe://elsewhere.test/pdp", "--target", server.address,
            )  # fmt: skip
            assert other_td.returncode == 2
            assert "no bundle for the server's trust domain elsewhere.test" in other_td.stderr


def test_sigterm_drains_in_flight_calls_and_exits_0(dev_server: ServeProcess) -> None:
    assert dev_server.state_dir is not None
    state = dev_server.state_dir
    credentials = grpc.ssl_channel_credentials(
        (state / "bundle.pem").read_bytes(),
        (state / "gateway.key").read_bytes(),
        (state / "gateway.pem").read_bytes(),
    )
    # Big batches keep calls in flight most of the time.
    batch = pb.CheckBatchRequest(requests=[to_message(example_request())] * 256)
    outcomes: list[tuple[float, float, str]] = []
    lock = threading.Lock()
    stop = threading.Event()

    def load() -> None:
        with grpc.secure_channel(dev_server.address, credentials) as channel:
            call = channel.unary_unary(
                CHECK_BATCH_METHOD,
                request_serializer=pb.CheckBatchRequest.SerializeToString,
                response_deserializer=pb.CheckBatchResponse.FromString,
            )
            while not stop.is_set():
                started = time.monotonic()
                try:
                    response = call(batch, timeout=20)
                    assert len(response.responses) == 256
                    assert all(r.decision == pb.DECISION_ALLOW for r in response.responses)
                    status = "OK"
                except grpc.RpcError as exc:
                    status = exc.code().name
                with lock:
                    outcomes.append((started, time.monotonic(), status))
                if status != "OK":
                    return

    threads = [threading.Thread(target=load) for _ in range(4)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with lock:
            if sum(1 for o in outcomes if o[2] == "OK") >= 8:
                break
        time.sleep(0.05)
    signalled = time.monotonic()
    code = dev_server.stop(timeout=30)
    stop.set()
    for thread in threads:
        thread.join(30)

    assert code == 0, "".join(dev_server.stderr)[-2000:]
    assert any("draining" in line for line in dev_server.lines)
    assert dev_server.lines[-1] == "pdp: stopped"
    # Calls under way when the signal arrived are answered in full...
    settled = signalled - 0.05  # sent well before the signal, so the server had it
    before = [o for o in outcomes if o[0] < settled]
    assert before and all(status == "OK" for _, _, status in before), outcomes
    in_flight = [o for o in before if o[1] > signalled]
    assert in_flight, "no call was in flight at SIGTERM; the test proves nothing"
    # ...and later ones fail cleanly. grpc stops taking calls off the wire when the
    # drain starts: a call arriving then is refused (UNAVAILABLE) or, if it reached the
    # server's queue in that instant, cancelled unstarted (CANCELLED). Never decided.
    statuses = {status for _, _, status in outcomes}
    assert statuses <= {"OK", "UNAVAILABLE", "CANCELLED"}, outcomes
