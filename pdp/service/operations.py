"""What ties the audit stream to the service's operations: health and policy reloads.

- :func:`audit_health` is a health source for :class:`pdp.service.server.DecisionServer`:
  while the audit log cannot be written (disk full, directory gone, writer dead) the
  service fails closed (every decision is an ``audit_unavailable`` deny), and health
  says NOT_SERVING so that load balancers send callers elsewhere. The file system's
  free space is checked too: after a failed write the pipeline's recovery probe (a
  small checkpoint) can still fit in the last page of a full disk and report the log
  writable, though the next record will not fit.
- :func:`policy_health` never fails (a rejected reload leaves the old version serving)
  but carries the last rejected reload in its detail, for GetStatus and the log.
- :func:`reload_recorder` writes a ``policy_reload`` audit record for every reload
  attempt (a :class:`pdp.engine.runtime.PolicyRuntime` listener).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from pdp.audit.record import build_policy_reload_record

if TYPE_CHECKING:
    from pdp.audit.config import Audit
    from pdp.engine.runtime import PolicyRuntime, ReloadEvent

log = logging.getLogger(__name__)

# A health check: (ok, detail). Must not block; an exception counts as not ok.
HealthSource = Callable[[], tuple[bool, str]]


# Below this much free space on its file system the audit log counts as full.
MIN_FREE_BYTES = 1024 * 1024


def audit_health(audit: Audit, *, min_free_bytes: int = MIN_FREE_BYTES) -> HealthSource:
    log_dir = audit.config.file.log_dir

    def check() -> tuple[bool, str]:
        if not audit.healthy:
            error = audit.pipeline.last_error or "the audit pipeline is closed"
            return False, f"audit log {log_dir} unavailable, decisions denied: {error}"
        try:
            stat = os.statvfs(log_dir)
        except OSError as exc:
            return False, f"audit log {log_dir} unavailable: {exc}"
        free = stat.f_bavail * stat.f_frsize
        if free < min_free_bytes:
            return False, (
                f"audit log {log_dir}: its file system is full ({free} bytes free, fewer"
                f" than {min_free_bytes}); decisions are denied once a record does not fit"
            )
        return True, f"audit log {log_dir} writable ({free // (1024 * 1024)} MiB free)"

    return check


def policy_health(runtime: PolicyRuntime) -> HealthSource:
    def check() -> tuple[bool, str]:
        rejected = runtime.last_rejected
        detail = f"version {runtime.version}"
        if rejected is not None:
            detail += (
                f"; last rejected reload ({rejected.role}) at {rejected.time.isoformat()}:"
                f" candidate {rejected.candidate_version or 'did not load'}: {rejected.detail}"
            )
        return True, detail

    return check


def reload_recorder(audit: Audit) -> Callable[[ReloadEvent], None]:
    """A reload listener that audits every attempt (it never blocks the reload)."""

    def record(event: ReloadEvent) -> None:
        ticket = audit.pipeline.submit(
            build_policy_reload_record(
                directory=event.directory,
                role=event.role,
                ok=event.ok,
                version=event.version,
                candidate_version=event.candidate_version,
                detail=event.detail,
                duration_ms=event.duration_ms,
                instance_id=audit.instance_id,
                redactor=audit.redactor,
                time=event.time,
            )
        )
        if not ticket.accepted:
            log.error("policy reload not recorded in the audit log: %s", ticket.error)

    return record
