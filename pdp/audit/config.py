"""One typed place to configure auditing, and :func:`open_audit` that wires it up."""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass, field
from datetime import datetime

from pdp.audit.filesink import FileSink, FileSinkConfig
from pdp.audit.ids import new_decision_id
from pdp.audit.keys import SigningKeyError, load_or_create_signer
from pdp.audit.nats_shipper import NatsShipper, NatsShipperConfig, subject_token
from pdp.audit.pipeline import AuditPipeline, PipelineConfig, Ticket
from pdp.audit.record import build_decision_record, build_refusal_record
from pdp.audit.redact import RedactionConfig, Redactor
from pdp.model import Caller, Decision, Request

log = logging.getLogger(__name__)


def default_instance_id() -> str:
    """The host name as a NATS subject token; set ``instance_id`` when several PDPs share a host."""
    return subject_token(socket.gethostname())


@dataclass(frozen=True, slots=True)
class AuditConfig:
    file: FileSinkConfig
    instance_id: str = field(default_factory=default_instance_id)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    redaction: RedactionConfig = field(default_factory=RedactionConfig)
    nats: NatsShipperConfig | None = None  # None: file only
    key_fingerprint: str = ""  # pinned: refuse to start with any other signing key


class Audit:
    """The running audit stream: redactor, pipeline (file sink) and optional NATS shipper."""

    def __init__(self, config: AuditConfig) -> None:
        self.config = config
        self.instance_id = config.instance_id
        self.redactor = Redactor(config.redaction)
        # The key is checked now (apart from the logs, 0600, the pinned one if pinned),
        # so that a bad key stops the start instead of leaving an unhealthy writer.
        self.signer = load_or_create_signer(config.file.key_path, log_dir=config.file.log_dir)
        if config.key_fingerprint and self.signer.fingerprint != config.key_fingerprint:
            raise SigningKeyError(
                f"{config.file.key_path}: the checkpoint signing key has fingerprint "
                f"{self.signer.fingerprint}, not the pinned {config.key_fingerprint} "
                "(audit.key_fingerprint): a replaced key is refused"
            )
        self.sink = FileSink(config.file, config.instance_id, signer=self.signer)
        self.pipeline = AuditPipeline(self.sink, config.pipeline)
        self.shipper: NatsShipper | None = None
        if config.nats is not None:
            self.shipper = NatsShipper(
                config.file.log_dir,
                config.file.log_dir,  # the position belongs to this chain: one per log dir
                config.nats,
                committed=lambda: self.sink.committed,
            )
            self.pipeline.add_commit_hook(self.shipper.notify)
            self.shipper.start()

    def record_decision(
        self,
        decision_id: str,
        request: Request,
        decision: Decision,
        caller: Caller,
        *,
        latency_us: int,
        shadow: Decision | None = None,
        time: datetime | None = None,
    ) -> Decision:
        """Records a decision and returns what to answer (``audit_unavailable`` deny if the
        record is not durable and the pipeline is not fail-open)."""
        record = build_decision_record(
            decision_id,
            request,
            decision,
            caller,
            latency_us,
            self.instance_id,
            self.redactor,
            shadow,
            time=time,
        )
        return self.pipeline.guard(decision, self.pipeline.submit(record))

    def record_refusal(
        self,
        code: str,
        message: str,
        *,
        caller: Caller | None,
        request: Request | None = None,
        method: str = "",
        peer: str = "",
        decision_id: str | None = None,
    ) -> Ticket:
        """Records a refused call (no decision to guard: the call is refused anyway)."""
        record = build_refusal_record(
            decision_id or new_decision_id(),
            code,
            message,
            caller=caller,
            instance_id=self.instance_id,
            redactor=self.redactor,
            request=request,
            method=method,
            peer=peer,
        )
        return self.pipeline.submit(record)

    @property
    def healthy(self) -> bool:
        return self.pipeline.healthy

    def close(self, timeout: float = 5.0) -> bool:
        """Flushes and seals the log, then gives the shipper ``timeout`` to catch up."""
        ok = self.pipeline.close(timeout)
        if self.shipper is not None:
            shipped = self.shipper.stop(timeout)
            if not shipped:
                log.warning("audit shipper stopped before catching up; it resumes on restart")
        return ok

    def __enter__(self) -> Audit:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_audit(config: AuditConfig) -> Audit:
    return Audit(config)
