"""`pdp serve --workers N`: N processes on one port, one audit chain each, reload and
drain together, a dead worker restarted, clear errors for bad values."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format

from pdp._proto.pdp.v1 import decision_pb2 as pb
from pdp.service.servicer import CHECK_METHOD
from tests.conftest import EXAMPLE_POLICIES
from tests.service.test_serve_lifecycle import copy_policies, verify_sealed

PDP = str(Path(sys.executable).parent / "pdp")
REQUEST = json.loads(
    (EXAMPLE_POLICIES / "examples" / "requests" / "support-get-ticket.json").read_text()
)
CLOSE_READS = (
    '@id("test.no_reads")\n@reason("reads closed")\n'
    'forbid (principal, action in Action::"read", resource);\n'
)


class Supervised:
    """`pdp serve --workers N` in a subprocess, its output collected."""

    def __init__(self, args: list[str]) -> None:
        self.process = subprocess.Popen(
            [PDP, "serve", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()

    def wait_for(self, fragment: str, timeout: float = 90, after: int = 0) -> str:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines[after:]:
                    if fragment in line:
                        return line
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise AssertionError(f"no {fragment!r} in {self.lines}")
                self._changed.wait(0.1)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(60)


def check_on_new_connections(state: Path, address: str, count: int) -> list[pb.CheckResponse]:
    """One call on each of ``count`` separate TCP connections."""
    credentials = grpc.ssl_channel_credentials(
        (state / "bundle.pem").read_bytes(),
        (state / "gateway.key").read_bytes(),
        (state / "gateway.pem").read_bytes(),
    )
    message = json_format.ParseDict(REQUEST, pb.CheckRequest())
    responses = []
    for _ in range(count):
        options = [
            ("grpc.ssl_target_name_override", "localhost"),
            ("grpc.use_local_subchannel_pool", 1),  # a connection of its own
        ]
        with grpc.secure_channel(address, credentials, options=options) as channel:
            check = channel.unary_unary(
                CHECK_METHOD,
                request_serializer=pb.CheckRequest.SerializeToString,
                response_deserializer=pb.CheckResponse.FromString,
            )
            responses.append(check(message, timeout=20))
    return responses


def worker_pids(supervisor: Supervised) -> list[int]:
    children = Path(f"/proc/{supervisor.process.pid}/task/{supervisor.process.pid}/children")
    return [int(pid) for pid in children.read_text().split()]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Supervised, Path, Path, str]]:
    policies = copy_policies(tmp_path / "policies")
    state = tmp_path / "state"
    supervisor = Supervised(
        [
            "--dev",
            "--state-dir",
            str(state),
            "--policies",
            str(policies),
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "2",
            "--no-watch",
            "--audit-mode",
            "sync",
        ]
    )
    line = supervisor.wait_for("with 2 workers")
    address = line.split("listening on ", 1)[1].split(" ", 1)[0]
    supervisor.wait_for("SIGHUP reloads every worker")
    yield supervisor, state, policies, address
    supervisor.stop()  # drains the workers (they run in sessions of their own)


def test_workers_share_the_port_and_each_keep_a_verifiable_chain(
    served: tuple[Supervised, Path, Path, str],
) -> None:
    supervisor, state, _, address = served
    assert len(worker_pids(supervisor)) == 2
    responses = check_on_new_connections(state, address, 24)
    assert all(r.decision == pb.DECISION_ALLOW for r in responses)
    assert supervisor.stop() == 0
    assert supervisor.lines[-1] == "pdp: stopped"
    ids_by_worker = {}
    for index in (0, 1):
        directory = state / "audit" / f"worker-{index}"
        records = [
            json.loads(line)
            for path in sorted(directory.glob("audit-*.jsonl"))
            for line in path.read_text().splitlines()
        ]
        ids_by_worker[index] = {r["decision_id"] for r in records if r.get("kind") == "decision"}
        # Each chain is its own instance (its own NATS subject when shipped).
        instances = {r["instance_id"] for r in records if "instance_id" in r}
        assert len(instances) == 1 and next(iter(instances)).endswith(f"-worker-{index}")
        verify = subprocess.run(
            [PDP, "audit", "verify", str(directory)], capture_output=True, text=True, check=False
        )
        assert verify.returncode == 0, verify.stdout + verify.stderr
    # New connections are dealt in turn (eBPF round robin): exactly half each. Where
    # the kernel refuses eBPF the supervisor says so and the kernel's hash deals them.
    if any("dealt to workers by round robin" in line for line in supervisor.lines):
        assert len(ids_by_worker[0]) == len(ids_by_worker[1]) == 12
    else:
        assert ids_by_worker[0] and ids_by_worker[1]  # all on one: p = 2 * 2**-24
    assert not ids_by_worker[0] & ids_by_worker[1]
    assert ids_by_worker[0] | ids_by_worker[1] == {r.decision_id for r in responses}


def test_sighup_reloads_every_worker(served: tuple[Supervised, Path, Path, str]) -> None:
    supervisor, state, policies, address = served
    before = check_on_new_connections(state, address, 1)[0]
    for suite in policies.rglob("*.test.yaml"):  # they expect reads to be open
        suite.unlink()
    (policies / "examples" / "close_reads.cedar").write_text(CLOSE_READS)
    seen = len(supervisor.lines)
    supervisor.process.send_signal(signal.SIGHUP)
    supervisor.wait_for("[worker 0]", after=seen)
    deadline = time.monotonic() + 60
    while True:
        responses = check_on_new_connections(state, address, 12)
        if all(r.decision == pb.DECISION_DENY for r in responses) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert {r.policy_version for r in responses} != {before.policy_version}
    assert all([x.policy for x in r.reasons] == ["test.no_reads"] for r in responses)


def test_a_killed_worker_is_restarted(served: tuple[Supervised, Path, Path, str]) -> None:
    supervisor, state, _, address = served
    victim = worker_pids(supervisor)[0]
    seen = len(supervisor.lines)
    os.kill(victim, signal.SIGKILL)
    supervisor.wait_for("restarting it", after=seen)
    supervisor.wait_for("pdp: listening on", after=seen)
    pids = worker_pids(supervisor)
    assert len(pids) == 2 and victim not in pids
    assert all(r.decision == pb.DECISION_ALLOW for r in check_on_new_connections(state, address, 8))


@pytest.mark.parametrize(
    ("value", "message"),
    [("0", "--workers: must be between 1 and 64"), ("many", "give a number or 'auto'")],
)
def test_bad_worker_counts_are_refused(tmp_path: Path, value: str, message: str) -> None:
    result = subprocess.run(
        [PDP, "serve", "--dev", "--state-dir", str(tmp_path), "--workers", value],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert message in result.stderr


def test_a_port_in_use_is_refused_before_any_worker_starts(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [
                PDP,
                "serve",
                "--dev",
                "--state-dir",
                str(tmp_path),
                "--listen",
                f"127.0.0.1:{port}",
                "--workers",
                "2",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "[worker" not in result.stdout


def test_workers_do_not_outlive_a_killed_supervisor(
    served: tuple[Supervised, Path, Path, str],
) -> None:
    supervisor, _, _, _ = served
    workers = worker_pids(supervisor)
    supervisor.process.kill()  # SIGKILL: no chance to forward anything
    supervisor.process.wait(10)
    deadline = time.monotonic() + 30
    alive = workers
    while alive and time.monotonic() < deadline:
        alive = [pid for pid in workers if Path(f"/proc/{pid}").exists() and not _zombie(pid)]
        time.sleep(0.1)
    assert not alive, f"orphaned workers still running: {alive}"


def test_every_worker_seals_its_chain_when_the_supervisor_is_killed(
    served: tuple[Supervised, Path, Path, str],
) -> None:
    """SIGKILL of the supervisor: its pipe to the workers' output is gone, and each worker
    still drains and ends its chain with a closing checkpoint (not a race on a print)."""
    supervisor, state, _, address = served
    workers = worker_pids(supervisor)
    check_on_new_connections(state, address, 8)
    supervisor.process.kill()
    supervisor.process.wait(10)
    deadline = time.monotonic() + 60
    alive = workers
    while alive and time.monotonic() < deadline:
        alive = [pid for pid in workers if Path(f"/proc/{pid}").exists() and not _zombie(pid)]
        time.sleep(0.1)
    assert not alive, f"workers still running: {alive}"
    for index in (0, 1):
        verify_sealed(state / "audit" / f"worker-{index}")


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_unusable_policies_stop_the_start_with_the_reason(tmp_path: Path) -> None:
    policies = copy_policies(tmp_path / "policies")
    (policies / "examples" / "broken.cedar").write_text("permit (principal,")
    result = subprocess.run(
        [
            PDP,
            "serve",
            "--dev",
            "--state-dir",
            str(tmp_path / "state"),
            "--policies",
            str(policies),
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2
    assert "are not usable" in result.stdout and "broken.cedar:1" in result.stdout
    assert "did not start" in result.stderr


# A stand-in supervisor: starts one worker as `pdp serve --workers N` would, then, on a
# line from its own stdin, closes its end of the worker's output pipe and dies by
# SIGKILL. The worker gets SIGTERM from the kernel (PR_SET_PDEATHSIG) and nobody reads it.
STAND_IN = """
import os, signal, subprocess, sys
worker = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          env={**os.environ, "PDP_SUPERVISOR_PID": str(os.getpid())},
                          start_new_session=True)
print(worker.pid, flush=True)
wait_for = sys.stdin.readline().strip()
if wait_for == "listening":
    for line in worker.stdout:
        if line.startswith(b"pdp: listening on "):
            break
worker.stdout.close()
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("when", ["listening", "starting"])
def test_a_worker_seals_its_chain_whenever_its_supervisor_dies(tmp_path: Path, when: str) -> None:
    """Killed while the worker serves, or while it is still starting (the SIGTERM then
    arrives before the server runs): either way the worker drains and seals its chain."""
    state, audit = tmp_path / "state", tmp_path / "audit"
    worker = [PDP, "serve", "--dev", "--state-dir", str(state), "--listen", "127.0.0.1:0"]
    worker += ["--policies", str(copy_policies(tmp_path / "policies")), "--no-watch"]
    worker += ["--workers", "2", "--worker-index", "0", "--audit-dir", str(audit)]
    worker += ["--audit-mode", "sync"]
    stand_in = subprocess.Popen(
        [sys.executable, "-c", STAND_IN, *worker],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert stand_in.stdin is not None and stand_in.stdout is not None
    pid = int(stand_in.stdout.readline())
    if when == "starting":  # as soon as the audit log is open, before the server listens
        deadline = time.monotonic() + 60
        while not list((audit / "worker-0").glob("audit-*.jsonl")):
            assert time.monotonic() < deadline, "the worker never opened its audit log"
            time.sleep(0.005)
    stand_in.stdin.write(f"{when}\n")
    stand_in.stdin.flush()
    stand_in.wait(60)
    deadline = time.monotonic() + 60
    while Path(f"/proc/{pid}").exists() and not _zombie(pid):
        assert time.monotonic() < deadline, "the worker outlived its supervisor"
        time.sleep(0.05)
    verify_sealed(audit / "worker-0")
