"""Tests of kyodo.contracts.Executor with the built-in contracts and small test contracts."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from kyodo.codec import encode
from kyodo.contracts import (
    BUILTIN_CONTRACTS,
    BlockExecution,
    Context,
    Contract,
    ContractError,
    Executor,
    function,
)
from kyodo.crypto import sha256
from kyodo.identity import Member, Role
from kyodo.ledger import (
    CheckedTx,
    Event,
    HistoryEntry,
    Transaction,
    TxEnvelope,
    TxId,
    TxStatus,
    encode_state_key,
)
from tests._factories import CHAIN_ID, NOW, MemoryState

HEIGHT = 7
BLOCK_TIME = 1_750_000_000_000
ASSET = "asset_transfer"


class Probe(Contract):
    """A test contract exercising the context: writes, deletes, ranges, failures."""

    name = "probe"

    @function
    def put(self, ctx: Context, key: str, value: int) -> None:
        ctx.put(key, value)

    @function
    def put_many(self, ctx: Context, items: dict) -> int:
        for key, value in items.items():
            ctx.put(key, value)
        return len(items)

    @function
    def delete(self, ctx: Context, key: str) -> None:
        ctx.delete(key)

    @function(read_only=True)
    def get(self, ctx: Context, key: str) -> Any:
        return ctx.get(key)

    @function(read_only=True)
    def range(self, ctx: Context, start: str, end: str) -> list:
        return [[k, v] for k, v in ctx.range(start, end or None)]

    @function(read_only=True)
    def prefix(self, ctx: Context, prefix: str) -> list:
        return [[k, v] for k, v in ctx.prefix(prefix)]

    @function
    def put_then_range(self, ctx: Context, key: str, start: str) -> list:
        ctx.put(key, 100)
        ctx.delete("c")
        return [k for k, _ in ctx.range(start)]

    @function
    def write_then_crash(self, ctx: Context, key: str) -> None:
        ctx.put(key, 1)
        ctx.emit("Crashing")
        _ = 1 // 0

    @function
    def write_then_refuse(self, ctx: Context, key: str) -> None:
        ctx.put(key, 1)
        raise ContractError(f"refused after writing {key}")

    @function
    def mutate_then_refuse(self, ctx: Context, key: str) -> None:
        value = ctx.get(key)
        value["n"] = 999
        raise ContractError("refused after mutating a value it read")

    @function
    def put_record(self, ctx: Context, key: str, value: dict) -> None:
        ctx.put(key, value)

    @function
    def return_float(self, ctx: Context) -> float:
        return 1.5

    @function
    def store_float(self, ctx: Context) -> None:
        ctx.put("f", 0.5)

    @function
    def context_info(self, ctx: Context) -> dict:
        return {
            "block_time": ctx.block_time,
            "height": ctx.height,
            "tx_id": ctx.tx_id,
            "caller": ctx.caller.identity,
            "role": ctx.caller.role,
        }

    @function
    def types(self, ctx: Context, i: int, s: str, b: bytes, f: bool, li: list, d: dict) -> list:
        return [i, s, b, f, li, d]


CONTRACTS = {**BUILTIN_CONTRACTS, Probe.name: Probe}


def _member(org: str, role: Role, name: str) -> Member:
    digest = sha256(f"{org}/{role}/{name}".encode())
    return Member(
        org=org,
        role=role,
        name=name,
        fingerprint=digest,
        public_key=digest,
        not_after=NOW + timedelta(days=365),
    )


USER1 = _member("org1", Role.CLIENT, "user1")
USER2 = _member("org2", Role.CLIENT, "user2")
ADMIN = _member("org1", Role.ADMIN, "admin")

_counter = iter(range(1_000_000))


def tx(creator: Member, contract: str, function_name: str, *args: Any) -> CheckedTx:
    transaction = Transaction(
        chain_id=CHAIN_ID,
        contract=contract,
        function=function_name,
        args=tuple(args),
        nonce=next(_counter).to_bytes(16, "big"),
        created_ms=BLOCK_TIME,
        creator=f"{creator.org}/{creator.name}".encode(),
    )
    payload = encode(transaction)
    return CheckedTx(
        tx_id=TxId(sha256(payload)),
        envelope=TxEnvelope(payload=payload, signature=b""),
        tx=transaction,
        creator=creator,
    )


def run(state: MemoryState, *txs: CheckedTx, executor: Executor | None = None) -> BlockExecution:
    return (executor or Executor(CONTRACTS)).execute_block(
        state, list(txs), height=HEIGHT, block_time_ms=BLOCK_TIME
    )


def account_key(account: str) -> bytes:
    return encode_state_key(ASSET, f"account/{account}")


def tx_writes(execution: BlockExecution, checked: CheckedTx) -> list[Any]:
    return [h for h in execution.history if h[2] == checked.tx_id]


# -- asset_transfer ------------------------------------------------------------------------


def test_builtin_contracts() -> None:
    executor = Executor(BUILTIN_CONTRACTS)
    assert executor.contract_names() == ["_audit", "_config", "_lifecycle", "_recovery", ASSET]
    assert set(BUILTIN_CONTRACTS["_config"].functions()) == {"update", "current"}
    functions = BUILTIN_CONTRACTS[ASSET].functions()
    assert set(functions) == {"create_account", "issue", "transfer", "balance", "account"}
    assert functions["balance"].read_only
    assert not functions["transfer"].read_only
    assert functions["transfer"].params == (("source", str), ("target", str), ("amount", int))


def test_create_issue_transfer_balance() -> None:
    state = MemoryState()
    create_a = tx(USER1, ASSET, "create_account", "A")
    create_b = tx(USER2, ASSET, "create_account", "B")
    issue = tx(ADMIN, ASSET, "issue", "A", 100)
    transfer = tx(USER1, ASSET, "transfer", "A", "B", 30)
    balance_a = tx(USER2, ASSET, "balance", "A")
    balance_b = tx(USER1, ASSET, "balance", "B")
    execution = run(state, create_a, create_b, issue, transfer, balance_a, balance_b)

    assert [r.status for r in execution.results] == [TxStatus.OK] * 6
    assert [r.tx_id for r in execution.results] == [
        t.tx_id for t in (create_a, create_b, issue, transfer, balance_a, balance_b)
    ]
    assert all(r.message == "" for r in execution.results)
    first, _, issued, moved, bal_a, bal_b = execution.results
    assert first.result == {"account": "A", "owner": "org1/user1", "balance": 0}
    assert first.events == (
        Event(
            contract=ASSET, name="AccountCreated", payload={"account": "A", "owner": "org1/user1"}
        ),
    )
    assert issued.result == {"account": "A", "owner": "org1/user1", "balance": 100}
    assert issued.events == (
        Event(contract=ASSET, name="Issued", payload={"account": "A", "amount": 100}),
    )
    assert moved.result == {"source": "A", "target": "B", "amount": 30, "source_balance": 70}
    assert moved.events == (
        Event(
            contract=ASSET, name="Transferred", payload={"source": "A", "target": "B", "amount": 30}
        ),
    )
    assert (bal_a.result, bal_b.result) == (70, 30)
    assert bal_a.events == ()

    assert execution.writes == {
        account_key("A"): (3, transfer.tx_id, {"owner": "org1/user1", "balance": 70}),
        account_key("B"): (3, transfer.tx_id, {"owner": "org2/user2", "balance": 30}),
    }
    # every write, in block order (within a transaction, sorted by state key)
    assert execution.history == [
        (account_key("A"), 0, create_a.tx_id, {"owner": "org1/user1", "balance": 0}),
        (account_key("B"), 1, create_b.tx_id, {"owner": "org2/user2", "balance": 0}),
        (account_key("A"), 2, issue.tx_id, {"owner": "org1/user1", "balance": 100}),
        (account_key("A"), 3, transfer.tx_id, {"owner": "org1/user1", "balance": 70}),
        (account_key("B"), 3, transfer.tx_id, {"owner": "org2/user2", "balance": 30}),
    ]


def test_committed_state_is_read_and_not_modified() -> None:
    state = MemoryState(
        {
            (ASSET, "account/A"): {"owner": "org1/user1", "balance": 50},
            (ASSET, "account/B"): {"owner": "org2/user2", "balance": 5},
        }
    )
    before = {k: v.value for k, v in state.entries.items()}
    execution = run(state, tx(USER1, ASSET, "transfer", "A", "B", 50))
    assert execution.results[0].status == TxStatus.OK
    assert execution.writes[account_key("A")][2] == {"owner": "org1/user1", "balance": 0}
    assert execution.writes[account_key("B")][2] == {"owner": "org2/user2", "balance": 55}
    assert {k: v.value for k, v in state.entries.items()} == before


def test_evaluate_runs_a_query_without_keeping_writes() -> None:
    state = MemoryState({(ASSET, "account/A"): {"owner": "org1/user1", "balance": 9}})
    executor = Executor(CONTRACTS)
    common = {"height": HEIGHT, "block_time_ms": BLOCK_TIME}
    assert executor.evaluate(state, tx(USER2, ASSET, "balance", "A"), **common) == 9
    assert executor.evaluate(state, tx(USER1, "probe", "put", "k", 1), **common) is None
    assert state.get_state("probe", "k") is None
    with pytest.raises(ContractError, match="does not exist"):
        executor.evaluate(state, tx(USER2, ASSET, "balance", "Z"), **common)


INSUFFICIENT = "insufficient funds: account A holds 10, transfer needs 11"


def test_insufficient_funds_fails_the_transaction_without_writes() -> None:
    state = MemoryState(
        {
            (ASSET, "account/A"): {"owner": "org1/user1", "balance": 10},
            (ASSET, "account/B"): {"owner": "org2/user2", "balance": 0},
        }
    )
    too_much = tx(USER1, ASSET, "transfer", "A", "B", 11)
    exact = tx(USER1, ASSET, "transfer", "A", "B", 10)
    execution = run(state, too_much, exact)
    failed, ok = execution.results
    assert failed.status == TxStatus.CONTRACT_ERROR
    assert failed.message == INSUFFICIENT
    assert failed.result is None
    assert failed.events == ()
    assert failed.tx_id == too_much.tx_id
    assert tx_writes(execution, too_much) == []
    assert ok.status == TxStatus.OK
    assert execution.writes[account_key("A")] == (
        1,
        exact.tx_id,
        {"owner": "org1/user1", "balance": 0},
    )


@pytest.mark.parametrize(
    ("creator", "function_name", "args", "message"),
    [
        (USER1, "issue", ("A", 5), "only an admin may issue; caller's role is client"),
        (_member("org1", Role.NODE, "n"), "issue", ("A", 5), "caller's role is node"),
        (ADMIN, "issue", ("A", 0), "amount must be positive"),
        (ADMIN, "issue", ("Z", 5), "account Z does not exist"),
        (USER2, "transfer", ("A", "B", 1), "account A is not owned by org2/user2"),
        (
            _member("org2", Role.CLIENT, "user1"),
            "transfer",
            ("A", "B", 1),
            "not owned by org2/user1",
        ),
        (USER1, "transfer", ("A", "A", 1), "source and target are the same account"),
        (USER1, "transfer", ("A", "B", -1), "amount must be positive"),
        (USER1, "transfer", ("A", "Z", 1), "account Z does not exist"),
        (USER1, "create_account", ("A",), "account A already exists"),
        (USER1, "create_account", ("",), "1 to 128 characters"),
        (USER1, "create_account", ("x" * 129,), "1 to 128 characters"),
    ],
)
def test_asset_transfer_refusals(
    creator: Member, function_name: str, args: tuple[Any, ...], message: str
) -> None:
    state = MemoryState(
        {
            (ASSET, "account/A"): {"owner": "org1/user1", "balance": 10},
            (ASSET, "account/B"): {"owner": "org2/user2", "balance": 0},
        }
    )
    checked = tx(creator, ASSET, function_name, *args)
    execution = run(state, checked)
    (result,) = execution.results
    assert result.status == TxStatus.CONTRACT_ERROR
    assert message in result.message
    assert execution.writes == {}
    assert execution.history == []


def test_later_transaction_sees_earlier_writes() -> None:
    state = MemoryState()
    txs = [
        tx(USER1, ASSET, "create_account", "A"),
        tx(ADMIN, ASSET, "issue", "A", 5),
        tx(ADMIN, ASSET, "issue", "A", 6),
        tx(USER1, ASSET, "create_account", "A"),  # already exists within the block
        tx(USER2, ASSET, "balance", "A"),
        tx(USER1, "probe", "put", "k", 1),
        tx(USER1, "probe", "delete", "k"),
        tx(USER1, "probe", "get", "k"),
    ]
    execution = run(state, *txs)
    statuses = [r.status for r in execution.results]
    assert statuses == [TxStatus.OK] * 3 + [TxStatus.CONTRACT_ERROR] + [TxStatus.OK] * 4
    assert execution.results[3].message == "account A already exists"
    assert execution.results[4].result == 11
    assert execution.results[7].result is None
    assert execution.writes[encode_state_key("probe", "k")] == (6, txs[6].tx_id, None)
    assert [h[3] for h in execution.history if h[0] == encode_state_key("probe", "k")] == [1, None]


@pytest.mark.parametrize(
    ("contract", "function_name", "message"),
    [
        ("no_such_contract", "issue", "no contract named 'no_such_contract'"),
        (ASSET, "no_such_function", "has no function 'no_such_function'"),
        (ASSET, "_load", "has no function '_load'"),
        (ASSET, "functions", "has no function 'functions'"),
        ("", "", "no contract named ''"),
    ],
)
def test_unknown_contract_or_function(contract: str, function_name: str, message: str) -> None:
    execution = run(MemoryState(), tx(USER1, contract, function_name, "A"))
    (result,) = execution.results
    assert result.status == TxStatus.UNKNOWN_FUNCTION
    assert message in result.message
    assert result.result is None
    assert execution.writes == {}


@pytest.mark.parametrize(
    ("function_name", "args", "message"),
    [
        ("issue", ("A", "5"), "argument 'amount' of issue must be int, got str"),
        ("issue", ("A", True), "argument 'amount' of issue must be int, got bool"),
        ("issue", (b"A", 5), "argument 'account' of issue must be str, got bytes"),
        ("issue", ("A", None), "argument 'amount' of issue must be int, got NoneType"),
        ("issue", ("A",), "issue takes 2 arguments (account: str, amount: int), got 1"),
        ("issue", ("A", 5, 6), "issue takes 2 arguments (account: str, amount: int), got 3"),
        ("balance", (), "balance takes 1 arguments (account: str), got 0"),
        ("transfer", ("A", "B", [1]), "argument 'amount' of transfer must be int, got list"),
    ],
)
def test_wrong_arguments(function_name: str, args: tuple[Any, ...], message: str) -> None:
    state = MemoryState({(ASSET, "account/A"): {"owner": "org1/admin", "balance": 1}})
    execution = run(state, tx(ADMIN, ASSET, function_name, *args))
    (result,) = execution.results
    assert result.status == TxStatus.CONTRACT_ERROR
    assert result.message == message
    assert execution.writes == {}


def test_every_parameter_type_is_checked_strictly() -> None:
    good = (1, "s", b"b", True, [1], {"k": 1})
    execution = run(MemoryState(), tx(USER1, "probe", "types", *good))
    assert execution.results[0].status == TxStatus.OK
    assert execution.results[0].result == list(good)
    swaps = {0: False, 1: b"s", 2: "b", 3: 1, 4: {"k": 1}, 5: [1]}
    names = ["i", "s", "b", "f", "li", "d"]
    for index, wrong in swaps.items():
        args = list(good)
        args[index] = wrong
        (result,) = run(MemoryState(), tx(USER1, "probe", "types", *args)).results
        assert result.status == TxStatus.CONTRACT_ERROR
        assert f"argument {names[index]!r} of types" in result.message


def test_a_crashing_contract_fails_only_its_transaction() -> None:
    state = MemoryState()
    before = tx(USER1, "probe", "put", "a", 1)
    crash = tx(USER1, "probe", "write_then_crash", "b")
    refuse = tx(USER1, "probe", "write_then_refuse", "c")
    after = tx(USER1, "probe", "put", "d", 2)
    execution = run(state, before, crash, refuse, after)
    statuses = [r.status for r in execution.results]
    assert statuses == [TxStatus.OK, TxStatus.CONTRACT_ERROR, TxStatus.CONTRACT_ERROR, TxStatus.OK]
    assert (
        execution.results[1].message
        == "contract raised ZeroDivisionError: integer division or modulo by zero"
    )
    assert execution.results[1].events == ()
    assert execution.results[2].message == "refused after writing c"
    assert sorted(execution.writes) == [
        encode_state_key("probe", "a"),
        encode_state_key("probe", "d"),
    ]
    assert tx_writes(execution, crash) == []
    assert tx_writes(execution, refuse) == []


def test_unencodable_values_fail_the_transaction() -> None:
    execution = run(
        MemoryState(),
        tx(USER1, "probe", "return_float"),
        tx(USER1, "probe", "store_float"),
        tx(USER1, "probe", "put", "ok", 1),
    )
    returned, stored, ok = execution.results
    assert returned.status == TxStatus.CONTRACT_ERROR
    assert "return_float returned a value that cannot be encoded" in returned.message
    assert stored.status == TxStatus.CONTRACT_ERROR
    assert "not storable" in stored.message
    assert ok.status == TxStatus.OK
    assert list(execution.writes) == [encode_state_key("probe", "ok")]


def test_context_exposes_block_values_not_the_clock() -> None:
    checked = tx(ADMIN, "probe", "context_info")
    (result,) = run(MemoryState(), checked).results
    assert result.result == {
        "block_time": BLOCK_TIME,
        "height": HEIGHT,
        "tx_id": checked.tx_id.hex(),
        "caller": "org1/admin",
        "role": "admin",
    }


def test_same_block_executed_twice_gives_identical_output() -> None:
    def state() -> MemoryState:
        return MemoryState(
            {
                (ASSET, "account/A"): {"owner": "org1/user1", "balance": 10},
                ("probe", "x"): 1,
                ("probe", "y"): 2,
            }
        )

    block = [
        tx(USER1, ASSET, "create_account", "B"),
        tx(ADMIN, ASSET, "issue", "A", 7),
        tx(USER1, ASSET, "transfer", "A", "B", 17),
        tx(USER1, ASSET, "transfer", "A", "B", 1),
        tx(USER1, "probe", "put_many", {"z": 1, "a": 2, "m": 3}),
        tx(USER1, "probe", "write_then_crash", "q"),
        tx(USER1, "probe", "range", "", ""),
        tx(USER1, "nope", "nope"),
    ]
    first = run(state(), *block)
    second = run(state(), *block, executor=Executor(CONTRACTS))
    again = run(state(), *block, executor=Executor(CONTRACTS))
    assert first == second == again
    assert [encode(r) for r in first.results] == [encode(r) for r in second.results]
    assert list(first.writes) == list(second.writes)
    assert first.history == second.history


# -- range and prefix ----------------------------------------------------------------------


def _probe_state() -> MemoryState:
    return MemoryState(
        {
            ("probe", "a"): 1,
            ("probe", "b"): 2,
            ("probe", "c"): 3,
            ("probe", "b/1"): 21,
            ("probe", "b/2"): 22,
            ("probe", "\u00e9"): 5,
            ("other", "b/0"): 0,
        }
    )


def test_range_over_committed_state() -> None:
    execution = run(
        _probe_state(),
        tx(USER1, "probe", "range", "", ""),
        tx(USER1, "probe", "range", "b", "c"),
        tx(USER1, "probe", "range", "b/", "b/2"),
        tx(USER1, "probe", "range", "d", ""),
        tx(USER1, "probe", "prefix", "b/"),
        tx(USER1, "probe", "prefix", "b"),
        tx(USER1, "probe", "prefix", ""),
    )
    results = [r.result for r in execution.results]
    everything = [["a", 1], ["b", 2], ["b/1", 21], ["b/2", 22], ["c", 3], ["\u00e9", 5]]
    assert results == [
        everything,
        [["b", 2], ["b/1", 21], ["b/2", 22]],
        [["b/1", 21]],
        [["\u00e9", 5]],
        [["b/1", 21], ["b/2", 22]],
        [["b", 2], ["b/1", 21], ["b/2", 22]],
        everything,
    ]


def test_range_and_prefix_see_the_block_and_transaction_overlays() -> None:
    execution = run(
        _probe_state(),
        tx(USER1, "probe", "put", "b/3", 23),  # block overlay: added
        tx(USER1, "probe", "delete", "b/1"),  # block overlay: deleted
        tx(USER1, "probe", "put", "a", 10),  # block overlay: changed
        tx(USER1, "probe", "write_then_refuse", "b/4"),  # dropped
        tx(USER1, "probe", "range", "", ""),
        tx(USER1, "probe", "prefix", "b/"),
        tx(USER1, "probe", "put_then_range", "ab", ""),  # transaction overlay
        tx(USER1, "probe", "range", "", ""),
    )
    results = [r.result for r in execution.results]
    assert results[4] == [["a", 10], ["b", 2], ["b/2", 22], ["b/3", 23], ["c", 3], ["\u00e9", 5]]
    assert results[5] == [["b/2", 22], ["b/3", 23]]
    assert results[6] == ["a", "ab", "b", "b/2", "b/3", "\u00e9"]
    assert results[7] == [
        ["a", 10],
        ["ab", 100],
        ["b", 2],
        ["b/2", 22],
        ["b/3", 23],
        ["\u00e9", 5],
    ]


def test_context_history_is_committed_only() -> None:
    state = _probe_state()
    state.history[("probe", "a")] = [HistoryEntry(height=1, tx_index=0, tx_id=b"t", value=1)]

    class History(Contract):
        name = "probe"

        @function
        def history(self, ctx: Context, key: str) -> list:
            ctx.put(key, 2)
            return [[e.height, e.value] for e in ctx.history(key)]

    execution = Executor({"probe": History}).execute_block(
        state, [tx(USER1, "probe", "history", "a")], height=HEIGHT, block_time_ms=BLOCK_TIME
    )
    assert execution.results[0].result == [[1, 1]]


@pytest.mark.parametrize("key", ["", "a\x00b", "x" * 513])
def test_invalid_keys_fail_the_transaction(key: str) -> None:
    (result,) = run(MemoryState(), tx(USER1, "probe", "put", key, 1)).results
    assert result.status == TxStatus.CONTRACT_ERROR
    assert "invalid key" in result.message


# -- isolation of failed transactions ----------------------------------------------------


def test_failed_transaction_cannot_alter_an_earlier_write_in_place() -> None:
    writer = tx(USER1, "probe", "put_record", "k", {"n": 1})
    mutator = tx(USER1, "probe", "mutate_then_refuse", "k")
    execution = run(MemoryState(), writer, mutator)
    assert execution.results[1].status == TxStatus.CONTRACT_ERROR
    assert execution.writes[encode_state_key("probe", "k")] == (0, writer.tx_id, {"n": 1})
    assert execution.history == [(encode_state_key("probe", "k"), 0, writer.tx_id, {"n": 1})]


@pytest.mark.parametrize(
    ("prefix", "inside", "outside"),
    [
        ("acct/", "acct/zzz", "acct0"),
        ("a\ud7ff", "a\ud7ff\U0010ffff", "a\ue000"),
        ("a\U0010ffff", "a\U0010ffff\U0010ffff", "b"),
        ("", "anything", None),
    ],
)
def test_prefix_end_bounds_exactly_the_strings_with_the_prefix(prefix, inside, outside):
    from kyodo.contracts._context import prefix_end

    end = prefix_end(prefix)
    assert end is None or (prefix <= inside < end)
    if outside is not None:
        assert end is not None and outside >= end
    assert end is None or end.encode("utf-8")  # never a lone surrogate


def test_canonical_turns_tuples_into_lists_so_range_results_can_be_returned():
    from kyodo.contracts._context import canonical

    assert canonical([("a", 1), ("b", (2, 3))]) == [["a", 1], ["b", [2, 3]]]
    assert canonical({"k": ("x",)}) == {"k": ["x"]}


def test_a_contract_cannot_invoke_a_built_in_contract() -> None:
    from kyodo.contracts import Contract, function

    class Sneaky(Contract):
        name = "sneaky"

        @function
        def forge(self, ctx):  # type: ignore[no-untyped-def]
            return ctx.invoke("_config", "update", b"x", [])

    contracts = {**BUILTIN_CONTRACTS, "sneaky": Sneaky}
    execution = Executor(contracts).execute_block(
        MemoryState(), [tx(USER1, "sneaky", "forge")], height=1, block_time_ms=0
    )
    (result,) = execution.results
    assert result.status == TxStatus.CONTRACT_ERROR
    assert "cannot be invoked by a contract" in result.message
    assert execution.writes == {}
