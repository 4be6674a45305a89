"""Signature and access policies: one small language, one evaluator.

A policy says which sets of identities satisfy it. Principals are
``'org.role'``: ``org`` is an organization id or ``*`` (any organization);
``role`` is ``client``, ``admin``, ``node``, ``auditor``, ``member`` (any role)
or ``*``. Policies combine principals:

    'org1.admin'                                   one principal
    AND('org1.admin', 'org2.admin')                all of them
    OR('org1.client', 'org2.client')               any of them
    OutOf(2, 'org1.admin', 'org2.admin', 'org3.admin')   at least k of them

and nest (``AND('org1.admin', OR('org2.admin', 'org3.admin'))``). The same
language serves access control (is this one caller allowed?) and signature
policies (do these approvals suffice?). As in Fabric, an identity counts for
at most one principal of a policy: ``AND('org1.admin', 'org1.admin')`` needs
two different admins of org1.

Why written here: Fabric's ``cauthdsl`` and CEL-style engines are Go or pull in
a general expression language; this grammar has three operators, and an
evaluator we can read in one sitting is what a security review wants. It is a
pure function with JSON test vectors (``tests/vectors/policy.json``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import combinations

from kyodo.policy.errors import PolicyError, PolicySyntaxError

__all__ = [
    "MAX_POLICY_CHARS",
    "MAX_SIGNERS",
    "ROLES",
    "Decision",
    "Identity",
    "OutOf",
    "Policy",
    "Principal",
    "evaluate",
    "parse_policy",
]

ROLES = frozenset({"client", "admin", "node", "auditor", "member", "*"})
MAX_POLICY_CHARS = 4096
MAX_DEPTH = 16
MAX_PRINCIPALS = 256
MAX_SIGNERS = 64
MAX_EVALUATION_STEPS = 200_000


@dataclass(frozen=True, slots=True)
class Identity:
    """Who signed or calls: an organization and the role in its certificate."""

    org: str
    role: str
    name: str = ""

    def __str__(self) -> str:
        return f"{self.org}/{self.name}" if self.name else f"{self.org}.{self.role}"


@dataclass(frozen=True, slots=True)
class Principal:
    """``org.role`` with ``*`` wildcards; role ``member`` matches every role."""

    org: str
    role: str

    def matches(self, who: Identity) -> bool:
        """Whether ``who`` is this principal."""
        org_ok = self.org in ("*", who.org)
        role_ok = self.role in ("*", "member", who.role)
        return org_ok and role_ok

    def __str__(self) -> str:
        return f"'{self.org}.{self.role}'"


@dataclass(frozen=True, slots=True)
class OutOf:
    """At least ``k`` of ``items`` (AND: k = len(items); OR: k = 1)."""

    k: int
    items: tuple[Policy, ...]

    def __str__(self) -> str:
        inner = ", ".join(str(i) for i in self.items)
        if self.k == len(self.items) and len(self.items) > 1:
            return f"AND({inner})"
        if self.k == 1 and len(self.items) > 1:
            return f"OR({inner})"
        return f"OutOf({self.k}, {inner})"


Policy = Principal | OutOf


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of an evaluation, with the reason a person can act on."""

    allowed: bool
    reason: str
    """Which principals matched whom, and what is missing."""


# --------------------------------------------------------------------------- parse


def parse_policy(text: str) -> Policy:
    """Parse ``text``; raise PolicySyntaxError (with the position) if it is not a policy."""
    if not isinstance(text, str):
        raise PolicySyntaxError("a policy is text", position=0)
    if len(text) > MAX_POLICY_CHARS:
        raise PolicySyntaxError(f"a policy is at most {MAX_POLICY_CHARS} characters", position=0)
    parser = _Parser(text)
    policy = parser.policy(depth=0)
    parser.skip_space()
    if parser.pos != len(text):
        raise PolicySyntaxError("unexpected text after the policy", position=parser.pos)
    if parser.principals > MAX_PRINCIPALS:
        raise PolicySyntaxError(f"a policy names at most {MAX_PRINCIPALS} principals", position=0)
    return policy


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.principals = 0

    def fail(self, message: str) -> PolicySyntaxError:
        return PolicySyntaxError(message, position=self.pos)

    def skip_space(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in " \t\r\n":
            self.pos += 1

    def expect(self, char: str) -> None:
        self.skip_space()
        if self.pos >= len(self.text) or self.text[self.pos] != char:
            raise self.fail(f"expected {char!r}")
        self.pos += 1

    def policy(self, depth: int) -> Policy:
        if depth > MAX_DEPTH:
            raise self.fail(f"policies nest at most {MAX_DEPTH} levels")
        self.skip_space()
        if self.pos < len(self.text) and self.text[self.pos] in "'\"":
            return self.principal()
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos].isalpha():
            self.pos += 1
        word = self.text[start : self.pos]
        if word not in ("AND", "OR", "OutOf"):
            self.pos = start
            raise self.fail("expected 'org.role', AND(...), OR(...) or OutOf(k, ...)")
        self.expect("(")
        k = self.number() if word == "OutOf" else None
        if k is not None:
            self.expect(",")
        items = [self.policy(depth + 1)]
        self.skip_space()
        while self.pos < len(self.text) and self.text[self.pos] == ",":
            self.pos += 1
            items.append(self.policy(depth + 1))
            self.skip_space()
        self.expect(")")
        count = len(items)
        if k is None:
            k = count if word == "AND" else 1
        if not 1 <= k <= count:
            raise self.fail(f"OutOf({k}, ...) needs 1 <= k <= {count} (the number of items)")
        return OutOf(k=k, items=tuple(items))

    def number(self) -> int:
        self.skip_space()
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos].isdigit():
            self.pos += 1
        digits = self.text[start : self.pos]
        if not digits or len(digits) > 4:
            self.pos = start
            raise self.fail("expected a small whole number")
        return int(digits)

    def principal(self) -> Principal:
        quote = self.text[self.pos]
        end = self.text.find(quote, self.pos + 1)
        if end < 0:
            raise self.fail("unterminated principal")
        body = self.text[self.pos + 1 : end]
        org, dot, role = body.partition(".")
        if not dot or not org or not role or "." in role:
            raise self.fail(f"principal {body!r} must read 'org.role'")
        if role not in ROLES:
            raise self.fail(f"unknown role {role!r} (one of {', '.join(sorted(ROLES))})")
        if org != "*" and not all(c.isalnum() or c in "-_" for c in org):
            raise self.fail(f"organization {org!r} has characters not allowed in an id")
        self.pos = end + 1
        self.principals += 1
        return Principal(org=org, role=role)


# --------------------------------------------------------------------------- evaluate


def evaluate(policy: Policy, signers: Sequence[Identity]) -> Decision:
    """Whether ``signers`` satisfy ``policy``, each signer counting for one principal.

    Exact (it backtracks where a greedy choice could fail), bounded in work: a
    policy and signer set too large to decide within MAX_EVALUATION_STEPS raises
    PolicyError rather than taking unbounded time.
    """
    if len(signers) > MAX_SIGNERS:
        raise PolicyError(f"at most {MAX_SIGNERS} signers are evaluated at once")
    budget = [MAX_EVALUATION_STEPS]
    for used in _ways(policy, tuple(signers), frozenset(), budget):
        matched = ", ".join(str(signers[i]) for i in sorted(used))
        return Decision(True, f"{policy} is satisfied by {matched or 'nobody'}")
    return Decision(False, _why_not(policy, signers))


def _ways(
    policy: Policy, signers: tuple[Identity, ...], used: frozenset[int], budget: list[int]
) -> Iterator[frozenset[int]]:
    """Every set of signer indices (beyond ``used``) that satisfies ``policy``."""
    budget[0] -= 1
    if budget[0] < 0:
        raise PolicyError("the policy is too complex to evaluate for this many signers")
    if isinstance(policy, Principal):
        for index, who in enumerate(signers):
            if index not in used and policy.matches(who):
                yield used | {index}
        return
    for chosen in combinations(policy.items, policy.k):
        yield from _all_of(chosen, signers, used, budget)


def _all_of(
    items: tuple[Policy, ...],
    signers: tuple[Identity, ...],
    used: frozenset[int],
    budget: list[int],
) -> Iterator[frozenset[int]]:
    if not items:
        yield used
        return
    first, rest = items[0], items[1:]
    for after_first in _ways(first, signers, used, budget):
        yield from _all_of(rest, signers, after_first, budget)


def _why_not(policy: Policy, signers: Sequence[Identity]) -> str:
    who = ", ".join(str(s) for s in signers) or "nobody"
    if isinstance(policy, Principal):
        return f"{policy} is not satisfied: {who} is not {policy}"
    met = [item for item in policy.items if evaluate(item, signers).allowed]
    missing = [str(item) for item in policy.items if item not in met]
    return (
        f"{policy} is not satisfied by {who}: it needs {policy.k} of {len(policy.items)}, "
        f"{len(met)} can be met; not met: {', '.join(missing) or 'none (signers overlap)'}"
    )
