"""Access control lists: which policy guards each resource a caller can touch.

An ACL maps a *resource* to a policy of :mod:`kyodo.policy`. The resources:

============================  ==========================================================
``submit``                    ordering any transaction
``submit/<contract>``         ordering a transaction of one contract
``submit/<contract>/<fn>``    ... of one function of it
``evaluate``, ``evaluate/..`` running a query, with the same refinements
``blocks.read``               reading blocks
``transactions.read``         reading committed transactions and their status
``state.read``                proofs of any contract's raw state (bypasses the contract's
                              own function rules: auditors and admins by default)
``config.read``               reading the network configuration
``node.status``               reading a node's status
``events.subscribe``          subscribing to block, transaction and contract events
``audit.read``                reading the audit log (querying, exporting)
``audit.anchor``              anchoring a node's audit-log root on the ledger now
============================  ==========================================================

Administration is ordering transactions to the built-in contracts, so it is
guarded by the same resources: ``submit/_config`` (configuration changes),
``submit/_lifecycle`` (contract deploy, upgrade, terminate), ``submit/_recovery``
(key-loss recovery), and ``submit/_audit`` (nodes anchoring their audit-log roots:
nodes only). Their own rules (the admin policy, the lifecycle quorum,
the officers of a recovery policy) still apply on top: an ACL can only narrow.

The most specific rule wins: ``submit/cash/transfer``, else ``submit/cash``,
else ``submit``. The network configuration carries the rules that differ from
:data:`DEFAULT_ACLS`, so every node of the network applies the same ones, and a
change is a configuration change under the admin policy. A refusal names the
rule, its policy and why the caller does not satisfy it.

Why written here: the table is twenty lines over the policy evaluator; no
library has our resource names.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from kyodo.policy._policy import Identity, Policy, evaluate, parse_policy
from kyodo.policy.errors import PolicyError

__all__ = ["DEFAULT_ACLS", "RESOURCES", "AccessRefused", "AclTable", "check_resource_name"]

RESOURCES = (
    "submit",
    "evaluate",
    "blocks.read",
    "transactions.read",
    "state.read",
    "config.read",
    "node.status",
    "events.subscribe",
    "audit.read",
    "audit.anchor",
)
"""The resources an ACL names (``submit`` and ``evaluate`` refine per contract/function)."""

DEFAULT_ACLS: Mapping[str, str] = {
    "submit": "'*.member'",
    "evaluate": "'*.member'",
    "blocks.read": "'*.member'",
    "transactions.read": "'*.member'",
    "state.read": "OR('*.auditor', '*.admin')",
    "config.read": "'*.member'",
    "node.status": "'*.member'",
    "events.subscribe": "'*.member'",
    "audit.read": "OR('*.auditor', '*.admin')",
    "submit/_config": "'*.admin'",
    "submit/_lifecycle": "'*.admin'",
    "submit/_audit": "'*.node'",
    "audit.anchor": "'*.admin'",
}
"""The rules in force where the configuration names none."""

_NAME = r"[A-Za-z_][A-Za-z0-9_]{0,63}"
_REFINED = re.compile(rf"(submit|evaluate)/{_NAME}(/{_NAME})?")


class AccessRefused(PolicyError):
    """An ACL refused a caller; the message names the rule, its policy and why."""

    def __init__(self, message: str, *, rule: str) -> None:
        super().__init__(message)
        self.rule = rule


def check_resource_name(resource: str) -> None:
    """Raise PolicyError unless ``resource`` is one an ACL can name."""
    if resource in RESOURCES or _REFINED.fullmatch(resource):
        return
    raise PolicyError(
        f"unknown ACL resource {resource!r}: one of {', '.join(RESOURCES)}, or "
        "submit/<contract>[/<function>], evaluate/<contract>[/<function>]"
    )


@dataclass(frozen=True, slots=True)
class _Rule:
    text: str
    policy: Policy


class AclTable:
    """The rules in force: the defaults overridden by ``overrides`` (resource -> policy)."""

    def __init__(self, overrides: Iterable[tuple[str, str]] = ()) -> None:
        texts = dict(DEFAULT_ACLS)
        for resource, text in overrides:
            check_resource_name(resource)
            texts[resource] = text
        self._rules: dict[str, _Rule] = {}
        for resource, text in texts.items():
            try:
                self._rules[resource] = _Rule(text, parse_policy(text))
            except PolicyError as exc:
                raise PolicyError(f"ACL rule {resource!r}: {exc}") from exc

    def rule_for(self, resource: str) -> tuple[str, str]:
        """(the rule's resource, its policy text) that decides ``resource``."""
        name = self._most_specific(resource)
        return name, self._rules[name].text

    def check(self, resource: str, who: Identity) -> None:
        """Raise AccessRefused unless ``who`` satisfies the rule deciding ``resource``."""
        name = self._most_specific(resource)
        rule = self._rules[name]
        decision = evaluate(rule.policy, (who,))
        if not decision.allowed:
            raise AccessRefused(
                f"{resource} refused to {who.org}.{who.role}/{who.name} by ACL rule "
                f"{name!r} = {rule.text}: {decision.reason}",
                rule=name,
            )

    def _most_specific(self, resource: str) -> str:
        candidate = resource
        while candidate not in self._rules:
            if "/" not in candidate:
                raise PolicyError(f"no ACL rule decides {resource!r}")
            candidate = candidate.rsplit("/", 1)[0]
        return candidate
