"""The eBPF round robin of pdp.service.balance, on real sockets of real processes."""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator

import pytest

from pdp.service.balance import BalanceError, RoundRobin, listening_socket_fd

# A listener that answers every connection with its own index.
LISTENER = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(64)
print("ready", flush=True)
while True:
    conn, _ = s.accept()
    conn.sendall(sys.argv[2].encode())
    conn.close()
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def listeners() -> Iterator[tuple[int, list[subprocess.Popen[str]]]]:
    port = _free_port()
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", LISTENER, str(port), str(index)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for index in range(2)
    ]
    for process in processes:
        assert process.stdout is not None and process.stdout.readline() == "ready\n"
    yield port, processes
    for process in processes:
        process.kill()
        process.wait()


def _ask(port: int) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        return conn.recv(16).decode()


def test_connections_are_dealt_in_turn(
    listeners: tuple[int, list[subprocess.Popen[str]]],
) -> None:
    port, processes = listeners
    try:
        balancer = RoundRobin(2)
    except BalanceError as exc:
        pytest.skip(f"eBPF not available here: {exc}")
    try:
        for index, process in enumerate(processes):
            balancer.add(index, process.pid, port)
        answers = [_ask(port) for _ in range(20)]
    finally:
        balancer.close()
    assert Counter(answers) == {"0": 10, "1": 10}
    # Strictly alternating: one counter, one slot after the other.
    assert all(a != b for a, b in itertools.pairwise(answers))


def test_a_dead_listener_leaves_its_slot_and_the_kernel_deals_its_share(
    listeners: tuple[int, list[subprocess.Popen[str]]],
) -> None:
    port, processes = listeners
    try:
        balancer = RoundRobin(2)
    except BalanceError as exc:
        pytest.skip(f"eBPF not available here: {exc}")
    try:
        for index, process in enumerate(processes):
            balancer.add(index, process.pid, port)
        processes[0].kill()
        processes[0].wait()
        # The balancer held no reference: the socket is gone with its process, its
        # slot is empty, and every connection reaches the live listener.
        assert {_ask(port) for _ in range(10)} == {"1"}
    finally:
        balancer.close()


def test_a_process_without_the_socket_is_named() -> None:
    with pytest.raises(BalanceError, match=f"process {os.getpid()} has no socket listening"):
        listening_socket_fd(os.getpid(), _free_port())
