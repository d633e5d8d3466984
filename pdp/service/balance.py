"""Round-robin connection balancing for ``pdp serve --workers N`` (Linux eBPF).

With plain ``SO_REUSEPORT`` the kernel hashes each new connection's addresses to one
of the listening sockets: with few client connections the split is a dice roll (4
connections over 2 workers land 4-0 one time in 8, 3-1 one time in 2). HTTP/2
clients keep few connections, so that roll decides how many cores serve them.

:class:`RoundRobin` attaches a 21-instruction ``SK_REUSEPORT`` program to the
workers' socket group: a counter in an array map picks slot ``counter % N`` of a
``REUSEPORT_SOCKARRAY`` map that holds worker K's listening socket at slot K. The
supervisor takes each worker's listening socket with ``pidfd_getfd`` (the worker
knows nothing of it), puts it in its slot, and closes its own copy at once: the
map holds no reference, so a dead worker's socket leaves the map with it, and a slot
that is empty (a worker restarting) makes the program fall back to the kernel's
hash. Anything unavailable (no ``bpf`` permission, an old kernel) leaves the kernel
hash in place, with a warning: balancing is an optimisation, never a condition.
"""

from __future__ import annotations

import ctypes
import os
import socket
import struct
from pathlib import Path

# (bpf, pidfd_open, pidfd_getfd) syscall numbers
_SYSCALLS = {"x86_64": (321, 434, 438), "aarch64": (280, 434, 438)}

_BPF_MAP_CREATE, _BPF_MAP_UPDATE_ELEM, _BPF_PROG_LOAD = 0, 2, 5
_MAP_ARRAY, _MAP_REUSEPORT_SOCKARRAY = 2, 20
_PROG_SK_REUSEPORT = 21
_SO_ATTACH_REUSEPORT_EBPF = 52
_HELPER_MAP_LOOKUP, _HELPER_SK_SELECT_REUSEPORT = 1, 82
_TCP_LISTEN = "0A"


class BalanceError(Exception):
    pass


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def _ld_map_fd(dst: int, fd: int) -> bytes:
    # BPF_LD | BPF_IMM | BPF_DW with src = BPF_PSEUDO_MAP_FD: two instruction slots.
    return _insn(0x18, dst, 1, 0, fd) + _insn(0, 0, 0, 0, 0)


def round_robin_program(counter_fd: int, sockets_fd: int, workers: int) -> bytes:
    """``slot = fetch_add(counter, 1) % workers; sk_select_reuseport(slot); SK_PASS``."""
    return b"".join(
        [
            _insn(0xBF, 6, 1),  # r6 = ctx
            _insn(0x62, 10, 0, -4, 0),  # *(u32 *)(fp - 4) = 0: the counter's key
            _ld_map_fd(1, counter_fd),  # r1 = &counter map
            _insn(0xBF, 2, 10),  # r2 = fp
            _insn(0x07, 2, 0, 0, -4),  # r2 -= 4
            _insn(0x85, imm=_HELPER_MAP_LOOKUP),  # r0 = &counter or NULL
            _insn(0x15, 0, 0, 11, 0),  # if r0 == NULL: pass (kernel hash)
            _insn(0xB7, 1, 0, 0, 1),  # r1 = 1
            _insn(0xC3, 0, 1, 0, 0x01),  # r1 = atomic fetch_add(*(u32 *)r0, r1)
            _insn(0x97, 1, 0, 0, workers),  # r1 %= workers
            _insn(0x63, 10, 1, -8),  # *(u32 *)(fp - 8) = r1: the slot
            _insn(0xBF, 1, 6),  # r1 = ctx
            _ld_map_fd(2, sockets_fd),  # r2 = &socket map
            _insn(0xBF, 3, 10),  # r3 = fp
            _insn(0x07, 3, 0, 0, -8),  # r3 -= 8
            _insn(0xB7, 4, 0, 0, 0),  # r4 = 0 (flags)
            _insn(0x85, imm=_HELPER_SK_SELECT_REUSEPORT),  # an empty slot: kernel hash
            _insn(0xB7, 0, 0, 0, 1),  # r0 = SK_PASS
            _insn(0x95),  # exit
        ]
    )


class _Syscalls:
    def __init__(self) -> None:
        machine = os.uname().machine
        if machine not in _SYSCALLS:
            raise BalanceError(f"no eBPF syscall numbers for {machine}")
        self.bpf_nr, self.pidfd_open_nr, self.pidfd_getfd_nr = _SYSCALLS[machine]
        self.libc = ctypes.CDLL(None, use_errno=True)

    def call(self, what: str, number: int, *args: object) -> int:
        result = int(self.libc.syscall(number, *args))
        if result < 0:
            errno = ctypes.get_errno()
            raise BalanceError(f"{what}: {os.strerror(errno)}")
        return result

    def bpf(self, what: str, command: int, attr: bytes) -> int:
        buffer = ctypes.create_string_buffer(attr, len(attr))
        return self.call(what, self.bpf_nr, command, buffer, len(attr))


def listening_socket_fd(pid: int, port: int) -> int:
    """The number of ``pid``'s fd that is a TCP socket listening on ``port``."""
    inodes: set[str] = set()
    for table in ("tcp", "tcp6"):
        path = Path(f"/proc/{pid}/net/{table}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == _TCP_LISTEN and int(local.rpartition(":")[2], 16) == port:
                inodes.add(inode)
    for entry in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(entry)
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            return int(entry.name)
    raise BalanceError(f"process {pid} has no socket listening on port {port}")


class RoundRobin:
    """Deals new connections to N workers in turn; see the module docstring."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._sys = _Syscalls()
        self._counter = self._sys.bpf(
            "creating the counter map",
            _BPF_MAP_CREATE,
            struct.pack("<IIIII", _MAP_ARRAY, 4, 4, 1, 0).ljust(128, b"\0"),
        )
        self._sockets = self._sys.bpf(
            "creating the socket map",
            _BPF_MAP_CREATE,
            struct.pack("<IIIII", _MAP_REUSEPORT_SOCKARRAY, 4, 8, workers, 0).ljust(128, b"\0"),
        )
        program = round_robin_program(self._counter, self._sockets, workers)
        self._code = ctypes.create_string_buffer(program, len(program))
        self._license = ctypes.create_string_buffer(b"GPL")
        self._log = ctypes.create_string_buffer(4096)
        attr = struct.pack(
            "<IIQQIIQII16sII",
            _PROG_SK_REUSEPORT,
            len(program) // 8,
            ctypes.addressof(self._code),
            ctypes.addressof(self._license),
            1,
            len(self._log),
            ctypes.addressof(self._log),
            0,
            0,
            b"pdp_round_robin",
            0,
            0,
        ).ljust(128, b"\0")
        try:
            self._program = self._sys.bpf("loading the program", _BPF_PROG_LOAD, attr)
        except BalanceError as exc:
            verifier = self._log.value.decode(errors="replace").strip()
            raise BalanceError(f"{exc} ({verifier[-300:]})" if verifier else str(exc)) from None
        self._attached = False

    def add(self, index: int, pid: int, port: int) -> None:
        """Puts worker ``index``'s listening socket (in process ``pid``) in slot ``index``;
        the first one also attaches the program to the group."""
        target = listening_socket_fd(pid, port)
        pidfd = self._sys.call("pidfd_open", self._sys.pidfd_open_nr, pid, 0)
        try:
            fd = self._sys.call("pidfd_getfd", self._sys.pidfd_getfd_nr, pidfd, target, 0)
        finally:
            os.close(pidfd)
        try:
            key, value = ctypes.c_uint32(index), ctypes.c_uint64(fd)
            self._sys.bpf(
                f"adding worker {index}'s socket",
                _BPF_MAP_UPDATE_ELEM,
                struct.pack(
                    "<IIQQQ", self._sockets, 0, ctypes.addressof(key), ctypes.addressof(value), 0
                ).ljust(128, b"\0"),
            )
            if not self._attached:
                with socket.socket(fileno=os.dup(fd)) as sock:
                    sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_REUSEPORT_EBPF, self._program)
                self._attached = True
        finally:
            os.close(fd)  # the worker's socket must die with the worker

    def close(self) -> None:
        for fd in (self._program, self._sockets, self._counter):
            os.close(fd)
