"""Regression tests for attacks on the sandbox found by review (each once got through).

Every attack here passes the verifier, or was meant to, and then tried at run time
to escape, to break determinism, or to do unmetered work. Each now ends as a failed
transaction with a deterministic message, through the real executor, and fast
(``timeout`` guards against a regression that would hang).
"""

from __future__ import annotations

import re
import textwrap
from typing import Any

import pytest

from kyodo.codec import encode
from kyodo.contracts import AssetTransfer as _AssetTransfer
from kyodo.contracts import ContractPackage, check_source, metered
from kyodo.contracts._sandbox import Guards, Meter
from kyodo.contracts._testing import Call, LocalLedger, TxFailed
from kyodo.contracts.errors import ResourceLimitExceeded
from kyodo.ledger import TxStatus

HEADER = (
    "from typing import Any\n"
    "from kyodo.contract import Context, Contract, ContractError, function\n"
)


def contract(body: str, params: str = "") -> str:
    return (
        HEADER
        + "\n\nclass C(Contract):\n    @function\n"
        + f"    def f(self, ctx: Context{params}) -> Any:\n"
        + textwrap.indent(textwrap.dedent(body), " " * 8)
        + "\n"
    )


def run(source: str, *args: Any) -> tuple[int, str, Any]:
    assert check_source(source, "attack.py") == [], check_source(source, "attack.py")
    ledger = LocalLedger(orgs=("org1",))
    ledger.deploy(source, name="attack")
    (result,) = ledger.block([Call(ledger.member("org1"), "attack", "f", tuple(args))])
    return result.status, result.message, result.result


NOT_OK = (TxStatus.CONTRACT_ERROR, TxStatus.RESOURCE_LIMIT)

ATTACKS = {
    "method kept in a variable": """
        pad = "a".ljust
        big = pad(600_000_000)
        return len(big)
    """,
    "modular pow of huge exponents": """
        m = (1 << 4000) + 1
        n = 0
        for i in range(100):
            n += pow(i + 2, m - 2, m)
        return n
    """,
    "int() of long text": """
        return int("f" * 50000, 16)
    """,
    "iteration inside builtins": """
        n = 0
        for i in range(300):
            n += len(list(filter(None, map(callable, range(1000000)))))
        return n
    """,
    "many integer operations per iteration": """
        x = 0
        for i in range(90000):
            x = (x + i) & 65535
            x = (x + i) & 65535
            x = (x + i) & 65535
            x = (x + i) & 65535
        return x
    """,
    "comparing shared structures": """
        a = [0]
        b = [0]
        for i in range(60):
            a = [a, a]
            b = [b, b]
        return a == b
    """,
    "hashing shared tuples": """
        a = (0,)
        for i in range(60):
            a = (a, a)
        d = {a: 1}
        return 1
    """,
    "text of shared structures": """
        a = [0]
        for i in range(40):
            a = [a, a]
        return len(str(a))
    """,
    "storing shared structures": """
        a = [0]
        for i in range(40):
            a = [a, a]
        ctx.put("k", a)
        return 1
    """,
    "deep nesting returned": """
        x = []
        for i in range(5000):
            x = [x]
        return x
    """,
    "deep nesting compared under except": """
        x = []
        y = []
        for i in range(960):
            x = [x]
            y = [y]
        try:
            return x == y
        except RuntimeError as e:
            return str(e)
    """,
    "large event payloads": """
        for i in range(20):
            ctx.emit("e", [[0]] * 200000)
        return 1
    """,
    "join of a generator": """
        s = "x" * 900000
        return len("".join(s for _ in range(1500)))
    """,
    "event named by a number": """
        ctx.emit(5, 1)
        return 1
    """,
    "a guarded method's internals": """
        call = ctx.get.func
        return call(ctx.get, "__getattribute__", "func")
    """,
    "hashing a tuple nested 3000 deep": """
        x = ()
        for i in range(300):
            x = ((((((((((x,),),),),),),),),),)
        return len(dict([(x, 1)]))
    """,
    "reading a large value over and over": """
        ctx.put("k", [[[0] * 1000] * 100])
        n = 0
        for i in range(1000):
            n += len(ctx.get("k"))
        return n
    """,
    "writing gigabytes": """
        big = "x" * 250000
        for i in range(3000):
            ctx.put(f"k{i}", big)
        return 1
    """,
    "long boolean chains": """
        n = 0
        for i in range(20000):
            if i < 0 or i < -1 or i < -2 or i < -3 or i < -4 or i < -5 or i < -6 or i < -7:
                n += 1
        return n
    """,
    "large literal displays": """
        keep = []
        for i in range(40000):
            keep = [[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], keep]
        return 1
    """,
    "max of shared structures": """
        a = [0]
        b = [0]
        for i in range(60):
            a = [a, a]
            b = [b, b]
        return max(a, b) == a
    """,
    "hashing gigabytes": """
        from kyodo.contract import sha256_hex
        return sha256_hex(5_000_000_000)
    """,
    "a quadratic codec": """
        return len(("a" * 20000).encode("punycode"))
    """,
    "to_bytes by keyword": """
        return len((0).to_bytes(length=700_000_000, byteorder="big"))
    """,
    "translate with a list table": """
        return len(("a" * 800).translate(["x" * 1000000] * 128))
    """,
    # third review
    "deep tuples from exception args, then hashed": """
        t = ()
        for i in range(20000):
            t = ValueError(ValueError(ValueError(ValueError(t).args).args).args).args
        d = dict((k, 1) for k in [t])
        return 1
    """,
    "an error message that is not valid Unicode": """
        raise ContractError(chr(55296))
    """,
    "an event name that is not valid Unicode": """
        ctx.emit(chr(55296))
        return 1
    """,
    "an error whose message is a deep structure": """
        t = ()
        for i in range(300):
            t = ValueError(ValueError(ValueError(ValueError(t).args).args).args).args
        raise ContractError(t)
    """,
    "a gigabyte result": """
        s = "a" * 1000000
        return [s] * 1000
    """,
    "sorting shared tuples in place": """
        t1 = (1,)
        t2 = (1,)
        for i in range(40):
            t1 = (t1, t1)
            t2 = (t2, t2)
        x = [t1, t2]
        x.sort()
        return 1
    """,
    "big-integer divisions in displays": """
        a = (1 << 4095) + 12345
        b = (1 << 2047) + 999
        for i in range(15000):
            x = [divmod(a, b), divmod(a, b), divmod(a, b), divmod(a, b), divmod(a, b),
                 divmod(a, b), divmod(a, b), divmod(a, b), divmod(a, b), divmod(a, b)]
        return 1
    """,
    "quadratic reverse search": """
        hay = "a" * 400000
        return hay.rfind("ab" + "a" * 199998)
    """,
    "comparing large dict views": """
        k = {}.fromkeys(range(400000)).keys()
        n = 0
        for i in range(3000):
            if k == k:
                n += 1
        return n
    """,
    "catching errors with huge messages": """
        s = "0x12345 " * 60000
        n = 0
        for i in range(2000):
            try:
                raise ValueError(s, s, s, s, s, s, s, s)
            except ValueError as e:
                n += 1
        return n
    """,
    "extending with iterators": """
        x = []
        for i in range(30):
            x.extend(range(1000000))
        return len(x)
    """,
    "a forged trusted context": """
        c = Context(namespace="x", overlay=0, caller=ctx.caller, block_time_ms=0,
                    height=0, tx_id=b"", trusted=True)
        return 1
    """,
    # fourth review
    "a prefix that is not text": """
        r = range(1000000)
        return len(ctx.prefix(r))
    """,
    "a quadratic codec through bytes()": """
        s = "".join(map(lambda i: chr(i), range(0x100, 0x100 + 12000)))
        return len(bytes(s, "punycode"))
    """,
    "a range of huge integers": """
        b = 1 << 4095
        return len(list(range(b, b + 1000000)))
    """,
    "quadratic strip": """
        s = "\u0200" * 300000
        return len(s.strip("\u0100" * 300000 + "\u0200"))
    """,
    "copying keyword arguments": """
        d = {str(i): 0 for i in range(12000)}
        g = lambda **kw: 0
        n = 0
        while n < 20000:
            g(**d)
            n += 1
        return n
    """,
    "starred assignment copies": """
        big = [0] * 1000000
        n = 0
        for i in range(5000):
            first, *rest = big
            n += 1
        return n
    """,
    "long basic blocks of unary operations": """
        a = (1 << 4000) - 1
        while True:
            a = ~a
            a = ~a
            a = ~a
            a = ~a
            a = ~a
            a = ~a
            a = ~a
            a = ~a
    """,
    "disjointness of shared tuples": """
        t = (1,)
        for i in range(40):
            t = (t, t)
        return {}.keys().isdisjoint([t])
    """,
    "mutating emitted events": """
        ctx.emit("e", [0])
        ctx.events[0].payload[0] = 1
        return 1
    """,
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("body", list(ATTACKS.values()), ids=list(ATTACKS))
def test_attack_fails_its_transaction_and_nothing_else(body: str) -> None:
    status, message, result = run(contract(body))
    assert status in NOT_OK, (status, message, result)
    assert not re.search(r"0x[0-9a-f]{4,}", message), message


ADDRESS_LEAKS = {
    "exception text with a repr": """
        try:
            [].index(self)
        except ValueError as e:
            msg = str(e)
        ctx.put("k", msg)
        return msg
    """,
    "exception args with a repr": """
        try:
            [].index(self)
        except ValueError as e:
            msg = e.args[0]
        ctx.put("k", msg)
        return 1
    """,
    "a method as a key": """
        return ctx.get(self.f)
    """,
    "an error made of a method": """
        raise ContractError(self.f)
    """,
    "a big list ending in a method": """
        xs = [0] * 10000
        xs.append(self.f)
        return str(xs)[-80:]
    """,
}


@pytest.mark.parametrize("body", list(ADDRESS_LEAKS.values()), ids=list(ADDRESS_LEAKS))
def test_no_memory_address_reaches_state_results_or_messages(body: str) -> None:
    ledger = LocalLedger(orgs=("org1",))
    ledger.deploy(contract(body), name="attack")
    (result,) = ledger.block([Call(ledger.member("org1"), "attack", "f", ())])
    stored = ledger.get("attack", "k")
    for text in (result.message, repr(result.result), repr(stored)):
        assert not re.search(r"0x[0-9a-f]{4,}", text), text


def test_a_split_of_an_error_message_holds_no_address_either() -> None:
    body = """
        try:
            [].index(self)
        except ValueError as e:
            m = e.args[0]
        ctx.put("k", m.split(" at ")[-1])
        return 1
    """
    ledger = LocalLedger(orgs=("org1",))
    ledger.deploy(contract(body), name="attack")
    ledger.block([Call(ledger.member("org1"), "attack", "f", ())])
    assert not re.search(r"0x[0-9a-f]{4,}", repr(ledger.get("attack", "k")))


@pytest.mark.parametrize("decorator", ["@function(read_only=[])", "@function(allow='org1.*')"])
def test_function_marks_take_plain_values_only(decorator: str) -> None:
    source = contract("return 1").replace("@function", decorator)
    ledger = LocalLedger(orgs=("org1",))
    with pytest.raises(TxFailed, match=r"read_only must be|allow must be"):
        ledger.deploy(source, name="marks")


def test_function_cannot_mark_trusted_classes() -> None:
    status, message, _ = run(contract("function(read_only=True)(Contract)\nreturn 1"))
    assert status == TxStatus.CONTRACT_ERROR and "functions defined in the contract" in message


def test_a_read_only_function_that_writes_fails() -> None:
    source = contract('ctx.put("k", 1)\nreturn 1').replace("@function", "@function(read_only=True)")
    status, message, _ = run(source)
    assert status == TxStatus.CONTRACT_ERROR and "read-only but wrote state" in message


def test_annotations_that_compute_are_refused_and_never_evaluated() -> None:
    source = HEADER + textwrap.dedent(
        """
        class C(Contract):
            @function
            def f(self, ctx: Context, x: b"__import__('os')".decode()) -> int:
                return x
        """
    )
    violations = check_source(source, "annotation.py")
    assert violations and "annotation must be a type" in violations[0].reason


def test_an_invoked_call_that_fails_leaves_no_writes_even_if_caught() -> None:
    callee = contract(
        """
        ctx.put("bal", 10)
        raise ContractError("over the limit")
        """
    )
    caller = contract(
        """
        try:
            ctx.invoke("callee", "f")
        except ContractError:
            pass
        return 1
        """
    )
    ledger = LocalLedger(orgs=("org1",))
    ledger.deploy(callee, name="callee")
    ledger.deploy(caller, name="caller")
    assert ledger.submit(ledger.member("org1"), "caller", "f") == 1
    assert ledger.get("callee", "bal") is None


def test_built_in_contracts_cannot_be_invoked_by_a_deployed_one() -> None:
    ledger = LocalLedger(orgs=("org1",), builtins={"asset_transfer": _AssetTransfer})
    ledger.deploy(contract('return ctx.invoke("asset_transfer", "balance", "a")'), name="deputy")
    with pytest.raises(TxFailed, match="cannot be invoked by a contract"):
        ledger.submit(ledger.member("org1"), "deputy", "f")


def test_deleting_an_absent_key_records_nothing() -> None:
    ledger = LocalLedger(orgs=("org1",))
    ledger.deploy(contract('ctx.delete("nothing")\nreturn 1'), name="deleter")
    ledger.submit(ledger.member("org1"), "deleter", "f")
    assert ledger.history("deleter", "nothing") == []


def test_a_decorator_other_than_function_is_refused() -> None:
    source = HEADER + textwrap.dedent(
        """
        def keep(fn):
            return fn


        class C(Contract):
            @function
            @keep
            def f(self, ctx: Context) -> int:
                return 1
        """
    )
    assert "only @function" in check_source(source, "deco.py")[0].reason


def test_a_package_cannot_take_a_built_in_contracts_name() -> None:
    ledger = LocalLedger(orgs=("org1",), builtins={"asset_transfer": _AssetTransfer})
    with pytest.raises(TxFailed, match="built-in contract's name"):
        ledger.deploy(contract("return 1"), name="asset_transfer")


def test_a_contract_cannot_redefine_what_the_executor_relies_on() -> None:
    source = HEADER + "class C(Contract):\n    def functions(self=0):\n        return {}\n"
    assert "reserved by Contract" in check_source(source, "reserved.py")[0].reason


def test_an_unapproved_commit_of_an_unparsable_package_fails_without_parsing_it() -> None:
    ledger = LocalLedger(orgs=("org1", "org2"))
    package = ContractPackage(
        name="deep", version="1", filename="deep.py", source="X = 1" + "+1" * 10000
    )
    (result,) = ledger.block(
        [Call(ledger.admin("org2"), "_lifecycle", "commit", (encode(package),))]
    )
    assert result.status == TxStatus.CONTRACT_ERROR and "0 of 2 approvals" in result.message
    assert "nested too deeply" in check_source(package.source, "deep.py")[0].reason


def test_memory_and_recursion_errors_cannot_be_caught_by_contract_code() -> None:
    for error in (MemoryError(), RecursionError()):
        meter = Meter()
        with metered(meter), pytest.raises(ResourceLimitExceeded):
            Guards.rethrow(error)
        assert meter.exhausted is not None


def test_state_is_the_same_for_a_node_that_served_queries_and_one_that_did_not() -> None:
    source = contract(
        """
        v = ctx.get("k") or {"n": 0}
        v["n"] = v["n"] + 1
        return v["n"]
        """
    )
    ledger = LocalLedger(orgs=("org1",))
    ledger.deploy(source, name="reads")
    user = ledger.member("org1")
    ledger.submit(user, "reads", "f")  # n is not stored: f never calls put
    for _ in range(3):
        ledger.query(user, "reads", "f")
    assert ledger.get("reads", "k") is None
    assert ledger.submit(user, "reads", "f") == 1
