"""Audit stream: one redacted, hash-chained record per decision, to a file and to NATS.

Typical use in the service::

    audit = open_audit(AuditConfig(FileSinkConfig(Path("/var/lib/pdp/audit"))))
    decision_id = new_decision_id()
    decision = engine.decide(request)
    answer = audit.record_decision(decision_id, request, decision, caller, latency_us)
    ...
    audit.close()

The record format is documented in ``RECORD.md``; ``verify_files`` checks the log.
"""

from pdp.audit.config import Audit, AuditConfig, default_instance_id, open_audit
from pdp.audit.filesink import FileSink, FileSinkConfig, LogPosition
from pdp.audit.ids import new_decision_id
from pdp.audit.keys import load_public_key
from pdp.audit.nats_shipper import NatsShipper, NatsShipperConfig, ShipperStats
from pdp.audit.pipeline import (
    AuditListener,
    AuditPipeline,
    AuditStats,
    DeliveryMode,
    PipelineConfig,
    Ticket,
)
from pdp.audit.record import (
    REASON_AUDIT_UNAVAILABLE,
    RECORD_VERSION,
    audit_unavailable,
    build_decision_record,
    build_refusal_record,
)
from pdp.audit.redact import REDACTED, RedactionConfig, Redactor
from pdp.audit.service_sink import AuditDecisionSink
from pdp.audit.verify import CrashPoint, VerifyProblem, VerifyReport, verify_files

__all__ = [
    "REASON_AUDIT_UNAVAILABLE",
    "RECORD_VERSION",
    "REDACTED",
    "Audit",
    "AuditConfig",
    "AuditDecisionSink",
    "AuditListener",
    "AuditPipeline",
    "AuditStats",
    "CrashPoint",
    "DeliveryMode",
    "FileSink",
    "FileSinkConfig",
    "LogPosition",
    "NatsShipper",
    "NatsShipperConfig",
    "PipelineConfig",
    "RedactionConfig",
    "Redactor",
    "ShipperStats",
    "Ticket",
    "VerifyProblem",
    "VerifyReport",
    "audit_unavailable",
    "build_decision_record",
    "build_refusal_record",
    "default_instance_id",
    "load_public_key",
    "new_decision_id",
    "open_audit",
    "verify_files",
]
