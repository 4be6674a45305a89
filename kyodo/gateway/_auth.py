"""Request authentication: who signed a gateway call, and whether it is fresh.

Every gateway call carries the caller's signature, not only transactions:
reading a block or a transaction's status is as much an access as writing.
A call other than submit and evaluate is a :class:`~kyodo.wire.SignedRequest`;
its payload names the network, the method, the request body, a nonce, the
time of signing and the caller's signing certificate. The gateway refuses,
each with its own reason (the error code is ``auth.<reason>``):

``malformed``          the request does not decode, or its nonce is not 16 bytes
``wrong_chain``        it is for another network
``wrong_method``       it was signed for another method
``unknown_ca``         the certificate's issuer is no member organization's CA
``certificate_expired`` the certificate is outside its validity period
``revoked``            the organization's revocation list names the certificate
``wrong_role``         a node certificate (nodes do not call gateways)
``unknown_identity``   otherwise unacceptable certificate
``bad_signature``      the signature does not verify against the certificate
``expired``            signed outside the freshness window (the network's
                       ``tx_max_age_ms`` either side of the gateway's clock)
``replayed``           the same signed request (or query) was seen in the window
``identity_mismatch``  the signer is of another organization than the TLS client

Replay protection is a set of the request ids (SHA-256 of the signed payload)
seen within the window; an entry is dropped once its request is too old to be
accepted anyway. The set is bounded: when it is full, the oldest entry is
dropped and nothing signed before it is accepted from then on, so a flood can
shorten the window but never reopen it to replays.

Why written here: the checks are the ledger's own transaction checks applied to
a request record; no library knows our certificates or records.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

from kyodo.codec import DecodeError, decode_record
from kyodo.crypto import ED25519, CryptoError, sha256, verify_signature
from kyodo.identity import Member, Membership
from kyodo.ledger import TransactionRejectedError, check_creator
from kyodo.policy import AclTable
from kyodo.wire import MAX_REQUEST_BYTES, RequestPayload, SignedRequest

__all__ = ["AuthContext", "ReplayGuard", "RequestRejectedError", "check_request", "request_id"]


class RequestRejectedError(Exception):
    """A gateway call that is not authentic or not fresh; ``reason`` says which check."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class AuthContext:
    """What checking a call needs from the configuration in force."""

    chain_id: str
    membership: Membership
    max_age_ms: int
    acl: AclTable


def check_request(
    signed: SignedRequest, *, method: str, context: AuthContext, now_ms: int
) -> tuple[RequestPayload, Member]:
    """The payload and signer of an authentic, fresh request for ``method``; raise
    RequestRejectedError otherwise. Replays are the :class:`ReplayGuard`'s job."""
    try:
        payload = decode_record(RequestPayload, signed.payload, max_size=MAX_REQUEST_BYTES)
    except DecodeError as exc:
        raise RequestRejectedError(f"malformed request: {exc}", reason="malformed") from exc
    if payload.chain_id != context.chain_id:
        raise RequestRejectedError(
            f"request is for network {payload.chain_id!r}, not {context.chain_id!r}",
            reason="wrong_chain",
        )
    if payload.method != method:
        raise RequestRejectedError(
            f"request was signed for {payload.method!r}, not {method!r}", reason="wrong_method"
        )
    if len(payload.nonce) != 16:
        raise RequestRejectedError("request nonce must be 16 bytes", reason="malformed")
    try:
        member = check_creator(payload.creator, membership=context.membership, now_ms=now_ms)
    except TransactionRejectedError as exc:
        message = str(exc).replace("creator not accepted", "caller not accepted", 1)
        raise RequestRejectedError(message, reason=exc.reason) from exc
    try:
        verify_signature(ED25519, member.public_key, signed.payload, signed.signature)
    except CryptoError as exc:
        raise RequestRejectedError(
            "request signature does not verify against the caller's certificate",
            reason="bad_signature",
        ) from exc
    if abs(now_ms - payload.created_ms) > context.max_age_ms:
        raise RequestRejectedError(
            f"request signed at {payload.created_ms} ms is outside the {context.max_age_ms} ms "
            f"window around {now_ms} ms (check the caller's clock)",
            reason="expired",
        )
    return payload, member


def request_id(signed: SignedRequest) -> bytes:
    """The id replay protection keys on: SHA-256 of the signed payload."""
    return sha256(signed.payload)


class ReplayGuard:
    """Ids of requests seen within the freshness window (bounded, see module docs)."""

    def __init__(self, *, capacity: int = 200_000) -> None:
        self._capacity = capacity
        self._seen: dict[bytes, int] = {}
        self._expiry: list[tuple[int, bytes]] = []
        self._floor_ms = -1
        """Requests signed at or before this time are refused (the set overflowed)."""

    def __len__(self) -> int:
        return len(self._seen)

    def admit(self, key: bytes, *, created_ms: int, now_ms: int, window_ms: int) -> None:
        """Record ``key``; raise RequestRejectedError if it was seen or is too old to tell."""
        while self._expiry and self._expiry[0][0] < now_ms:
            _, old = heapq.heappop(self._expiry)
            self._seen.pop(old, None)
        if key in self._seen:
            raise RequestRejectedError(
                "this signed request was already received; sign a new one (fresh nonce)",
                reason="replayed",
            )
        if created_ms <= self._floor_ms:
            raise RequestRejectedError(
                "request is older than the gateway's replay memory under the current load; "
                "sign it again",
                reason="expired",
            )
        if len(self._seen) >= self._capacity:
            expires, old = heapq.heappop(self._expiry)
            self._seen.pop(old, None)
            self._floor_ms = max(self._floor_ms, expires - window_ms)
        self._seen[key] = created_ms
        heapq.heappush(self._expiry, (created_ms + window_ms, key))
