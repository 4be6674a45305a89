"""The contract lifecycle through the executor: approvals, deploy, upgrade, terminate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from typing import Any

from kyodo.codec import encode
from kyodo.contracts import (
    BUILTIN_CONTRACTS,
    BlockExecution,
    ContractPackage,
    Executor,
    SandboxLimits,
    policy_digest,
)
from kyodo.contracts._testing import InMemoryState
from kyodo.identity import Role
from kyodo.ledger import CheckedTx, TxStatus, compute_results_root
from tests.test_executor import BLOCK_TIME, _member, tx

MEMBERS = ("org1", "org2", "org3")
ADMINS = {org: _member(org, Role.ADMIN, "admin") for org in MEMBERS}
USER1 = _member("org1", Role.CLIENT, "user1")
USER2 = _member("org2", Role.CLIENT, "user2")

COUNTER_V1 = textwrap.dedent(
    '''
    """A counter: version 1."""
    from typing import Any

    from kyodo.contract import Context, Contract, ContractError, function


    class Counter(Contract):
        @function
        def init(self, ctx: Context, start: int) -> None:
            ctx.put("count", start)

        @function
        def bump(self, ctx: Context) -> int:
            count = ctx.get("count") + 1
            ctx.put("count", count)
            return count

        @function(read_only=True)
        def read(self, ctx: Context) -> dict[str, Any]:
            return {"count": ctx.get("count"), "version": 1}

        @function(allow=("org1.*",))
        def org1_only(self, ctx: Context) -> str:
            return "hello org1"

        @function
        def spin(self, ctx: Context) -> int:
            n = 0
            while True:
                n += 1
    '''
)

COUNTER_V2 = COUNTER_V1.replace('"version": 1', '"version": 2').replace(
    'count = ctx.get("count") + 1', 'count = ctx.get("count") + 10'
) + textwrap.indent(
    textwrap.dedent(
        """
        @function
        def migrate(self, ctx: Context) -> None:
            ctx.put("migrated_from", ctx.get("count"))
        """
    ),
    "    ",
)


class Chain:
    """A ledger in memory: each ``block`` executes and applies like a node would."""

    def __init__(self, limits: SandboxLimits | None = None) -> None:
        self.state = InMemoryState()
        self.executor = Executor(BUILTIN_CONTRACTS, *(limits,) if limits else ())
        self.height = 0

    def block(self, *txs: CheckedTx) -> BlockExecution:
        self.height += 1
        execution = self.executor.execute_block(
            self.state, list(txs), height=self.height, block_time_ms=BLOCK_TIME, members=MEMBERS
        )
        self.state.apply(self.height, execution)
        return execution

    def ok(self, *txs: CheckedTx) -> list[Any]:
        execution = self.block(*txs)
        failures = [(r.status, r.message) for r in execution.results if r.status != TxStatus.OK]
        assert not failures, failures
        return [r.result for r in execution.results]

    def approve(self, orgs: tuple[str, ...], name: str, seq: int, action: str, h: bytes) -> None:
        self.ok(*(tx(ADMINS[o], "_lifecycle", "approve", name, seq, action, h) for o in orgs))

    def deploy(self, package: ContractPackage) -> dict[str, Any]:
        self.approve(("org1", "org2"), package.name, 1, "deploy", package.package_hash())
        (result,) = self.ok(tx(ADMINS["org1"], "_lifecycle", "commit", encode(package)))
        return result  # type: ignore[no-any-return]


def package(source: str = COUNTER_V1, **fields: Any) -> ContractPackage:
    base: dict[str, Any] = {
        "name": "counter",
        "version": "1.0.0",
        "filename": "counter.py",
        "source": source,
        "init_args": (5,),
    }
    return ContractPackage(**{**base, **fields})


def test_deploy_needs_a_majority_of_organizations_and_says_who_is_missing() -> None:
    chain = Chain()
    pkg = package()
    chain.approve(("org1",), "counter", 1, "deploy", pkg.package_hash())
    (result,) = chain.block(tx(ADMINS["org1"], "_lifecycle", "commit", encode(pkg))).results
    assert result.status == TxStatus.CONTRACT_ERROR
    assert "1 of 2 approvals" in result.message and "missing: org2, org3" in result.message
    chain.approve(("org3",), "counter", 1, "deploy", pkg.package_hash())
    (committed,) = chain.ok(tx(ADMINS["org2"], "_lifecycle", "commit", encode(pkg)))
    assert committed["approved_by"] == ["org1", "org3"]
    assert committed["sequence"] == 1 and committed["status"] == "active"


def test_approvals_of_another_package_or_by_non_admins_do_not_count() -> None:
    chain = Chain()
    pkg, other = package(), package(version="1.0.1")
    chain.approve(("org1",), "counter", 1, "deploy", pkg.package_hash())
    chain.approve(("org2",), "counter", 1, "deploy", other.package_hash())
    (result,) = chain.block(tx(ADMINS["org1"], "_lifecycle", "commit", encode(pkg))).results
    assert "1 of 2" in result.message
    (denied,) = chain.block(
        tx(USER2, "_lifecycle", "approve", "counter", 1, "deploy", pkg.package_hash())
    ).results
    assert denied.status == TxStatus.ACCESS_DENIED
    assert "*.admin" in denied.message and "org2.client" in denied.message
    (wrong_seq,) = chain.block(
        tx(ADMINS["org2"], "_lifecycle", "approve", "counter", 2, "deploy", pkg.package_hash())
    ).results
    assert wrong_seq.status == TxStatus.CONTRACT_ERROR and "approve 1" in wrong_seq.message


def test_a_deployed_contract_is_callable_from_the_next_block_and_init_ran() -> None:
    chain = Chain()
    pkg = package()
    chain.approve(("org1", "org2"), "counter", 1, "deploy", pkg.package_hash())
    commit = tx(ADMINS["org1"], "_lifecycle", "commit", encode(pkg))
    same_block = tx(USER1, "counter", "bump")
    statuses = [r.status for r in chain.block(commit, same_block).results]
    assert statuses == [TxStatus.OK, TxStatus.UNKNOWN_FUNCTION]
    assert chain.ok(tx(USER1, "counter", "bump"), tx(USER2, "counter", "bump")) == [6, 7]


def test_upgrade_keeps_state_runs_migration_once_and_switches_at_a_block() -> None:
    chain = Chain()
    chain.deploy(package())
    chain.ok(tx(USER1, "counter", "bump"))  # 6
    v2 = package(COUNTER_V2, version="2.0.0", migrate="migrate")
    chain.approve(("org2", "org3"), "counter", 2, "upgrade", v2.package_hash())
    commit = tx(ADMINS["org3"], "_lifecycle", "commit", encode(v2))
    # A bump ordered in the same block as the commit runs version 1 (+1) ...
    before, committed = chain.ok(tx(USER1, "counter", "bump"), commit)
    assert before == 7 and committed["action"] == "upgrade"
    # ... and every bump after it runs version 2 (+10), on the same state.
    assert chain.ok(tx(USER1, "counter", "bump")) == [17]
    assert chain.state.entries[("counter", "migrated_from")].value == 7
    assert len(chain.state.history[("counter", "migrated_from")]) == 1
    definition = chain.state.entries[("_lifecycle", "definition/counter")].value
    assert definition["version"] == "2.0.0" and definition["sequence"] == 2


def test_terminate_makes_a_contract_read_only_and_keeps_its_state() -> None:
    chain = Chain()
    pkg = package()
    chain.deploy(pkg)
    chain.approve(("org1", "org3"), "counter", 2, "terminate", pkg.package_hash())
    chain.ok(tx(ADMINS["org2"], "_lifecycle", "terminate", "counter"))
    bump, read = chain.block(tx(USER1, "counter", "bump"), tx(USER1, "counter", "read")).results
    assert bump.status == TxStatus.CONTRACT_TERMINATED and "queries only" in bump.message
    assert read.status == TxStatus.OK and read.result == {"count": 5, "version": 1}
    v2 = package(version="9")
    chain.approve(("org1", "org2"), "counter", 3, "upgrade", v2.package_hash())
    (again,) = chain.block(tx(ADMINS["org1"], "_lifecycle", "commit", encode(v2))).results
    assert "terminated" in again.message


def test_function_access_rules_refuse_other_organizations_naming_the_rule() -> None:
    chain = Chain()
    chain.deploy(package())
    allowed, denied = chain.block(
        tx(USER1, "counter", "org1_only"), tx(USER2, "counter", "org1_only")
    ).results
    assert allowed.status == TxStatus.OK and allowed.result == "hello org1"
    assert denied.status == TxStatus.ACCESS_DENIED
    assert "org1.*" in denied.message and "function rule" in denied.message


def test_package_default_access_applies_to_functions_without_rules() -> None:
    chain = Chain()
    chain.deploy(package(access=("org2.*",)))
    by_org1, by_org2 = chain.block(
        tx(USER1, "counter", "bump"), tx(USER2, "counter", "bump")
    ).results
    assert by_org1.status == TxStatus.ACCESS_DENIED and "package default" in by_org1.message
    assert by_org2.status == TxStatus.OK


def test_a_runaway_transaction_fails_alone_and_the_block_goes_on() -> None:
    chain = Chain(SandboxLimits(max_steps=20_000))
    chain.deploy(package())
    spin, bump = chain.block(tx(USER1, "counter", "spin"), tx(USER1, "counter", "bump")).results
    assert spin.status == TxStatus.RESOURCE_LIMIT and "20000 steps" in spin.message
    assert bump.status == TxStatus.OK and bump.result == 6


def test_code_that_fails_verification_is_refused_at_commit_with_file_and_line() -> None:
    chain = Chain()
    bad = package(COUNTER_V1 + "\nimport os\n", name="bad")
    chain.approve(("org1", "org2"), "bad", 1, "deploy", bad.package_hash())
    (result,) = chain.block(tx(ADMINS["org1"], "_lifecycle", "commit", encode(bad))).results
    assert result.status == TxStatus.CONTRACT_ERROR
    assert "counter.py:" in result.message and "file access" in result.message
    assert ("_lifecycle", "definition/bad") not in chain.state.entries


def test_the_lifecycle_quorum_is_itself_changed_by_approval() -> None:
    chain = Chain()
    chain.approve(("org1", "org2"), "_lifecycle", 1, "policy", policy_digest(3))
    (policy,) = chain.ok(tx(ADMINS["org1"], "_lifecycle", "set_policy", 3))
    assert policy["quorum"] == 3 and policy["previous"] == 2
    pkg = package()
    chain.approve(("org1", "org2"), "counter", 1, "deploy", pkg.package_hash())
    (result,) = chain.block(tx(ADMINS["org1"], "_lifecycle", "commit", encode(pkg))).results
    assert "2 of 3" in result.message


DETERMINISM_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from tests.test_lifecycle import determinism_run
    print(json.dumps(determinism_run()))
    """
)


def determinism_run() -> dict[str, str]:
    """Deploy a contract whose work is dict- and string-heavy, run a block; digest it."""
    source = textwrap.dedent(
        """
        from typing import Any
        from kyodo.contract import Context, Contract, function, sha256_hex


        class Mixer(Contract):
            @function
            def mix(self, ctx: Context, words: list) -> dict[str, Any]:
                counts = {}
                for word in words:
                    counts[word] = counts.get(word, 0) + 1
                index = {sha256_hex(w)[:8]: w for w in counts}
                ctx.put("counts", counts)
                ctx.put("index", index)
                ctx.emit("Mixed", {"first": sorted(index)[0]})
                return {"order": list(counts), "text": str(counts)}
        """
    )
    chain = Chain()
    pkg = package(source, name="mixer", init_args=())
    chain.deploy(pkg)
    words = [f"w{i % 37}-{i % 11}" for i in range(400)]
    execution = chain.block(*(tx(USER1, "mixer", "mix", words[i:]) for i in range(0, 40, 4)))
    assert all(r.status == TxStatus.OK for r in execution.results)
    writes = encode(sorted([k.hex(), v[2]] for k, v in execution.writes.items()))
    return {
        "results_root": compute_results_root(execution.results).hex(),
        "writes": writes.hex()[:64] + str(len(writes)),
    }


def test_the_same_block_gives_the_same_results_under_different_hash_seeds() -> None:
    outputs = set()
    for seed in ("0", "1", "12345", "random"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run(
            [sys.executable, "-c", DETERMINISM_SCRIPT],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        outputs.add(json.dumps(json.loads(done.stdout), sort_keys=True))
    assert len(outputs) == 1, outputs


def test_a_proposer_cuts_the_block_once_its_step_budget_is_spent() -> None:
    chain = Chain(SandboxLimits(max_steps=20_000, max_block_steps=50_000))
    chain.deploy(package())
    txs = [tx(USER1, "counter", "spin") for _ in range(5)] + [tx(USER1, "counter", "bump")]
    cut = chain.executor.execute_block(
        chain.state,
        txs,
        height=chain.height + 1,
        block_time_ms=BLOCK_TIME,
        members=MEMBERS,
        cut_at_block_budget=True,
    )
    assert [r.status for r in cut.results] == [TxStatus.RESOURCE_LIMIT] * 3
    whole = chain.executor.execute_block(
        chain.state, txs, height=chain.height + 1, block_time_ms=BLOCK_TIME, members=MEMBERS
    )
    assert len(whole.results) == 6 and whole.results[-1].status == TxStatus.OK


def test_declared_return_types_are_checked_and_generic_parameters_accepted() -> None:
    source = textwrap.dedent(
        """
        from kyodo.contract import Context, Contract, function


        class Typed(Contract):
            @function
            def wrong(self, ctx: Context) -> int:
                return "seven"

            @function
            def tags(self, ctx: Context, items: list[str]) -> list[str]:
                return sorted(items)

            @function
            def nothing(self, ctx: Context) -> None:
                return 1
        """
    )
    chain = Chain()
    chain.deploy(package(source, name="typed", init_args=()))
    wrong, tags, bad_arg, nothing = chain.block(
        tx(USER1, "typed", "wrong"),
        tx(USER1, "typed", "tags", ["b", "a"]),
        tx(USER1, "typed", "tags", "ab"),
        tx(USER1, "typed", "nothing"),
    ).results
    assert wrong.status == TxStatus.CONTRACT_ERROR
    assert wrong.message == "wrong is declared to return int but returned str"
    assert tags.status == TxStatus.OK and tags.result == ["a", "b"]
    assert bad_arg.status == TxStatus.CONTRACT_ERROR and "must be list" in bad_arg.message
    assert "declared to return None but returned int" in nothing.message


def test_access_rules_take_the_policy_language() -> None:
    source = textwrap.dedent(
        """
        from kyodo.contract import Context, Contract, function


        class Guarded(Contract):
            @function(allow=("OR('org1.client', 'org2.admin')",))
            def f(self, ctx: Context) -> int:
                return 1
        """
    )
    chain = Chain()
    chain.deploy(package(source, name="guarded", init_args=()))
    by_user1, by_user2, by_admin2 = chain.block(
        tx(USER1, "guarded", "f"), tx(USER2, "guarded", "f"), tx(ADMINS["org2"], "guarded", "f")
    ).results
    assert by_user1.status == TxStatus.OK and by_admin2.status == TxStatus.OK
    assert by_user2.status == TxStatus.ACCESS_DENIED
    assert "OR('org1.client', 'org2.admin')" in by_user2.message
    bad = package(source.replace("OR('org1.client'", "OR('org1.boss'"), name="bad_rule")
    chain.approve(("org1", "org2"), "bad_rule", 1, "deploy", bad.package_hash())
    (refused,) = chain.block(tx(ADMINS["org1"], "_lifecycle", "commit", encode(bad))).results
    assert refused.status == TxStatus.CONTRACT_ERROR and "unknown role 'boss'" in refused.message
