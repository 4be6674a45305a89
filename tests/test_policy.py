"""The policy language: JSON vectors, exactness, bounds, and fuzzing of the parser."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kyodo.policy import (
    Identity,
    PolicyError,
    PolicySyntaxError,
    evaluate,
    parse_policy,
)

VECTORS = json.loads((Path(__file__).parent / "vectors" / "policy.json").read_text())


@pytest.mark.parametrize("case", VECTORS["evaluate"], ids=lambda c: c["policy"][:60])
def test_evaluation_vectors(case: dict[str, Any]) -> None:
    policy = parse_policy(case["policy"])
    signers = [Identity(org, role, f"s{i}") for i, (org, role) in enumerate(case["signers"])]
    decision = evaluate(policy, signers)
    assert decision.allowed is case["allowed"], decision.reason
    assert decision.reason


@pytest.mark.parametrize("case", VECTORS["reject"], ids=lambda c: c["policy"][:40] or "empty")
def test_rejection_vectors(case: dict[str, Any]) -> None:
    with pytest.raises(PolicySyntaxError) as info:
        parse_policy(case["policy"])
    assert case["error"] in str(info.value)


def test_a_policy_renders_to_text_that_parses_to_the_same_policy() -> None:
    for case in VECTORS["evaluate"]:
        policy = parse_policy(case["policy"])
        assert parse_policy(str(policy)) == policy


def test_a_denial_names_what_is_missing() -> None:
    policy = parse_policy("OutOf(2, 'org1.admin', 'org2.admin', 'org3.admin')")
    decision = evaluate(policy, [Identity("org1", "admin", "alice")])
    assert not decision.allowed
    assert "needs 2 of 3" in decision.reason and "'org2.admin', 'org3.admin'" in decision.reason


def test_evaluation_is_bounded() -> None:
    with pytest.raises(PolicyError, match="at most 64 signers"):
        evaluate(parse_policy("'org1.admin'"), [Identity("org1", "admin")] * 65)
    wide = "OutOf(8, " + ", ".join(["'org1.member'"] * 16) + ")"
    signers = [Identity("org1", "client", str(i)) for i in range(7)]  # one short: search all
    with pytest.raises(PolicyError, match="too complex"):
        evaluate(parse_policy(wide), signers)


@given(st.text(max_size=200))
def test_the_parser_never_fails_with_anything_but_a_syntax_error(text: str) -> None:
    with contextlib.suppress(PolicySyntaxError):
        parse_policy(text)


POLICY_PIECES = st.sampled_from(
    ["AND(", "OR(", "OutOf(", "1", "2", ", ", ")", "'org1.admin'", "'*.member'", "'x", "'a.b'"]
)


@given(st.lists(POLICY_PIECES, max_size=30))
def test_near_policies_parse_or_fail_cleanly(pieces: list[str]) -> None:
    text = "".join(pieces)
    try:
        policy = parse_policy(text)
    except PolicySyntaxError:
        return
    evaluate(policy, [Identity("org1", "admin", "a"), Identity("org2", "client", "b")])
