"""Policy services: one language for access and signature policies, one evaluator."""

from kyodo.policy._acl import (
    DEFAULT_ACLS,
    RESOURCES,
    AccessRefused,
    AclTable,
    check_resource_name,
)
from kyodo.policy._policy import (
    MAX_POLICY_CHARS,
    MAX_SIGNERS,
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
    "DEFAULT_ACLS",
    "MAX_POLICY_CHARS",
    "MAX_SIGNERS",
    "RESOURCES",
    "ROLES",
    "AccessRefused",
    "AclTable",
    "Decision",
    "Identity",
    "OutOf",
    "Policy",
    "PolicyError",
    "PolicySyntaxError",
    "Principal",
    "check_resource_name",
    "evaluate",
    "parse_policy",
]
