"""The tamper-evident audit log: hash-chained, Merkle-rooted, signed checkpoints, exports."""

from __future__ import annotations

from kyodo.audit._log import (
    CHECKPOINT_DOMAIN,
    DECISIONS,
    EXPORT_FORMAT,
    MAX_EXPORT_RECORDS,
    MAX_QUERY_LIMIT,
    MAX_RECORD_BYTES,
    TEXT_LIMITS,
    TRANSPORTS,
    AuditCheckpoint,
    AuditLog,
    AuditRecord,
    ExportReport,
    checkpoint_message,
    compute_record_hash,
    verify_checkpoint,
    verify_export,
)
from kyodo.audit.errors import AuditError, AuditStoreError, AuditVerificationError

__all__ = [
    "CHECKPOINT_DOMAIN",
    "DECISIONS",
    "EXPORT_FORMAT",
    "MAX_EXPORT_RECORDS",
    "MAX_QUERY_LIMIT",
    "MAX_RECORD_BYTES",
    "TEXT_LIMITS",
    "TRANSPORTS",
    "AuditCheckpoint",
    "AuditError",
    "AuditLog",
    "AuditRecord",
    "AuditStoreError",
    "AuditVerificationError",
    "ExportReport",
    "checkpoint_message",
    "compute_record_hash",
    "verify_checkpoint",
    "verify_export",
]
