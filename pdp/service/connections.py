"""Process limits that decide how many connections the server can hold.

Each connection, handshaking or not, is a file descriptor. With the common soft limit of
1,024, a peer opening 1,200 raw TCP connections would exhaust them: no new client could
connect, and the policy watcher, the audit log and the identity source would fail to
open files (EMFILE). So at start the soft ``RLIMIT_NOFILE`` is raised to the hard
limit, and the connection cap handed to grpc (``grpc.max_allowed_incoming_connections``)
is kept ``FD_RESERVE`` descriptors below it, so that the process always has descriptors
of its own.

glibc gives each thread that allocates its own malloc arena (up to 8 per core), and
memory freed after a flood of connections stays in them. pdp caps the arenas with
``mallopt(M_ARENA_MAX)`` at start (``MALLOC_ARENA_MAX`` in the environment, which glibc
reads itself, takes precedence) and returns free memory with ``malloc_trim``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
import resource
from dataclasses import dataclass

log = logging.getLogger(__name__)

# Descriptors kept for the process itself: audit segments, policy files and their
# watcher, NATS, the Workload API, worker pipes.
FD_RESERVE = 256
# The smallest connection cap worth serving with; below it the start logs a warning.
LOW_CONNECTION_CAP = 512
ARENA_MAX = 2
_M_ARENA_MAX = -8  # glibc malloc.h


@dataclass(frozen=True, slots=True)
class OpenFileLimit:
    soft: int
    hard: int
    raised_from: int  # the soft limit before the start raised it


def raise_open_file_limit() -> OpenFileLimit:
    """Raises the soft RLIMIT_NOFILE to the hard limit; returns what holds now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    before = soft
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, target, exc)
    return OpenFileLimit(soft, hard, before)


def connection_cap(configured: int, limit: OpenFileLimit) -> int:
    """``configured`` (server.max_connections), lowered to fit the open-file limit."""
    if limit.soft == resource.RLIM_INFINITY:
        return configured
    return max(1, min(configured, limit.soft - FD_RESERVE))


def apply_process_limits(configured_connections: int) -> int:
    """Raises the open-file limit, caps malloc arenas; returns the connection cap to use
    and logs what was done (a warning when the cap stays low)."""
    limit = raise_open_file_limit()
    cap = connection_cap(configured_connections, limit)
    message = (
        f"open-file limit {limit.soft} (hard {limit.hard}, was {limit.raised_from});"
        f" connections capped at {cap} (server.max_connections {configured_connections})"
    )
    if cap < min(configured_connections, LOW_CONNECTION_CAP):
        log.warning(
            "%s: the limit is low, raise the hard RLIMIT_NOFILE (ulimit -Hn, LimitNOFILE=)",
            message,
        )
    else:
        log.info("%s", message)
    _cap_malloc_arenas()
    return cap


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None


def _cap_malloc_arenas() -> None:
    if "MALLOC_ARENA_MAX" in os.environ:
        return  # glibc read it at start; the operator's choice stands
    libc = _libc()
    if libc is None or not hasattr(libc, "mallopt"):
        return  # not glibc (musl has no arenas to cap)
    libc.mallopt(_M_ARENA_MAX, ARENA_MAX)


def release_free_memory() -> None:
    """Returns freed heap memory to the system (glibc ``malloc_trim``); a no-op elsewhere."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)
