"""Login by signed challenge, and the short-lived access tokens it yields.

For people in a browser and tools that cannot hold a TLS client certificate.
No password is stored anywhere: a user proves they hold the signing key of
their member certificate, exactly as when they sign a transaction.

1. ``challenge(certificate)``: the gateway checks the certificate (a member of
   the gateway's own organization, not a node, not revoked or expired) and
   returns 32 random bytes, good for one use within ``CHALLENGE_TTL_MS``.
2. The user signs :func:`login_message` (a fixed domain, the network's chain id
   and the challenge) with their key: a browser with WebCrypto Ed25519, a tool
   with the SDK's signer, an HSM.
3. ``exchange(challenge, signature)``: the gateway verifies the signature
   against the certificate the challenge was issued for and returns a token.

A token is ``kyt1.<claims>.<signature>`` (base64url): canonical
:class:`TokenClaims` (network, issuing node, the user's certificate, a random
id, issue and expiry times) signed by the issuing node's signing key. Any
gateway of the same organization can check it against the node keys in the
network configuration, so a client can fail over between its organization's
nodes without logging in again. On every use the certificate inside is
validated again against the configuration in force, so revoking the user (or
their certificate expiring) ends the token's use at once. Logging out adds the
token's id to the gateway's deny list until the token expires anyway, and the node
sends it to the other nodes of its organization (``on_revoke``, ``deny``): a logout
holds at every gateway that accepts the token.

Why written here: JWT libraries would bring a second encoding and algorithm
negotiation (``alg``) to get wrong; our claims are a canonical record signed with
the key the node already signs blocks with, and the checks are ten lines.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

from kyodo.codec import DecodeError, decode_record, encode, record
from kyodo.crypto import ED25519, CryptoError, Signer, verify_signature
from kyodo.gateway._auth import AuthContext, RequestRejectedError
from kyodo.identity import Member
from kyodo.ledger import TransactionRejectedError, check_creator
from kyodo.wire import login_message

__all__ = [
    "CHALLENGE_TTL_MS",
    "TOKEN_PREFIX",
    "TokenClaims",
    "TokenService",
]

log = structlog.get_logger("kyodo.gateway")

CHALLENGE_TTL_MS = 60_000
"""How long a login challenge can be answered."""
TOKEN_PREFIX = "kyt1."  # noqa: S105 - a format marker, not a secret
MAX_TOKEN_CHARS = 16_384
MAX_OPEN_CHALLENGES = 10_000
MAX_DENIED = 100_000
"""Logged-out tokens remembered; when full, the one closest to expiry goes first."""
_CLOCK_SKEW_MS = 10 * 60 * 1000
"""How far ahead of this node's clock another node's may run (a revocation's expiry)."""


@record(73)
@dataclass(frozen=True, slots=True, kw_only=True)
class TokenClaims:
    """What an access token asserts, signed by the node that issued it."""

    chain_id: str
    issuer: str
    """Node id of the issuing gateway; its signing key (in the configuration) signs."""
    certificate: bytes
    """The user's signing certificate (DER): the identity the token is bound to."""
    token_id: bytes
    """16 random bytes (logout denies this id)."""
    issued_ms: int
    expires_ms: int


def _token_message(claims_bytes: bytes) -> bytes:
    return b"kyodo/token/v1\x00" + claims_bytes


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _member_of(certificate: bytes, context: AuthContext, org: str, now_ms: int) -> Member:
    """The member ``certificate`` names, if it may log in at this organization's gateway."""
    try:
        member = check_creator(certificate, membership=context.membership, now_ms=now_ms)
    except TransactionRejectedError as exc:
        message = str(exc).replace("creator not accepted", "login refused", 1)
        raise RequestRejectedError(message, reason=exc.reason) from exc
    if member.org != org:
        raise RequestRejectedError(
            f"{member.org}/{member.name} logs in at a gateway of {member.org}, not of {org}",
            reason="identity_mismatch",
        )
    return member


@dataclass(frozen=True, slots=True)
class _Challenge:
    certificate: bytes
    expires_ms: int


class TokenService:
    """Issues and checks the access tokens of one gateway (see the module docs)."""

    def __init__(
        self,
        *,
        chain_id: str,
        node_id: str,
        org_id: str,
        signer: Callable[[], Signer],
        node_key: Callable[[str, str], bytes | None],
        ttl_ms: int,
        on_revoke: Callable[[bytes, int], None] | None = None,
        denied_file: Path | None = None,
    ) -> None:
        """``on_revoke(token_id, expires_ms)``: a token was logged out here (the node
        tells the other nodes of the organization). ``denied_file``: where the denied
        tokens are kept across a restart (one ``<hex id> <expires ms>`` line each)."""
        self._chain_id = chain_id
        self._node_id = node_id
        self._org_id = org_id
        self._signer = signer
        self._node_key = node_key
        """(node id, org) -> the node's signing key if it is a node of that org, else None."""
        self.ttl_ms = ttl_ms
        self._challenges: OrderedDict[bytes, _Challenge] = OrderedDict()
        self._denied: dict[bytes, int] = {}
        self._lock = threading.Lock()
        self._on_revoke = on_revoke
        self._inserts = 0
        self._denied_file = denied_file
        if denied_file is not None:
            self._load_denied(denied_file)

    def challenge(self, certificate: bytes, context: AuthContext, now_ms: int) -> tuple[bytes, int]:
        """A fresh challenge for the member ``certificate`` names, and when it expires."""
        _member_of(certificate, context, self._org_id, now_ms)
        nonce = os.urandom(32)
        expires = now_ms + CHALLENGE_TTL_MS
        with self._lock:
            while self._challenges:
                oldest = next(iter(self._challenges.values()))
                if oldest.expires_ms >= now_ms and len(self._challenges) < MAX_OPEN_CHALLENGES:
                    break
                self._challenges.popitem(last=False)
            self._challenges[nonce] = _Challenge(certificate, expires)
        return nonce, expires

    def exchange(
        self, challenge: bytes, signature: bytes, context: AuthContext, now_ms: int
    ) -> tuple[str, TokenClaims, Member]:
        """A token for the user who signed ``challenge`` (each challenge answers once)."""
        with self._lock:
            pending = self._challenges.pop(challenge, None)
        if pending is None or pending.expires_ms < now_ms:
            raise RequestRejectedError(
                "unknown, used or expired login challenge: ask for a new one",
                reason="challenge_unknown",
            )
        member = _member_of(pending.certificate, context, self._org_id, now_ms)
        try:
            verify_signature(
                ED25519, member.public_key, login_message(self._chain_id, challenge), signature
            )
        except CryptoError as exc:
            raise RequestRejectedError(
                "the challenge's signature does not verify against the certificate",
                reason="bad_signature",
            ) from exc
        claims = TokenClaims(
            chain_id=self._chain_id,
            issuer=self._node_id,
            certificate=pending.certificate,
            token_id=os.urandom(16),
            issued_ms=now_ms,
            expires_ms=now_ms + self.ttl_ms,
        )
        raw = encode(claims)
        signature = self._signer().sign(_token_message(raw))
        return f"{TOKEN_PREFIX}{_b64(raw)}.{_b64(signature)}", claims, member

    def verify(self, token: str, context: AuthContext, now_ms: int) -> tuple[TokenClaims, Member]:
        """The claims and member of a valid token; RequestRejectedError otherwise."""
        claims = self._decode(token)
        if claims.chain_id != self._chain_id:
            raise RequestRejectedError("the token is for another network", reason="wrong_chain")
        key = self._node_key(claims.issuer, self._org_id)
        if key is None:
            raise RequestRejectedError(
                f"the token was issued by {claims.issuer!r}, not a node of {self._org_id}",
                reason="token_issuer",
            )
        raw, signature = self._parts(token)
        try:
            verify_signature(ED25519, key, _token_message(raw), signature)
        except CryptoError as exc:
            raise RequestRejectedError(
                "the token's signature does not verify (forged, altered, or signed with a "
                "node key since rotated): log in again",
                reason="token_invalid",
            ) from exc
        if now_ms >= claims.expires_ms:
            raise RequestRejectedError(
                f"the token expired at {claims.expires_ms} ms: log in again",
                reason="token_expired",
            )
        with self._lock:
            if claims.token_id in self._denied:
                raise RequestRejectedError("the token was logged out", reason="token_revoked")
        return claims, _member_of(claims.certificate, context, self._org_id, now_ms)

    def revoke(self, claims: TokenClaims, now_ms: int) -> None:
        """Deny the token from now until it expires (logout), here and, through
        ``on_revoke``, at the organization's other gateways."""
        self._deny([(claims.token_id, claims.expires_ms)], now_ms, keep=True)
        if self._on_revoke is not None:
            self._on_revoke(claims.token_id, claims.expires_ms)

    def deny(self, token_id: bytes, expires_ms: int, now_ms: int) -> bool:
        """Deny a token logged out at another gateway of the organization until
        ``expires_ms``; False (nothing kept) for an id that is not a token's, or a time
        past or further out than any token of this organization lives."""
        return self.deny_many([(token_id, expires_ms)], now_ms) == 1

    def deny_many(self, tokens: Sequence[tuple[bytes, int]], now_ms: int) -> int:
        """``deny`` for each of ``tokens`` (a peer's whole list, say), written to the
        file at once; returns how many were taken."""
        latest = now_ms + self.ttl_ms + _CLOCK_SKEW_MS  # a peer's clock may run ahead
        valid = [(t, e) for t, e in tokens if len(t) == 16 and now_ms < e <= latest]
        self._deny(valid, now_ms, keep=True)
        return len(valid)

    def _deny(self, tokens: Sequence[tuple[bytes, int]], now_ms: int, *, keep: bool) -> None:
        new: list[tuple[bytes, int]] = []
        with self._lock:
            for token_id, expires_ms in tokens:
                if token_id in self._denied:
                    continue  # known: nothing to do (a peer's list comes again and again)
                if len(self._denied) >= MAX_DENIED:
                    self._sweep(now_ms)
                    if len(self._denied) >= MAX_DENIED:  # the oldest logout goes
                        del self._denied[next(iter(self._denied))]
                self._denied[token_id] = expires_ms
                new.append((token_id, expires_ms))
            self._inserts += len(new)
            if self._inserts >= 4096 + len(self._denied):  # the file keeps expired lines:
                self._sweep(now_ms)  # written again with the live ones only
                if keep:
                    self._rewrite_denied()
                    new = []
        if keep and new:
            self._append_denied(new)

    def _sweep(self, now_ms: int) -> None:
        for token_id, expires in list(self._denied.items()):
            if expires <= now_ms:
                del self._denied[token_id]
        self._inserts = 0

    def _append_denied(self, tokens: Sequence[tuple[bytes, int]]) -> None:
        """Add to the file (a restart keeps them denied); a disk error is said, never
        raised: the tokens stay denied in memory, and peers send them again."""
        if self._denied_file is None:
            return
        try:
            with self._denied_file.open("a") as out:
                out.writelines(f"{t.hex()} {e}\n" for t, e in tokens)
        except OSError as exc:
            log.error("tokens_denied_write_failed", path=str(self._denied_file), error=str(exc))

    def _load_denied(self, path: Path) -> None:
        """The tokens denied before a restart that have not expired; the file is written
        again with those only. A file that does not read is set aside (and said)."""
        now = int(time.time() * 1000)
        try:
            lines = path.read_text().splitlines()
        except FileNotFoundError:
            lines = []
        except (OSError, UnicodeDecodeError) as exc:
            aside = path.with_name(f"{path.name}.unreadable-{now}")
            log.error(
                "tokens_denied_unreadable", path=str(path), moved_to=str(aside), error=str(exc)
            )
            with contextlib.suppress(OSError):
                os.replace(path, aside)
            lines = []
        loaded: list[tuple[bytes, int]] = []
        for line in lines:
            with contextlib.suppress(ValueError):
                token_hex, expires = line.split()
                token_id, expires_ms = bytes.fromhex(token_hex), int(expires)
                if len(token_id) == 16 and expires_ms > now:
                    loaded.append((token_id, expires_ms))
        self._deny(loaded, now, keep=False)
        with self._lock:
            self._rewrite_denied()

    def _rewrite_denied(self) -> None:
        """The file again with the tokens denied now only (expired ones leave it)."""
        if self._denied_file is None:
            return
        kept = "".join(f"{t.hex()} {e}\n" for t, e in self._denied.items())
        tmp = self._denied_file.with_name(self._denied_file.name + ".tmp")
        try:
            tmp.write_text(kept)
            os.replace(tmp, self._denied_file)
        except OSError as exc:
            log.error("tokens_denied_write_failed", path=str(self._denied_file), error=str(exc))

    def denied(self, now_ms: int) -> list[tuple[bytes, int]]:
        """The tokens denied now, with their expiry (for a node of the organization
        that connects: it may have restarted and forgotten them)."""
        with self._lock:
            return [(t, e) for t, e in self._denied.items() if e > now_ms]

    def _parts(self, token: str) -> tuple[bytes, bytes]:
        if len(token) > MAX_TOKEN_CHARS or not token.startswith(TOKEN_PREFIX):
            raise RequestRejectedError("not a Kyodo access token", reason="token_malformed")
        body, _, signature = token[len(TOKEN_PREFIX) :].partition(".")
        try:
            return _unb64(body), _unb64(signature)
        except (binascii.Error, ValueError) as exc:
            raise RequestRejectedError(
                "the token is not base64url", reason="token_malformed"
            ) from exc

    def _decode(self, token: str) -> TokenClaims:
        raw, _ = self._parts(token)
        try:
            return decode_record(TokenClaims, raw, max_size=MAX_TOKEN_CHARS)
        except DecodeError as exc:
            raise RequestRejectedError(
                f"the token's claims do not decode: {exc}", reason="token_malformed"
            ) from exc
