"""``pdp serve --workers N``: N server processes behind one address.

One Python process decides on one core (the GIL), so pdp scales across cores with
processes. The supervisor (the ``pdp serve`` process the operator started) checks the
configuration and policies once, creates the dev CA if asked to, reserves the port,
and starts N workers. Each worker is a complete ``pdp serve``: its own grpc.aio
server on the shared port (``SO_REUSEPORT``), engine, policy watcher and audit chain
(``AUDIT_DIR/worker-K``, one verifiable hash chain per worker: no two processes ever
append to one file). The supervisor forwards SIGHUP (reload) and SIGTERM/SIGINT
(drain) to every worker, restarts a worker that dies, and exits when all are gone.
A worker whose supervisor dies, even by SIGKILL, gets SIGTERM from the kernel
(``PR_SET_PDEATHSIG``) and drains: its handlers are in place before it opens its audit
log, and output to the dead supervisor's pipe is dropped (:func:`say`), so every worker
ends its chain with a closing checkpoint.

Balancing is per connection, by the kernel: ``SO_REUSEPORT`` hashes each new TCP
connection to one of the listening workers. HTTP/2 clients multiplex every call over
few connections, so a lone client connection is served by one worker; clients with
several connections (several gateways, or a channel pool) spread over all of them.
``server.max_connection_age_s`` makes clients reconnect periodically, which re-deals
long-lived connections. Measured figures: bench/README.md.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TextIO

# A worker that dies this many times within the window stops the whole service: a
# crash loop must be loud, not a silently shrinking pool.
MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0
START_TIMEOUT_S = 120.0
READY_MARK = "pdp: listening on "
# Tells a worker which process it must not outlive.
SUPERVISOR_ENV = "PDP_SUPERVISOR_PID"
_PR_SET_PDEATHSIG = 1
_output = threading.Lock()


def say(text: str, *, error: bool = False) -> None:
    """One whole line to stdout (or stderr), never interleaved with a worker's.

    Output is never a reason to stop: when nobody reads any more (a closed pipe, a dead
    supervisor) the stream is pointed at /dev/null, so that a drain, the audit log's
    closing checkpoint and the exit go on, and a supervisor keeps reading its workers."""
    stream = sys.stderr if error else sys.stdout
    with _output:
        try:
            stream.write(text + "\n")
            stream.flush()
        except (OSError, ValueError):  # BrokenPipeError, EIO; ValueError: stream closed
            _silence(stream)


def _silence(stream: TextIO) -> None:
    with contextlib.suppress(OSError, ValueError):
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, stream.fileno())  # what is left in the buffer flushes into nothing
        os.close(null)


@dataclass
class _Worker:
    index: int
    argv: list[str]
    process: subprocess.Popen[str] | None = None
    ready: threading.Event = field(default_factory=threading.Event)
    restarts: list[float] = field(default_factory=list)
    relay: threading.Thread | None = None


def reserve_port(listen: str) -> tuple[str, socket.socket]:
    """Binds (without listening) ``listen`` with SO_REUSEPORT, so that port 0 becomes
    one concrete port every worker can join and a port held by another program fails
    now, with a clear error. The socket never accepts: keep it until the workers
    listen, then close it."""
    host, _, port = listen.rpartition(":")
    bare = host.strip("[]")
    family = socket.AF_INET6 if ":" in bare else socket.AF_INET
    reservation = socket.socket(family, socket.SOCK_STREAM)
    reservation.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        reservation.bind((bare, int(port)))
    except OSError as exc:
        reservation.close()
        raise OSError(f"cannot listen on {listen}: {exc.strerror or exc}") from None
    return f"{host}:{reservation.getsockname()[1]}", reservation


class Supervisor:
    """Runs the workers until a signal stops them; see the module docstring."""

    def __init__(
        self,
        worker_argvs: Sequence[list[str]],
        *,
        grace_s: float,
        on_worker_ready: Callable[[int, int], None] | None = None,
    ) -> None:
        self.workers = [_Worker(i, list(argv)) for i, argv in enumerate(worker_argvs)]
        # Called with (index, pid) each time a worker listens, from a relay thread.
        self._on_worker_ready = on_worker_ready
        self._ready_lock = threading.Lock()
        self._grace_s = grace_s
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self.failed = ""

    # -- processes ----------------------------------------------------------------
    def _spawn(self, worker: _Worker) -> None:
        worker.ready.clear()
        process = subprocess.Popen(
            worker.argv,
            env={**os.environ, SUPERVISOR_ENV: str(os.getpid())},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            # Signals are forwarded by the supervisor; a terminal's Ctrl-C must not
            # reach the workers twice.
            start_new_session=True,
        )
        worker.process = process
        worker.relay = threading.Thread(
            target=self._relay,
            args=(worker, process),
            name=f"pdp-worker-{worker.index}-out",
            daemon=True,
        )
        worker.relay.start()

    def _relay(self, worker: _Worker, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            say(f"[worker {worker.index}] {line.rstrip()}")
            if line.startswith(READY_MARK) and not worker.ready.is_set():
                if self._on_worker_ready is not None:
                    with self._ready_lock:
                        try:
                            self._on_worker_ready(worker.index, process.pid)
                        except Exception as exc:  # balancing is never a condition
                            say(f"pdp: worker {worker.index}: {exc}", error=True)
                worker.ready.set()

    def start(self) -> bool:
        """Starts every worker and waits until each listens; False if one cannot."""
        for worker in self.workers:
            self._spawn(worker)
        deadline = time.monotonic() + START_TIMEOUT_S
        for worker in self.workers:
            while not worker.ready.wait(0.1):
                assert worker.process is not None
                if worker.process.poll() is not None or time.monotonic() > deadline:
                    self.failed = (
                        f"worker {worker.index} did not start (exit status {worker.process.poll()})"
                    )
                    self.stop()
                    return False
        return True

    def signal_all(self, signum: int) -> None:
        with self._lock:
            for worker in self.workers:
                if worker.process is not None and worker.process.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        worker.process.send_signal(signum)

    def stop(self) -> None:
        """Drains every worker (SIGTERM, then SIGKILL after the grace period)."""
        self._stopping.set()
        self.signal_all(signal.SIGTERM)
        deadline = time.monotonic() + self._grace_s + 5.0
        for worker in self.workers:
            if worker.process is None:
                continue
            try:
                worker.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                worker.process.kill()
                worker.process.wait()
        for worker in self.workers:
            if worker.relay is not None:
                worker.relay.join(2.0)  # the workers' last lines say how they stopped

    def watch(self) -> None:
        """Restarts workers that exit on their own, until stopping; a crash loop stops
        everything (``failed`` says why)."""
        while not self._stopping.wait(0.5):
            for worker in self.workers:
                process = worker.process
                if process is None or process.poll() is None:
                    continue
                now = time.monotonic()
                worker.restarts = [t for t in worker.restarts if now - t < RESTART_WINDOW_S]
                if len(worker.restarts) >= MAX_RESTARTS:
                    self.failed = (
                        f"worker {worker.index} exited {MAX_RESTARTS} times within"
                        f" {RESTART_WINDOW_S:g} s (last exit status {process.returncode})"
                    )
                    self._stopping.set()
                    return
                worker.restarts.append(now)
                say(
                    f"pdp: worker {worker.index} exited with status {process.returncode};"
                    " restarting it",
                    error=True,
                )
                with self._lock:
                    self._spawn(worker)

    # -- the supervisor's life ----------------------------------------------------
    def run(self, on_ready: Callable[[], None] = lambda: None) -> int:
        """Starts the workers, calls ``on_ready`` once all listen, and serves until
        SIGTERM/SIGINT (drain all, exit 0). A worker that cannot start exits 2, a crash
        loop 1 (``failed`` says why). SIGHUP is forwarded: every worker reloads its
        policies. Main thread only: the handlers are in place before any worker runs."""
        received: list[int] = []

        def on_stop(signum: int, _frame: FrameType | None) -> None:
            received.append(signum)
            self._stopping.set()

        def on_hup(signum: int, _frame: FrameType | None) -> None:
            self.signal_all(signum)

        previous = {
            sig: signal.signal(sig, handler)
            for sig, handler in (
                (signal.SIGTERM, on_stop),
                (signal.SIGINT, on_stop),
                (signal.SIGHUP, on_hup),
            )
        }
        try:
            if not self.start():
                return 2
            on_ready()
            self.watch()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if received:
            say(f"pdp: signal {received[0]}: draining {len(self.workers)} workers")
        self.stop()
        if self.failed:
            say(f"pdp: {self.failed}; stopped every worker", error=True)
            return 1
        say("pdp: stopped")
        return 0


def die_with_supervisor() -> bool:
    """In a worker: have the kernel send SIGTERM (a graceful drain) when the supervisor
    dies, even by SIGKILL, so that no orphaned worker keeps serving the port. False if
    the supervisor is already gone."""
    expected = os.environ.get(SUPERVISOR_ENV, "")
    if not expected.isdigit():
        return True  # not started by a supervisor (run by hand): nothing to follow
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    # The supervisor may have died before prctl: then this process has a new parent.
    return os.getppid() == int(expected)


def worker_count(requested: int | str | None, configured: int) -> int:
    """``--workers``: a number, ``auto`` (the usable cores) or unset (the config's)."""
    if requested is None:
        return configured
    if requested == "auto":
        return max(1, len(os.sched_getaffinity(0)))
    return int(requested)


def audit_dir_of(base: Path, index: int) -> Path:
    return base / f"worker-{index}"


def python_entry() -> list[str]:
    """How to start ``pdp`` again in a worker: this interpreter, this package."""
    return [sys.executable, "-m", "pdp.cli"]


__all__ = [
    "READY_MARK",
    "Supervisor",
    "audit_dir_of",
    "die_with_supervisor",
    "python_entry",
    "reserve_port",
    "say",
    "worker_count",
]
