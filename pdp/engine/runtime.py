"""The policy lifecycle: the active engine, safe reloads and an optional shadow engine.

A reload parses and validates the directory, runs the ``pdp test`` suites found
in it, and only then swaps the active engine — one attribute assignment, atomic
for readers. A broken or failing set never replaces a good one: the old version
keeps serving and the failure is reported (log, health detail, event callback).
A call reads ``runtime.engine`` once and finishes on that version, whatever
happens meanwhile; every decision names its version.

A reload that would remove every author policy (an emptied or half-synced directory,
a wrong mount) is rejected like a broken one, since it would deny every call until the
files return, unless the directory holds an :data:`ALLOW_EMPTY_MARKER` file saying so.

A shadow set is decided beside the active one for every request; the caller gets
the active answer and the audit record carries the shadow's, so a rollout can be
judged on live traffic before it is enforced.

A reload attempted while the process is out of file descriptors (EMFILE/ENFILE, e.g.
during a connection flood) proves nothing about the policies: it is deferred, not
rejected (no rejected-reload record, the old version keeps serving, a warning says
why), and the watcher tries again until the descriptors are back.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pdp.engine.evaluate import Engine
from pdp.engine.store import PolicyLoadError, load_policies
from pdp.model import DEFAULT_LIMITS, Limits

log = logging.getLogger("pdp.policies")

# A file in the policy directory that makes a reload to no author policy deliberate.
ALLOW_EMPTY_MARKER = "ALLOW_NO_POLICIES"


@dataclass(frozen=True, slots=True)
class ReloadEvent:
    """The outcome of one reload attempt."""

    time: datetime
    directory: str
    ok: bool
    role: str  # "active" | "shadow"
    version: str  # the version now in force (the old one when the reload failed)
    candidate_version: str = ""
    detail: str = ""
    duration_ms: float = 0.0


ReloadListener = Callable[[ReloadEvent], None]


class ReloadRejected(Exception):
    def __init__(self, detail: str, candidate_version: str = "") -> None:
        super().__init__(detail)
        self.detail = detail
        self.candidate_version = candidate_version


def build_engine(directory: Path, limits: Limits, *, run_tests: bool) -> Engine:
    """Loads a candidate and runs its test suites; raises :class:`ReloadRejected`."""
    from pdp.policytest import SuiteError, discover, run_suites

    try:
        compiled = load_policies(directory)
    except PolicyLoadError as exc:
        problems = "; ".join(str(d) for d in exc.diagnostics[:5])
        more = f" (+{len(exc.diagnostics) - 5} more)" if len(exc.diagnostics) > 5 else ""
        raise ReloadRejected(f"invalid policies: {problems}{more}") from None
    engine = Engine(compiled, limits)
    if run_tests:
        suites = discover(Path(directory))
        try:
            results = run_suites(engine, suites)
        except SuiteError as exc:
            raise ReloadRejected(f"broken test suite: {exc}", compiled.version) from None
        failed = [r for r in results if not r.passed]
        if failed:
            names = ", ".join(f"{r.suite} :: {r.name}" for r in failed[:5])
            raise ReloadRejected(f"{len(failed)} policy test(s) failed: {names}", compiled.version)
    return engine


# Descriptors a reload must be able to open besides its files, checked before and after.
_FD_HEADROOM = 16


def descriptors_short(count: int = _FD_HEADROOM) -> str:
    """Why the process cannot open ``count`` more files now (EMFILE or ENFILE), or ""."""
    opened: list[int] = []
    try:
        for _ in range(count):
            opened.append(os.open(os.devnull, os.O_RDONLY))
    except OSError as exc:
        if exc.errno in (errno.EMFILE, errno.ENFILE):
            return f"the process is out of file descriptors ({os.strerror(exc.errno)})"
        return ""
    finally:
        for fd in opened:
            os.close(fd)
    return ""


def _author_policies(engine: Engine) -> int:
    return sum(1 for unit in engine.compiled.units if not unit.floor)


def _refuse_emptying(current: Engine | None, candidate: Engine, directory: Path) -> None:
    """Raises :class:`ReloadRejected` when ``candidate`` has no author policy left where
    ``current`` had some and the directory does not say it is on purpose."""
    if current is None or _author_policies(candidate) or not _author_policies(current):
        return
    if (directory / ALLOW_EMPTY_MARKER).exists():
        return
    raise ReloadRejected(
        f"the candidate has no author policies (the active version has"
        f" {_author_policies(current)}): every call would be denied; to apply it on"
        f" purpose, create the file {ALLOW_EMPTY_MARKER} in {directory}",
        candidate.version,
    )


def _fingerprint(directory: Path) -> tuple[tuple[str, int, int], ...]:
    """Cheap change detection: name, size and mtime of every file below the directory."""
    entries = []
    for root, _dirs, files in os.walk(directory, followlinks=True):
        for name in files:
            path = os.path.join(root, name)
            try:
                stat = os.stat(path)
            except OSError:
                continue
            entries.append((path, stat.st_size, stat.st_mtime_ns))
    return tuple(sorted(entries))


class PolicyRuntime:
    """Holds the active engine (and an optional shadow) and reloads them safely."""

    def __init__(
        self,
        directory: Path | str,
        *,
        limits: Limits = DEFAULT_LIMITS,
        run_tests: bool = True,
        shadow_directory: Path | str | None = None,
        listener: ReloadListener | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.shadow_directory = Path(shadow_directory) if shadow_directory else None
        self.limits = limits
        self.run_tests = run_tests
        self._listeners: list[ReloadListener] = [listener] if listener else []
        self._reload_lock = threading.Lock()
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self.last_event: ReloadEvent | None = None
        self.last_rejected: ReloadEvent | None = None  # the last reload that was not applied
        self.deferred = 0  # reloads put off for want of file descriptors (see the docstring)
        # The first load must succeed: there is no older version to fall back on.
        self.engine: Engine = build_engine(self.directory, limits, run_tests=run_tests)
        self.shadow: Engine | None = None
        if self.shadow_directory is not None:
            self.shadow = build_engine(self.shadow_directory, limits, run_tests=False)

    def add_listener(self, listener: ReloadListener) -> None:
        self._listeners.append(listener)

    @property
    def version(self) -> str:
        return self.engine.version

    def _emit(self, event: ReloadEvent) -> None:
        self.last_event = event
        if event.ok:
            log.info(
                "policy reload (%s) applied: version %s%s",
                event.role,
                event.version,
                f" ({event.detail})" if event.detail else "",
            )
        else:
            self.last_rejected = event
            log.error(
                "policy reload (%s) REJECTED, still serving the old version: version %s"
                " (candidate %s from %s: %s)",
                event.role,
                event.version or "none",
                event.candidate_version or "did not load",
                event.directory,
                event.detail,
            )
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:
                log.exception("policy reload listener failed")

    def reload(self) -> ReloadEvent:
        """Reloads the active set (and the shadow set, if any). Never raises."""
        with self._reload_lock:
            event = self._reload_one("active", self.directory)
            if self.shadow_directory is not None:
                self._reload_one("shadow", self.shadow_directory)
            return event

    def _reload_one(self, role: str, directory: Path) -> ReloadEvent:
        started = time.perf_counter()
        current = self.engine if role == "active" else self.shadow
        current_version = current.version if current else ""
        short = descriptors_short()
        if short:
            return self._defer(role, directory, current_version, short, started)
        try:
            candidate = build_engine(
                directory, self.limits, run_tests=self.run_tests and role == "active"
            )
            if role == "active":
                _refuse_emptying(current, candidate, directory)
        except ReloadRejected as exc:
            ok, version, candidate_version, detail = (
                False,
                current_version,
                exc.candidate_version,
                exc.detail,
            )
        except Exception as exc:  # an unexpected failure must not take the service down
            ok, version, candidate_version, detail = (
                False,
                current_version,
                "",
                f"internal error: {exc}",
            )
        else:
            # A walk of the directory that met EMFILE may have skipped files silently.
            short = descriptors_short()
            if short:
                return self._defer(role, directory, current_version, short, started)
            if role == "active":
                self.engine = candidate
            else:
                self.shadow = candidate
            ok, version, candidate_version = True, candidate.version, candidate.version
            detail = "" if candidate.version != current_version else "unchanged"
        if not ok:
            short = descriptors_short()
            if short:  # the failure may be the missing descriptors, not the policies
                return self._defer(role, directory, current_version, short, started)
        event = ReloadEvent(
            datetime.now(UTC),
            str(directory),
            ok,
            role,
            version,
            candidate_version,
            detail,
            (time.perf_counter() - started) * 1000,
        )
        self._emit(event)
        return event

    def _defer(
        self, role: str, directory: Path, version: str, why: str, started: float
    ) -> ReloadEvent:
        """A reload put off (not emitted: no rejected-reload record); the watcher retries."""
        self.deferred += 1
        log.warning(
            "policy reload (%s) deferred: %s; still serving version %s, trying again when"
            " descriptors are free",
            role,
            why,
            version or "none",
        )
        return ReloadEvent(
            datetime.now(UTC),
            str(directory),
            False,
            role,
            version,
            "",
            f"deferred: {why}",
            (time.perf_counter() - started) * 1000,
        )

    def set_shadow(self, directory: Path | str | None) -> ReloadEvent | None:
        """Starts (or with None, stops) shadow evaluation of another policy directory."""
        with self._reload_lock:
            self.shadow_directory = Path(directory) if directory else None
            if self.shadow_directory is None:
                self.shadow = None
                return None
            return self._reload_one("shadow", self.shadow_directory)

    def watch(self, interval: float = 1.0, settle: float = 0.2) -> None:
        """Polls the directories and reloads when a file changes (after ``settle`` s)."""
        if self._watcher is not None:
            return

        def directories() -> list[Path]:
            return [d for d in (self.directory, self.shadow_directory) if d is not None]

        seen = [_fingerprint(d) for d in directories()]  # before returning: no missed change

        def loop() -> None:
            nonlocal seen
            while not self._stop.wait(interval):
                now = [_fingerprint(d) for d in directories()]
                if now == seen:
                    continue
                # Let an editor or a deploy tool finish writing before we read.
                self._stop.wait(settle)
                seen = [_fingerprint(d) for d in directories()]
                deferred = self.deferred
                self.reload()
                if self.deferred != deferred:
                    seen = []  # try again at the next interval

        self._watcher = threading.Thread(target=loop, name="pdp-policy-watch", daemon=True)
        self._watcher.start()

    def close(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)
            self._watcher = None

    def status(self) -> dict[str, object]:
        """For health detail and logs: the versions in force, the last reload attempt
        and the last rejected one (None until there is one)."""
        return {
            "version": self.version,
            "policies": len(self.engine.compiled),
            "shadow_version": self.shadow.version if self.shadow else None,
            "last_reload": _event_json(self.last_event),
            "last_rejected_reload": _event_json(self.last_rejected),
        }


def _event_json(event: ReloadEvent | None) -> dict[str, object] | None:
    if event is None:
        return None
    return {
        "time": event.time.isoformat(),
        "role": event.role,
        "directory": event.directory,
        "ok": event.ok,
        "version": event.version,
        "candidate_version": event.candidate_version,
        "detail": event.detail,
    }
