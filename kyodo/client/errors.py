"""Typed errors the SDK raises; each carries the gateway's stable ``code``."""

from __future__ import annotations


class KyodoError(Exception):
    """Base class of every error the SDK raises.

    Attributes:
        code: the gateway's stable error code (see docs/errors.md).
    """

    def __init__(self, message: str, *, code: str = "error") -> None:
        super().__init__(message)
        self.code = code


class TransactionRejected(KyodoError):
    """The transaction was refused before ordering (``code`` is ``rejected.<reason>``).

    Attributes:
        reason: ``duplicate``, ``bad_signature``, ``unknown_ca``, ``certificate_expired``,
            ``wrong_role``, ``revoked``, ``unknown_identity``, ``expired``,
            ``malformed``, ``too_large``, ``wrong_chain`` or ``busy``.
    """

    @property
    def reason(self) -> str:
        """The part of the code after ``rejected.``."""
        return self.code.partition(".")[2]


class ContractFailed(KyodoError):
    """The contract refused the call; the message is the contract's.

    Attributes:
        tx_id: hex id of the transaction (None for a query).
        height: block the failed transaction was recorded in (None for a query).
    """

    def __init__(
        self,
        message: str,
        *,
        code: str = "contract_error",
        tx_id: str | None = None,
        height: int | None = None,
    ) -> None:
        super().__init__(message, code=code)
        self.tx_id = tx_id
        self.height = height


class AccessDenied(ContractFailed):
    """The caller's organization and role match none of the function's access rules;
    the message names the rule that refused."""


class NotFound(KyodoError):
    """The block, transaction, contract or function does not exist."""


class NotFinal(KyodoError):
    """The transaction was accepted but not final within the wait; poll its status."""

    def __init__(self, message: str, *, tx_id: str) -> None:
        super().__init__(message, code="timeout")
        self.tx_id = tx_id


class Unauthenticated(KyodoError):
    """The gateway refused the caller: its TLS certificate (``unauthenticated``) or its
    signed request (``auth.<reason>``: ``unknown_ca``, ``certificate_expired``,
    ``revoked``, ``wrong_role``, ``unknown_identity``, ``bad_signature``, ``expired``,
    ``replayed``, ``wrong_chain``, ``wrong_method``, ``identity_mismatch``, ``malformed``).
    """

    @property
    def reason(self) -> str:
        """The part of the code after ``auth.`` (``unauthenticated`` for a TLS refusal)."""
        return self.code.partition(".")[2] or self.code


class Unavailable(KyodoError):
    """The gateway could not be reached (after retries)."""


class RateLimited(KyodoError):
    """The gateway refused the call: this identity is over its rate (``rate_limited``).
    The SDK retries after ``retry_after_s`` before raising this.

    Attributes:
        retry_after_s: when one call will pass again (None if the gateway did not say).
    """

    def __init__(
        self, message: str, *, code: str = "rate_limited", retry_after_s: float | None = None
    ) -> None:
        super().__init__(message, code=code)
        self.retry_after_s = retry_after_s


class InvalidRequest(KyodoError):
    """The request itself is wrong (``malformed``, ``too_large``, ``events.invalid``...):
    retrying it unchanged cannot succeed."""


class Conflict(KyodoError):
    """The request conflicts with what exists (``events.conflict``: a subscription of
    that name exists with another declaration)."""


class StreamSuperseded(KyodoError):
    """Another consumer opened the same subscription; this stream ended
    (``events.superseded``)."""
