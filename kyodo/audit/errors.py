"""Errors raised by :mod:`kyodo.audit`.

Two kinds, never mixed (STYLE.md 6):

* :class:`AuditVerificationError`: audit data does not verify. The data is an
  export from another node, a checkpoint, or this node's own stored log read
  back by :meth:`~kyodo.audit.AuditLog.verify_chain`. The error names the
  record concerned (``seq``) and a short machine-readable ``reason``, so an
  operator can find the record and a program can sort failures by kind.
* :class:`AuditStoreError`: the log's database cannot be opened or written
  (held by another process, disk full, closed).

A caller that passes the wrong Python types to the writing side (a decision
that is neither ``"allowed"`` nor ``"refused"``, a string where bytes belong)
gets a ``ValueError`` or ``TypeError``. That is a bug in the caller, not bad
input from outside.
"""

from __future__ import annotations

__all__ = ["AuditError", "AuditStoreError", "AuditVerificationError"]


class AuditError(Exception):
    """Base class of every error raised by kyodo.audit for bad data or storage."""


class AuditStoreError(AuditError):
    """The audit log's database cannot be opened, read or written."""


class AuditVerificationError(AuditError):
    """An audit record, export, proof or checkpoint does not verify.

    Attributes:
        seq: the sequence number of the record concerned, or ``None`` when the
            failure is about the document or checkpoint as a whole (a wrong
            format, a signature that does not verify, a root that differs).
        reason: a short machine-readable reason. These are ``malformed``,
            ``range``, ``missing``, ``order``, ``inserted``, ``encoding``,
            ``fields``, ``hash``, ``proof``, ``chain``, ``root``,
            ``checkpoint``, ``checkpoint_signature``, ``public_key`` for
            exports, and ``changed``, ``tree_node``, ``index``, ``head``,
            ``stray``, ``storage`` for the stored log.
    """

    def __init__(self, message: str, *, seq: int | None, reason: str) -> None:
        super().__init__(message)
        self.seq = seq
        self.reason = reason
