"""Configuration changes under the admin policy (ADR 0011).

A change travels as an ordinary signed transaction to the built-in ``_config``
contract, function ``update``, with two arguments:
- the canonical bytes of the whole next :class:`NetworkConfig`, epoch + 1;
- a list of approvals, ``[admin signing certificate (DER), signature]``, each
  signature over :func:`approval_message`.

Every validator checks the change with :func:`check_config_update` before it
votes. So does a gateway when it admits the change, so an admin hears why at
once. The block that carries it becomes a *configuration block*: that
transaction alone, with ``block.config`` set. The new configuration is in force
from the next height.

Policy: the configuration's ``admin_policy`` (the policy language of
``kyodo.policy``), evaluated over the approving admins, each approval by a valid
``admin`` certificate. When it is empty, the admins of a majority of the
organizations in force must approve (more than half), as before it existed.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from kyodo.codec import DecodeError, decode_record, encode
from kyodo.crypto import ED25519, CryptoError, verify_signature
from kyodo.identity import IdentityError, Role
from kyodo.ledger._epochs import ConfigView
from kyodo.ledger._topology import FragileTopologyError, check_topology
from kyodo.ledger._types import Block, NetworkConfig
from kyodo.ledger._verify import CheckedTx
from kyodo.ledger.errors import BlockVerificationError, LedgerError, TransactionRejectedError
from kyodo.policy import (
    MAX_SIGNERS,
    Identity,
    OutOf,
    Policy,
    PolicyError,
    Principal,
    evaluate,
    parse_policy,
)

__all__ = [
    "CONFIG_CONTRACT",
    "CONFIG_FUNCTION",
    "admin_policy_of",
    "approval_message",
    "check_config_update",
    "required_approvals",
    "verify_configuration_block",
]

CONFIG_CONTRACT = "_config"
CONFIG_FUNCTION = "update"


def approval_message(chain_id: str, config_bytes: bytes) -> bytes:
    """What an organization's admin signs to approve a configuration."""
    return b"kyodo/config-approval/v1\x00" + chain_id.encode() + b"\x00" + config_bytes


def required_approvals(current: NetworkConfig) -> int:
    """Organizations whose admins must approve a change under the default policy."""
    return len(current.orgs) // 2 + 1


def admin_policy_of(config: NetworkConfig) -> Policy:
    """The policy a change of ``config`` must satisfy (raises PolicyError if the
    configuration's policy text does not parse)."""
    if config.admin_policy:
        return parse_policy(config.admin_policy)
    admins = tuple(Principal(org=o.org_id, role="admin") for o in config.orgs)
    return OutOf(k=required_approvals(config), items=admins)


def _every_admin(config: NetworkConfig) -> list[Identity]:
    """Admins of every organization of ``config`` (a few each, within the evaluator's
    signer limit), to tell whether its admin policy can be satisfied at all."""
    per_org = max(1, min(4, MAX_SIGNERS // max(1, len(config.orgs))))
    return [
        Identity(org=o.org_id, role="admin", name=f"admin{i}")
        for o in config.orgs
        for i in range(per_org)
    ][:MAX_SIGNERS]


def check_config_update(
    current: ConfigView, args: tuple[Any, ...], *, now_ms: int
) -> NetworkConfig:
    """The next configuration, if ``args`` are a valid change of ``current``.

    Raises TransactionRejectedError (reason ``config_rejected``) saying what is wrong:
    a malformed configuration, a wrong epoch or network, node certificates that do
    not verify, a fragile topology, or too few valid admin approvals (naming the
    organizations that approved and how many more are needed).
    """
    if len(args) != 2 or not isinstance(args[0], bytes) or not isinstance(args[1], list):
        raise _rejected("an update takes (configuration bytes, approvals)")
    raw, approvals = args
    try:
        new = decode_record(NetworkConfig, raw)
    except DecodeError as exc:
        raise _rejected(f"the configuration does not decode: {exc}") from exc
    if encode(new) != raw:
        raise _rejected("the configuration is not canonically encoded")
    old = current.config
    if new.chain_id != old.chain_id:
        raise _rejected(f"the configuration is for network {new.chain_id!r}")
    if new.epoch != old.epoch + 1:
        raise _rejected(f"the configuration says epoch {new.epoch}; {old.epoch + 1} is next")
    try:
        policy = admin_policy_of(new)
        can_approve = evaluate(policy, _every_admin(new)).allowed
    except PolicyError as exc:
        raise _rejected(f"the new admin policy does not parse: {exc}") from exc
    if not can_approve:
        raise _rejected(
            f"the admins of the organizations of the new configuration could never satisfy "
            f"its admin policy {policy}: no further change could be approved"
        )
    if not new.validators():
        raise _rejected("the configuration has no validator: nothing could order blocks")
    try:
        ConfigView.of(new)
        check_topology(new, allow_fragile=new.allow_fragile_topology)
    except FragileTopologyError as exc:
        raise _rejected(str(exc)) from exc
    except LedgerError as exc:
        raise _rejected(str(exc)) from exc
    signers = _approving_admins(current, raw, approvals, now_ms)
    approved = {s.org for s in signers}
    if old.admin_policy:
        decision = evaluate(admin_policy_of(old), signers)
        if not decision.allowed:
            raise _rejected(f"the admin policy is not satisfied: {decision.reason}")
        return new
    needed = required_approvals(old)
    if len(approved) < needed:
        missing = sorted({o.org_id for o in old.orgs} - approved)
        raise _rejected(
            f"approved by the admins of {len(approved)} organization(s) "
            f"({', '.join(sorted(approved)) or 'none'}); {needed} are required: "
            f"{needed - len(approved)} more of {', '.join(missing)}"
        )
    return new


def _approving_admins(
    current: ConfigView, raw: bytes, approvals: list[Any], now_ms: int
) -> list[Identity]:
    message = approval_message(current.config.chain_id, raw)
    now = datetime.fromtimestamp(now_ms / 1000, UTC)
    if len(approvals) > 64:
        raise _rejected("at most 64 approvals")
    signers: dict[bytes, Identity] = {}
    for approval in approvals:
        if (
            not isinstance(approval, list)
            or len(approval) != 2
            or not all(isinstance(part, bytes) for part in approval)
        ):
            raise _rejected("each approval is [certificate, signature]")
        cert, signature = approval
        try:
            member = current.membership.validate(cert, now=now)
        except IdentityError as exc:
            raise _rejected(f"an approval's certificate is not accepted: {exc}") from exc
        if member.role != Role.ADMIN:
            raise _rejected(f"{member.org}/{member.name} is not an admin ({member.role})")
        try:
            verify_signature(ED25519, member.public_key, message, signature)
        except CryptoError as exc:
            raise _rejected(f"the approval of {member.org}/{member.name} does not verify") from exc
        signers[member.fingerprint] = Identity(org=member.org, role="admin", name=member.name)
    return list(signers.values())  # one certificate counts once


def _rejected(message: str) -> TransactionRejectedError:
    return TransactionRejectedError(
        f"configuration change refused: {message}", reason="config_rejected"
    )


def verify_configuration_block(block: Block, checked: list[CheckedTx], view: ConfigView) -> None:
    """A configuration change travels alone, in a configuration block, and passes the
    admin policy of the configuration in force (``view``); no other block carries one.
    Raises BlockVerificationError (reason ``config``). The node before voting and
    ``kyodo verify`` offline apply this same check."""
    changes = [
        c for c in checked if c.tx.contract == CONFIG_CONTRACT and c.tx.function == CONFIG_FUNCTION
    ]
    height = block.header.height
    if block.config is None:
        if changes:
            raise BlockVerificationError(
                "a configuration change outside a configuration block",
                height=height,
                reason="config",
            )
        return
    if len(checked) != 1 or len(changes) != 1:
        raise BlockVerificationError(
            "a configuration block carries exactly one change", height=height, reason="config"
        )
    try:
        new = check_config_update(view, tuple(changes[0].tx.args), now_ms=block.header.timestamp_ms)
    except TransactionRejectedError as exc:
        raise BlockVerificationError(str(exc), height=height, reason="config") from exc
    if new != block.config:
        raise BlockVerificationError(
            "the block's configuration is not its change's", height=height, reason="config"
        )
