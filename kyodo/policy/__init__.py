"""Policy services: one language for access and signature policies, one evaluator."""

from kyodo.policy._policy import (
    MAX_POLICY_CHARS,
    ROLES,
    Decision,
    Identity,
    OutOf,
    Policy,
    Principal,
    evaluate,
    parse_policy,
)
from kyodo.policy.errors import PolicyError, PolicySyntaxError

__all__ = [
    "MAX_POLICY_CHARS",
    "ROLES",
    "Decision",
    "Identity",
    "OutOf",
    "Policy",
    "PolicyError",
    "PolicySyntaxError",
    "Principal",
    "evaluate",
    "parse_policy",
]
